"""PNG plots of evaluation results and training dynamics (matplotlib, Agg).

Figures are built on :class:`matplotlib.figure.Figure` directly, never through
``pyplot``: no global figure state, no GUI backend, safe in threads and in
headless CI. Each ``*_figure`` function returns a figure; :func:`png_bytes`
renders it for embedding and :func:`save_png` writes it atomically.
"""

from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the figures are only ever rendered to PNG

from matplotlib import cm, colors, patches  # noqa: E402  (after choosing the backend)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from anira.errors import AniraError  # noqa: E402
from anira.fileio import atomic_write_bytes  # noqa: E402,F401  (re-exported for callers)
from anira.evaluate import EvalResult, Sample  # noqa: E402

#: PNG resolution. Figures are designed at their display size (``figsize`` inches
#: shown as 100 CSS px each, see anira.htmlpage.figure_img) with 8-10 pt text;
#: rendering at 150 dpi keeps them sharp on dense screens.
DPI = 150
FONT = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8.5,
        "ytick.labelsize": 8.5, "legend.fontsize": 8}


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def styled(build: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under the report's font sizes (text sizes are fixed when
    each artist is created, so the context only needs to span the building)."""

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(FONT):
            return build(*args, **kwargs)

    return wrapper


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # no "Software" tag: it holds matplotlib's web address, and reports must
    # reference nothing outside themselves (even inside an embedded image)
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()




def save_png(fig: Figure, path: str | Path) -> Path:
    return atomic_write_bytes(path, png_bytes(fig))


# ---------------------------------------------------------------------------------------
# Evaluation plots
# ---------------------------------------------------------------------------------------


def result_label(result: EvalResult) -> str:
    return result.label or result.policy


def _shade_training_range(ax: Any, result: EvalResult) -> None:
    lo, hi = result.ranges["train"]
    ax.axvspan(lo - 0.5, hi + 0.5, color="0.9", zorder=0, label=f"training range {lo}..{hi}")


def _check_results(results: Sequence[EvalResult]) -> None:
    if not results:
        raise AniraError("nothing to plot: no evaluation results")


@styled
def depth_vs_difficulty_figure(results: Sequence[EvalResult]) -> Figure:
    """Mean exit depth (solid) and mean expected depth (dashed) over answer
    positions against the difficulty knob; for language-modelling tasks the
    expected depth over all tokens. One colour per result."""
    _check_results(results)
    fig = Figure(figsize=(5.8, 3.7), layout="constrained")
    ax = fig.subplots()
    _shade_training_range(ax, results[0])
    for i, res in enumerate(results):
        color = f"C{i % 10}"
        ks = [r.difficulty for r in res.per_difficulty]
        if res.language_modelling:
            ax.plot(ks, [r.metrics.mean_expected_depth_all for r in res.per_difficulty], "--o", color=color,
                    ms=3, label=f"{result_label(res)}: E[depth], all tokens")
            continue
        ax.plot(ks, [r.metrics.mean_exit_depth for r in res.per_difficulty], "-o", color=color, ms=3,
                label=f"{result_label(res)}: exit depth")
        ax.plot(ks, [r.metrics.mean_expected_depth for r in res.per_difficulty], "--", color=color,
                label=f"{result_label(res)}: E[depth]")
    D = max(res.max_iters for res in results)
    ax.set_ylim(0, D + 0.5)
    ax.set_xlabel(results[0].knob)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # difficulties are integers
    ax.set_ylabel("mean depth (answer tokens)" if not results[0].language_modelling else "mean depth")
    ax.set_title(f"{results[0].task}: depth vs difficulty (D = {D})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


@styled
def accuracy_vs_difficulty_figure(results: Sequence[EvalResult]) -> Figure:
    """Exact-match accuracy against the difficulty knob, training range shaded."""
    _check_results(results)
    fig = Figure(figsize=(5.8, 3.7), layout="constrained")
    ax = fig.subplots()
    _shade_training_range(ax, results[0])
    for i, res in enumerate(results):
        ks = [r.difficulty for r in res.per_difficulty]
        ax.plot(ks, [r.metrics.accuracy for r in res.per_difficulty], "-o", ms=3, color=f"C{i % 10}",
                label=result_label(res))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(results[0].knob)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # difficulties are integers
    ax.set_ylabel("exact-match accuracy")
    ax.set_title(f"{results[0].task}: accuracy vs difficulty")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


def pick_samples(samples: Sequence[Sample], max_samples: int) -> list[Sample]:
    """Up to ``max_samples`` samples spread evenly over the difficulties present."""
    if max_samples <= 0 or not samples:
        return []
    by_k: dict[int, Sample] = {}
    for s in samples:
        by_k.setdefault(s.difficulty, s)
    ks = sorted(by_k)
    if len(ks) <= max_samples:
        return [by_k[k] for k in ks]
    idx = sorted({round(i * (len(ks) - 1) / (max_samples - 1)) for i in range(max_samples)}) if max_samples > 1 else [0]
    return [by_k[ks[i]] for i in idx]


@styled
def token_depth_figure(result: EvalResult, max_samples: int = 4, per_line: int = 32) -> Figure:
    """Per-token exit depth of sample instances: a heat strip under the decoded tokens.

    The cell under token ``i`` is the exit depth at position ``i`` (the
    computation that reads token ``i`` and predicts token ``i + 1``); answer
    positions are outlined in red. Long sequences wrap onto several strips of
    ``per_line`` tokens, like lines of text, so cells and labels keep a
    readable size whatever the length.
    """
    chosen = pick_samples(result.samples, max_samples)
    D = result.max_iters
    # one strip per line of tokens: (sample, first position, last position + 1)
    lines = [(s, a, min(a + per_line, len(s.tokens))) for s in chosen for a in range(0, max(1, len(s.tokens)), per_line)]
    width = min(per_line, max((len(s.tokens) for s in chosen), default=1))
    cell = 0.3  # inches per token: an 8.5 pt label fits without overlapping its neighbour
    fig = Figure(figsize=(max(5.0, cell * width + 1.6), 0.6 + 0.75 * max(1, len(lines))), layout="constrained")
    if not chosen:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no sample instances", ha="center", va="center")
        return fig
    axes = fig.subplots(len(lines), 1, squeeze=False)[:, 0]
    image = None
    for ax, (s, a, b) in zip(axes, lines):
        tokens = [t.strip() or "␣" for t in s.tokens[a:b]]
        depth = s.exit_depth[a:b]
        image = ax.imshow([depth], aspect="auto", cmap="viridis", vmin=1, vmax=D, extent=(-0.5, len(tokens) - 0.5, 0, 1))
        for x, (d, ans) in enumerate(zip(depth, s.answer_mask[a:b])):
            ax.text(x, 0.5, str(d), ha="center", va="center", fontsize=8, color="white" if d < (1 + D) / 2 else "black")
            if ans:
                ax.add_patch(patches.Rectangle((x - 0.5, 0.02), 1, 0.96, fill=False, ec="red", lw=1.4))
        ax.set_xlim(-0.5, width - 0.5)  # equal cell widths on every strip: short lines end early
        ax.set_yticks([])
        ax.set_xticks(range(len(tokens)))
        ax.set_xticklabels(tokens, rotation=90 if max(map(len, tokens), default=1) > 3 else 0)
        ax.xaxis.set_ticks_position("top")
        ax.tick_params(axis="x", length=0, pad=2)
        if a == 0:
            mark = "solved" if s.correct else "wrong"
            ax.set_ylabel(f"{s.difficulty}\n{mark}", rotation=0, ha="right", va="center")
    fig.suptitle(f"{result_label(result)}: exit depth per position (red: answer positions)")
    fig.colorbar(image, ax=list(axes), fraction=0.03, pad=0.01, label="exit depth", ticks=range(1, D + 1))
    return fig


# ---------------------------------------------------------------------------------------
# Training dynamics (metrics.jsonl)
# ---------------------------------------------------------------------------------------


@dataclass
class TrainingCurves:
    """Per-difficulty accuracy and mean depth against step, for one split."""

    split: str
    steps: dict[int, list[int]] = field(default_factory=dict)  # difficulty -> steps
    accuracy: dict[int, list[float]] = field(default_factory=dict)
    mean_depth: dict[int, list[float]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not self.steps


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _difficulty_rows(per_k: Any) -> list[tuple[int, dict[str, Any]]]:
    """``per_difficulty`` as (k, row) pairs: the trainer writes a list of rows with a
    ``difficulty`` key; a mapping ``{"<k>": row}`` is accepted too."""
    items: list[tuple[Any, Any]]
    if isinstance(per_k, list):
        items = [(row.get("difficulty"), row) for row in per_k if isinstance(row, dict)]
    elif isinstance(per_k, dict):
        items = list(per_k.items())
    else:
        return []
    out = []
    for key, row in items:
        try:
            k = int(key)
        except (TypeError, ValueError):
            continue
        if isinstance(row, dict):
            out.append((k, row))
    return out


def read_training_curves(path: str | Path, split: str | None = None) -> dict[str, TrainingCurves]:
    """Per-difficulty curves from a checkpoint's ``metrics.jsonl`` (or its directory).

    Evaluation records (docs/training.md) are lines with ``"kind": "eval"``,
    ``step``, ``split`` ("test_id" / "test_ood") and ``per_difficulty``: rows
    ``{"difficulty": k, "acc": .., "mean_depth": ..}``. Training-loss records
    and torn lines are ignored. Returns split -> curves (empty if no file).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return {}
    curves: dict[str, TrainingCurves] = {}
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # a run killed mid-append can leave a torn last line; the rest is still good
                continue
            if not isinstance(record, dict) or record.get("kind", "eval") != "eval":
                continue
            step = record.get("step")
            rec_split = str(record.get("split", "test"))
            if not isinstance(step, int) or isinstance(step, bool) or (split and rec_split != split):
                continue
            rows = _difficulty_rows(record.get("per_difficulty"))
            if not rows:
                continue
            c = curves.setdefault(rec_split, TrainingCurves(split=rec_split))
            for k, row in rows:
                c.steps.setdefault(k, []).append(step)
                c.accuracy.setdefault(k, []).append(_num(row.get("acc", row.get("accuracy"))))
                c.mean_depth.setdefault(k, []).append(_num(row.get("mean_depth", row.get("mean_exit_depth"))))
    return curves


