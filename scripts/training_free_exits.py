#!/usr/bin/env python3
"""The training-free exits (exit-kl, exit-latent, exit-entropy) on a fixed-depth checkpoint,
each at several thresholds: in-distribution exact match, mean exit depth of answer tokens,
cost ratio, and per-token Spearman of exit depth with the task's complexity
(docs/policies.md, "Training-free exits").

    python scripts/training_free_exits.py checkpoints/brevo-fixed --n 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import anira
from anira.evaluate import evaluate
from anira.fileio import atomic_write_bytes

THRESHOLDS = {"exit-kl": (5e-4, 1e-2, 0.1, 1.0), "exit-latent": (0.03, 0.3, 0.5, 1.0),
              "exit-entropy": (1e-3, 1e-2, 0.1, 1.0)}


def rows(path: str, n: int, seed: int):
    """One dict per (policy, threshold), yielded as each is measured."""
    fixed, task = anira.load(path)
    for name, threshold in [("fixed", None)] + [(p, t) for p, ts in THRESHOLDS.items() for t in ts]:
        model = fixed if threshold is None else anira.with_policy(fixed, name, threshold=threshold)
        start = time.perf_counter()
        result = evaluate(model, task, n_per_difficulty=n, seed=seed, device="cpu")
        m = result.in_distribution.metrics
        yield {"policy": name, "threshold": threshold, "accuracy": m.accuracy,
               "mean_exit_depth": m.mean_exit_depth, "cost_ratio": m.cost_ratio,
               "spearman_exit_depth": m.spearman_exit_depth,
               "depth_by_difficulty": {str(p.difficulty): p.metrics.mean_exit_depth
                                       for p in result.per_difficulty if p.in_test_id},
               "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint trained with the fixed policy")
    parser.add_argument("--n", type=int, default=256, help="test instances per in-distribution difficulty")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = []
    print("| policy | threshold | accuracy | mean exit depth | cost ratio | Spearman(depth, complexity) | depth by difficulty |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows(args.checkpoint, args.n, args.seed):
        table.append(r)
        rho = "—" if r["spearman_exit_depth"] is None or r["spearman_exit_depth"] != r["spearman_exit_depth"] \
            else f"{r['spearman_exit_depth']:+.2f}"
        by = ", ".join(f"{k}: {v:.2f}" for k, v in r["depth_by_difficulty"].items())
        print(f"| `{r['policy']}` | {r['threshold'] if r['threshold'] is not None else '—'} | {r['accuracy']:.3f} | "
              f"{r['mean_exit_depth']:.2f} | {r['cost_ratio']:.2f} | {rho} | {by} |", flush=True)
    if args.json:  # written once every row is measured, atomically: never a half-written file
        data = {"checkpoint": args.checkpoint, "n_per_difficulty": args.n, "seed": args.seed,
                "command": "python scripts/training_free_exits.py " + args.checkpoint + f" --n {args.n}",
                "rows": table}
        atomic_write_bytes(args.json, (json.dumps(data, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
