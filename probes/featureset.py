"""Which tokens and which features a suite analyses (shared by the built-in suites).

Token set: the paper analyses BREVO's *answer* tokens and MANO's *question*
tokens. Rather than a table of task names, the default follows the task's
declarations: the set (answer or question) at which more features are
declared (a feature declared at ``all`` counts for both); ties go to answer.
That gives brevo/depo/lano -> answer and mano -> question.

Feature screening, in this order, each step's casualties reported as notes:
a feature defined (not NaN) on fewer than ``min_coverage`` of the analysed
tokens is dropped (it belongs to another token set); rows where a remaining
feature is undefined are dropped (e.g. BREVO's ``<eos>`` step, which has no
node); a feature constant on the remaining rows is dropped (zero variance:
no regression or probe can use it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anira.errors import AniraError
from anira.probes.table import TokenTable


def default_token_set(table: TokenTable) -> str:
    """"answer" or "question", from the features' declared positions (see module doc)."""
    count = {w: sum(spec.where in (w, "all") for spec in table.specs.values()) for w in ("answer", "question")}
    return "question" if count["question"] > count["answer"] else "answer"


@dataclass
class FeatureSelection:
    """Rows and features a suite will use, and what was left out and why."""

    token_set: str
    rows: np.ndarray  # table row indices
    names: list[str]
    kinds: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[str]:
        return [n for n in self.names if self.kinds[n] == kind]


def select_features(
    table: TokenTable,
    *,
    token_set: str = "auto",
    correct_only: bool = True,
    min_coverage: float = 0.5,
    names: list[str] | None = None,
) -> FeatureSelection:
    """Screen the table's features on the chosen tokens (module docstring).

    Raises a one-line :class:`AniraError` when no token or no feature remains.
    """
    where = default_token_set(table) if token_set == "auto" else token_set
    if where not in ("answer", "question", "all", "answer|question"):
        raise AniraError(f"token_set must be auto, answer, question, answer|question or all; got {token_set!r}")
    rows = table.rows(where, correct_only=correct_only)
    solved = " of solved instances" if correct_only else ""
    if rows.size == 0:
        acc = float(np.mean(table["correct"])) if table.n_rows else 0.0
        extra = f" (instance accuracy {acc:.1%}; set correct_only=false to use every instance)" if correct_only else ""
        raise AniraError(f"no {where} tokens{solved} in the table{extra}")
    candidates = list(table.specs) if names is None else list(names)
    unknown = [n for n in candidates if n not in table.specs]
    if unknown:
        raise AniraError(f"task {table.meta.get('task', '?')!r} has no feature {unknown[0]!r}")
    notes: list[str] = []
    kept = []
    for name in candidates:
        coverage = float(np.mean(~np.isnan(table.feature(name, rows))))
        if coverage < min_coverage:
            if coverage > 0:
                notes.append(f"feature {name!r} skipped: defined on only {coverage:.0%} of the {where} tokens")
            continue
        kept.append(name)
    if kept:
        defined = np.all(~np.isnan(table.matrix(kept, rows)), axis=1)
        if not defined.all():
            notes.append(f"{int((~defined).sum())} of {rows.size} {where} tokens dropped: some feature undefined there")
        rows = rows[defined]
    final = []
    for name in kept:
        values = table.feature(name, rows)
        if values.size and np.ptp(values) == 0:
            notes.append(f"feature {name!r} skipped: constant (= {values[0]:g}) on the analysed tokens")
            continue
        final.append(name)
    if not final:
        raise AniraError(f"no usable feature on the {where} tokens{solved} (" + "; ".join(notes or ["none declared"]) + ")")
    return FeatureSelection(where, rows, final, {n: table.specs[n].kind for n in final}, notes)


# ---------------------------------------------------------------------------------------
# Token-identity and position baselines
# ---------------------------------------------------------------------------------------

#: the default baseline (option ``baseline``: a comma list of BASELINE_CHOICES, or ``none``)
BASELINE_PARTS = ("token", "position")
#: "size" adds the difficulty knob's one-hot: verdicts within instance size
BASELINE_CHOICES = ("token", "position", "size")


