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


def parse_names(value: str | list[str] | None) -> list[str] | None:
    """A feature list option: ``"a,b"`` or a list (None: every feature)."""
    if value is None:
        return None
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    return names or None
