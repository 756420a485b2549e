"""Figures of the built-in suites (matplotlib, Agg; the report embeds them)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from anira.plots import styled  # noqa: E402

COLORS = {"static": "#4c72b0", "execution": "#dd8452", "both": "#55a868", "size": "#8c8c8c"}


@styled
def attribution_figure(result: dict[str, Any]) -> Figure:
    """ΔR² per feature (the paper's full model, coloured by kind; hatched = below the
    keep threshold) and the verdict's split of what the features add beyond the
    token/position baseline (held-out R²)."""
    fig = Figure(figsize=(9.5, 3.8), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1.4]})
    feats = sorted(result["full"]["features"], key=lambda f: -f["delta_r2"])
    x = np.arange(len(feats))
    ax.bar(x, [100 * f["delta_r2"] for f in feats], color=[COLORS[f["kind"]] for f in feats],
           hatch=None, edgecolor="black", linewidth=0.5)
    for i, f in enumerate(feats):
        if not f.get("kept"):
            ax.patches[i].set_hatch("//")
            ax.patches[i].set_alpha(0.5)
    ax.axhline(100 * result["thresholds"]["min_delta_r2"], color="black", linestyle=":", linewidth=1)
    ax.set_xticks(x, [f["name"] for f in feats], rotation=40, ha="right")
    ax.set_ylabel("ΔR² (%)")
    ax.set_title(f"ΔR² per feature (R² = {result['full']['r2']:.3f}; hatched: dropped)")
    handles = [matplotlib.patches.Patch(color=COLORS[k], label=k) for k in ("static", "execution")]
    ax.legend(handles=handles, frameon=False)

    _verdict_panel(ax2, result["verdict"], "held-out R²")
    return fig


#: the verdict's quantities, in the order the panel draws them
_PARTS = (("static_total", "static", "static"), ("execution_total", "execution", "execution"),
          ("static_unique", "unique\nstatic", "static"), ("execution_unique", "unique\nexecution", "execution"),
          ("shared", "shared", "both"))


def _verdict_panel(ax: Any, verdict: dict[str, Any], metric: str) -> None:
    """What the features add beyond the token/position baseline, split into unique
    and shared parts, with the intervals the verdict used."""
    xs, labels = [], []
    for i, (key, label, kind) in enumerate(_PARTS):
        q = verdict.get(key)
        if not q or q.get("mean") is None or not np.isfinite(q["mean"]):
            continue
        mean, low, high = q["mean"], q.get("low"), q.get("high")
        ax.bar(i, mean, 0.6, color=COLORS[kind], alpha=0.55 if "unique" not in key else 0.9,
               edgecolor="black", linewidth=0.5)
        if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
            ax.errorbar(i, mean, yerr=[[max(mean - low, 0.0)], [max(high - mean, 0.0)]], color="black", capsize=3)
        xs.append(i)
        labels.append(label)
    beyond = (verdict.get("beyond") or {}).get("mean")
    if beyond is not None and np.isfinite(beyond):
        ax.axhline(beyond, color="black", linestyle=":", linewidth=1, label="all features")
        ax.legend(frameon=False)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(xs, labels)
    ax.set_ylabel(f"{metric} beyond token/position")
    ax.set_title(f"verdict: {verdict.get('label')}")


@styled
def decision_figure(result: dict[str, Any]) -> Figure:
    """AUROC and balanced accuracy per feature set (mean ± std over folds) with baselines,
    and the verdict's split of what the features add beyond the token/position baseline."""
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    names = [n for n in ("static", "execution", "both") if n in result["sets"]]
    for ax, metric, title in zip(axes[:2], ("auroc", "balanced_accuracy"), ("AUROC", "balanced accuracy")):
        means = [result["sets"][n][metric]["mean"] for n in names]
        stds = [np.nan_to_num(result["sets"][n][metric]["std"]) for n in names]
        ax.bar(np.arange(len(names)), means, yerr=stds, capsize=3, color=[COLORS[n] for n in names],
               edgecolor="black", linewidth=0.5)
        styles = {"majority": ":", "shuffled": "--", "iteration_only": "-."}
        for base, style in styles.items():
            if base in result["baselines"]:
                value = result["baselines"][base][metric]["mean"]
                if value is not None and np.isfinite(value):
                    ax.axhline(value, color="black", linestyle=style, linewidth=1, label=base.replace("_", " "))
        ax.set_xticks(np.arange(len(names)), names)
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
    fig.legend(*axes[0].get_legend_handles_labels(), title="baselines", frameon=False, loc="outside right center")
    v = result["verdict"]
    _verdict_panel(axes[2], v, "deviance explained")
    fig.suptitle(f"decision probes ({result['mode']}): verdict {v['label']}")
    return fig