@styled
def training_dynamics_figure(curves: dict[str, TrainingCurves], *, max_iters: int | None = None, title: str = "") -> Figure:
    """Accuracy (left) and mean depth (right) per difficulty against step, one
    line per difficulty coloured easy (light) to hard (dark), as the paper's
    Figures 4-5. In-distribution and OOD evaluation records share the axes."""
    fig = Figure(figsize=(5.8, 2.9), layout="constrained")
    ax_acc, ax_depth = fig.subplots(1, 2)
    merged: dict[int, tuple[list[int], list[float], list[float]]] = {}
    for c in curves.values():
        for k, steps in c.steps.items():
            s, a, d = merged.setdefault(k, ([], [], []))
            s.extend(steps)
            a.extend(c.accuracy[k])
            d.extend(c.mean_depth[k])
    if not merged:
        for ax in (ax_acc, ax_depth):
            ax.axis("off")
        ax_acc.text(0.5, 0.5, "no evaluation records in metrics.jsonl", ha="center", va="center")
        return fig
    ks = sorted(merged)
    cmap = matplotlib.colormaps["viridis_r"]
    for i, k in enumerate(ks):
        s, a, d = merged[k]
        order = sorted(range(len(s)), key=s.__getitem__)
        color = cmap(0.1 + 0.8 * i / max(1, len(ks) - 1))
        ax_acc.plot([s[j] for j in order], [a[j] for j in order], color=color, lw=1.4, label=str(k))
        ax_depth.plot([s[j] for j in order], [d[j] for j in order], color=color, lw=1.4)
    if len(ks) <= 10:  # a few difficulties: name each line
        fig.legend(title="difficulty", loc="outside right upper", frameon=False)
    else:
        sm = cm.ScalarMappable(cmap=cmap, norm=colors.Normalize(min(ks), max(ks)))
        fig.colorbar(sm, ax=[ax_acc, ax_depth], fraction=0.03, pad=0.02, label="difficulty")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_ylabel("exact-match accuracy")
    ax_depth.set_ylabel("mean exit depth")
    for ax in (ax_acc, ax_depth):
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # fewer, readable step labels
    if max_iters:
        ax_depth.set_ylim(0, max_iters + 0.5)
    for ax in (ax_acc, ax_depth):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "training dynamics")
    return fig


# ---------------------------------------------------------------------------------------
# All plots of one result
# ---------------------------------------------------------------------------------------

PLOT_NAMES = ("depth_vs_difficulty", "accuracy_vs_difficulty", "token_depths", "training_dynamics")


def result_figures(result: EvalResult, metrics_path: str | Path | None = None) -> dict[str, Figure]:
    """Every plot of one result; training dynamics only when ``metrics_path``
    (a checkpoint directory or metrics.jsonl) holds evaluation records."""
    figs = {
        "depth_vs_difficulty": depth_vs_difficulty_figure([result]),
        "accuracy_vs_difficulty": accuracy_vs_difficulty_figure([result]),
        "token_depths": token_depth_figure(result),
    }
    if metrics_path is not None:
        curves = read_training_curves(metrics_path)
        if curves:
            figs["training_dynamics"] = training_dynamics_figure(
                curves, max_iters=result.max_iters, title=f"{result_label(result)}: training dynamics"
            )
    return figs


def write_plots(result: EvalResult, out_dir: str | Path, metrics_path: str | Path | None = None) -> dict[str, Path]:
    """Write every plot of ``result`` as ``<name>.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    return {name: save_png(fig, out_dir / f"{name}.png") for name, fig in result_figures(result, metrics_path).items()}
