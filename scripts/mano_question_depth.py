#!/usr/bin/env python3
"""docs/findings.md's MANO table: mean expected (and exit) depth on operator tokens of
the question by r_t, the operands the top pending operator still needs before the
token, and its Spearman correlation with s_t, the size of the subtree the previous
token completed (docs/paper.md §4: operators get the most compute at r_t = 1, rising
with s_t). Solved instances only.

    python scripts/mano_question_depth.py checkpoints/mano-anira-e checkpoints/mano-anira-o [--n 1000]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr

import anira
from anira.probes.collect import collect


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| checkpoint | operator tokens | E[depth] r=0 | r=1 | r=2 | exit depth r=0 | r=1 | r=2 | Spearman(E[depth], s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in args.checkpoints:
        model, task = anira.load(path)
        table = collect(model, task, n=args.n, seed=args.seed, keep="question", device="cpu")
        rows = np.flatnonzero(table["correct"])  # solved instances, as the paper
        operator = table.feature("token_type", rows) == 1
        r, s = table.feature("r", rows), table.feature("s", rows)
        exp, ext = table["expected_depth"][rows], table["exit_depth"][rows].astype(float)
        ok = operator & np.isfinite(r) & np.isfinite(s)
        cells = [f"{exp[ok & (r == v)].mean():.2f}" for v in (0, 1, 2)]
        cells += [f"{ext[ok & (r == v)].mean():.2f}" for v in (0, 1, 2)]
        rho = spearmanr(exp[ok], s[ok]).statistic if np.ptp(exp[ok]) > 0 else float("nan")
        print(f"| `{path}` | {int(ok.sum())} | " + " | ".join(cells) + f" | {rho:+.2f} |")


if __name__ == "__main__":
    main()