def parse_baseline(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``"token,position"`` -> ("token", "position"); ``"none"`` or "" -> ()."""
    if value is None:
        return BASELINE_PARTS
    parts = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if parts in (["none"], []):
        return ()
    unknown = [p for p in parts if p not in BASELINE_CHOICES]
    if unknown:
        raise AniraError(f"baseline: unknown part {unknown[0]!r}; use token, position, size (comma list) or none")
    return tuple(dict.fromkeys(parts))


def step_index(table: TokenTable, token_set: str) -> np.ndarray:
    """For every table row: its position minus the first position of the instance's
    ``token_set`` rows (0 at the first answer step or the first question token).
    Rows of instances without such rows keep their position."""
    instance = table["instance"].astype(np.int64)
    position = table["position"].astype(np.int64)
    if instance.size == 0:
        return position
    start = np.zeros(int(instance.max()) + 1, dtype=np.int64)
    rows = table.rows(token_set)
    if rows.size:
        big = np.iinfo(np.int64).max
        first = np.full(start.size, big)
        np.minimum.at(first, instance[rows], position[rows])
        start = np.where(first == big, 0, first)
    return position - start[instance]


def one_hot_levels(values: np.ndarray, min_count: int, max_levels: int) -> tuple[np.ndarray, list[Any]]:
    """Indicator columns of the most frequent levels of ``values`` (at least
    ``min_count`` rows each, at most ``max_levels`` of them); every other value is
    pooled into one reference level. With no pooled value the least frequent kept
    level becomes the reference, so the columns never sum to the intercept."""
    levels, counts = np.unique(values, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    kept = [levels[i] for i in order if counts[i] >= min_count][:max_levels]
    if len(kept) == len(levels):  # nothing pooled: drop one level as the reference
        kept = kept[:-1]
    if not kept:
        return np.zeros((len(values), 0)), []
    columns = np.column_stack([(values == level) for level in kept]).astype(np.float64)
    return columns, [v.item() if hasattr(v, "item") else v for v in kept]


@dataclass
class Baseline:
    """The baseline design: indicator columns of token identity and position."""

    matrix: np.ndarray  # (rows, k) float64
    parts: tuple[str, ...]
    levels: dict[str, list[Any]]  # part -> the levels that got a column

    @property
    def n_columns(self) -> int:
        return int(self.matrix.shape[1])

    def describe(self) -> dict[str, Any]:
        return {"parts": list(self.parts), "columns": self.n_columns,
                "levels": {k: len(v) for k, v in self.levels.items()}}


def baseline_design(
    table: TokenTable,
    rows: np.ndarray,
    token_set: str,
    parts: tuple[str, ...] = BASELINE_PARTS,
    *,
    min_count: int = 20,
    max_levels: int = 24,
    size: bool = False,
) -> Baseline:
    """Indicators of what a halting rule could read without any task structure:

    * ``token`` — the identity of the input token at the row (one column per
      frequent token id);
    * ``position`` — the row's step within its token set (0 = the first answer
      step / question token; :func:`step_index`);
    * ``size`` (in ``parts``, or ``size=True`` for the null control) — the
      difficulty knob, so the verdict is about what varies within a size.

    Rare levels (fewer than ``min_count`` rows) are pooled, so a baseline never
    memorises individual rows.
    """
    blocks, levels = [], {}
    if "token" in parts:
        cols, kept = one_hot_levels(table["token"][rows].astype(np.int64), min_count, max_levels)
        blocks.append(cols)
        levels["token"] = kept
    if "position" in parts:
        cols, kept = one_hot_levels(step_index(table, token_set)[rows], min_count, max_levels)
        blocks.append(cols)
        levels["position"] = kept
    size = size or "size" in parts
    if size:
        cols, kept = one_hot_levels(table["difficulty"][rows].astype(np.int64), 1, 10_000)
        blocks.append(cols)
        levels["size"] = kept
    matrix = np.column_stack(blocks) if blocks else np.zeros((rows.size, 0))
    return Baseline(matrix, tuple(p for p in parts if p != "size") + (("size",) if size else ()), levels)


def feature_basis(X: np.ndarray, names: list[str], max_levels: int = 6) -> tuple[np.ndarray, list[str]]:
    """An additive basis of the features for the verdict's set comparisons, so a
    kind's set can fit any shape of its features' effect, not only a line (a
    rule "depth 3 when in_degree = 0" is a step, and a linear fit of it leaves
    a residual that correlated features of the other kind would then absorb).

    A feature with at most ``max_levels`` distinct values gets one indicator per
    value (one dropped); others get z and z² (z = the standardised feature).
    Returns (columns, the feature each column belongs to).
    """
    cols: list[np.ndarray] = []
    owner: list[str] = []
    for j, name in enumerate(names):
        x = X[:, j]
        levels = np.unique(x)
        if levels.size <= max_levels:
            for value in levels[1:]:
                cols.append((x == value).astype(np.float64))
                owner.append(name)
        else:
            sd = x.std()
            z = (x - x.mean()) / (sd if sd > 0 else 1.0)
            cols.extend([z, z * z])
            owner.extend([name, name])
    matrix = np.column_stack(cols) if cols else np.zeros((X.shape[0], 0))
    return matrix, owner
