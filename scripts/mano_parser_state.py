#!/usr/bin/env python3
"""docs/findings.md's MANO check: how far the parser state on question tokens is a
function of token identity and position, on L 1–2 and on L 1–5 (no model involved).

For each MANO execution feature (d, r, s, s_ops, reductions) it reports the held-out
R² of the probes' baseline design (token identity + position within the question,
the same indicator columns as :func:`anira.probes.featureset.one_hot_levels`), 5
folds by instance. R² near 1 means a halting rule on token and position could not
be told from one on that feature.

    python scripts/mano_parser_state.py [--n 1000] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from anira.probes.featureset import one_hot_levels
from anira.registry import default_registry

FEATURES = ("d", "r", "s", "s_ops", "reductions")


def question_rows(task, lo: int, hi: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """Question-token rows of ``n`` test instances, L drawn uniformly in lo..hi."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("token", "position", "instance", *FEATURES)}
    for i in range(n):
        ex = task.sample(int(rng.integers(lo, hi + 1)), rng, split="test")
        rows = np.flatnonzero(ex.question_mask)
        cols["token"].append(ex.tokens[rows])
        cols["position"].append(rows - rows[0])
        cols["instance"].append(np.full(rows.size, i))
        for f in FEATURES:
            cols[f].append(ex.features[f][rows])
    return {k: np.concatenate(v) for k, v in cols.items()}


def heldout_r2(X: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5) -> float:
    """Mean over folds (by instance) of the test R² of least squares with an intercept."""
    X = np.column_stack([np.ones(len(y)), X])
    fold = groups % folds
    scores = []
    for k in range(folds):
        train, test = fold != k, fold == k
        beta, *_ = np.linalg.lstsq(X[train], y[train], rcond=None)
        resid = y[test] - X[test] @ beta
        scores.append(1 - resid.var() / y[test].var())
    return float(np.mean(scores))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    task = default_registry().task("mano")()
    print("| L range | question tokens | " + " | ".join(FEATURES) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in FEATURES) + " |")
    for lo, hi in ((1, 2), (1, 5)):
        t = question_rows(task, lo, hi, args.n, args.seed)
        tok, _ = one_hot_levels(t["token"], 20, 24)
        pos, _ = one_hot_levels(t["position"], 20, 24)
        X = np.column_stack([tok, pos])
        cells = [f"{heldout_r2(X, t[f], t['instance']):.3f}" for f in FEATURES]
        print(f"| {lo}–{hi} | {t['token'].size} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
