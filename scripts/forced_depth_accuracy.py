"""Exact match of a checkpoint with every token forced to exit at depth k, k = 1..D:
how much depth the task needs (docs/deciders.md, "Ranges where depth matters").

    python scripts/forced_depth_accuracy.py checkpoints/brevo-fixed --n 64
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from anira import load
from anira.task import collate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=64, help="test instances per in-distribution difficulty")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, task = load(args.checkpoint)
    lo, hi = task.ranges.test_id
    rng = np.random.default_rng(args.seed)
    examples = {d: [task.sample(d, rng, split="test") for _ in range(args.n)] for d in range(lo, hi + 1)}
    rows = []
    with torch.no_grad():
        for k in range(1, model.cfg.max_iters + 1):
            by = {}
            for d, exs in examples.items():
                tokens = torch.from_numpy(collate(exs).tokens)
                pred = model(tokens, exit_depths=torch.full(tokens.shape, k)).logits.argmax(-1).numpy()
                by[d] = float(np.mean([task.score(e, pred[i]) for i, e in enumerate(exs)]))
            rows.append({"depth": k, "accuracy": float(np.mean(list(by.values()))), "by_difficulty": by})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
