#!/usr/bin/env python3
"""docs/probes.md's check of the selection null control's stability: how often the
check's outcome depends on which permutation was drawn, with 1, 3 and all draws.

For each probe seed it collects the checkpoint's instances once with ``--draws``
independent null permutations (``null_permutations``), analyses the solved instances
and each draw under the solved filter as the suite does (attribution without its
bootstrap, or the decision probes), then evaluates the check (``null_passes``) with
one draw — each draw alone, which is what K = 1 gives with another permutation seed —
with ``--group`` draws on disjoint groups, and with every draw. Draw 0 alone is what
the suite reports with K = 1.

    OMP_NUM_THREADS=1 python scripts/null_stability.py checkpoints/mano-anira-e \\
        --suite attribution --n 1000 --seeds 0,1,2,3,4 --draws 9 --group 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anira.checkpoint import load_checkpoint
from anira.probes.attribution import attribute
from anira.probes.collect import collect
from anira.probes.decision import decision_probes
from anira.probes.selection import null_passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--suite", choices=("attribution", "decision"), default="attribution")
    parser.add_argument("--n", type=int, default=1000, help="instances per seed (default 1000)")
    parser.add_argument("--seeds", default="0,1,2", help="probe seeds, comma-separated (default 0,1,2)")
    parser.add_argument("--draws", type=int, default=9, help="null permutations per seed (default 9)")
    parser.add_argument("--group", type=int, default=3, help="draws pooled per group (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ck = load_checkpoint(args.checkpoint, device="cpu")
    timing = str(getattr(ck.model.policy, "timing", "unknown"))
    groups_total = {1: [0, 0], args.group: [0, 0], args.draws: [0, 0]}  # K -> [passes, checks]
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.perf_counter()
        table = collect(ck.model, ck.task, n=args.n, seed=seed, null_control=True, null_permutations=args.draws)

        def analyse(t, solved: bool, size: bool) -> dict:
            if args.suite == "attribution":
                return attribute(t, correct_only=solved, size_in_baseline=size, n_boot=0, seed=seed)[0]
            return decision_probes(t, timing=timing, correct_only=solved, size_in_baseline=size, seed=seed)[0]

        solved = analyse(table, True, False)
        nulls = [analyse(null, True, True) for null in table.nulls]
        s = solved["verdict"]["beyond"]
        means = [n["verdict"]["beyond"]["mean"] for n in nulls]
        print(f"seed {seed}: solved share {np.mean(table['correct'][np.unique(table['instance'], return_index=True)[1]]):.3f}, "
              f"solved instances read {solved['verdict']['label']}, beyond {s['mean']:+.4f} ± {s['se']:.4f}; "
              f"null draws under the filter: {', '.join(f'{m:+.3f}' for m in means)} (sd {np.std(means, ddof=1):.4f}, "
              f"mean se {np.mean([n['verdict']['beyond']['se'] for n in nulls]):.4f}; "
              f"{', '.join(str(n['n_instances']) for n in nulls)} solved instances)")
        for k in groups_total:
            runs = [null_passes(nulls[i:i + k], solved) for i in range(0, args.draws - k + 1, k)]
            groups_total[k][0] += sum(p for p, _ in runs)
            groups_total[k][1] += len(runs)
            print(f"  K = {k}: passes {sum(p for p, _ in runs)} of {len(runs)}"
                  + (f" (draw 0 alone: {runs[0][0]})" if k == 1 else f"; {runs[0][1]}" if k == args.draws else ""))
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    print("all seeds: " + "; ".join(f"K = {k}: passes {p} of {c}" for k, (p, c) in groups_total.items()))


if __name__ == "__main__":
    main()
