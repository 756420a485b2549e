#!/usr/bin/env python3
"""Does a decider halt too early? Per difficulty: exact match at the policy's own exit
depths and with every token forced to run all D iterations (a ``hook_running`` patch),
and the mean exit depth over answer positions on the instances the policy solves and
on those it fails (docs/deciders.md, section 4). A gap that forcing depth closes is
accuracy the decider gave away; failed instances run shallower than solved ones when
the decider stops before the core has finished.

    python scripts/halting_headroom.py checkpoints/brevo-anira-o checkpoints/brevo-anira-e [--n 128]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import anira
from anira.lens import full_depth_hooks
from anira.evaluate import default_difficulties, eval_instances
from anira.task import collate


def headroom(path: str, n: int, seed: int) -> list[dict]:
    model, task = anira.load(path)
    model.eval()
    D = model.cfg.max_iters
    full_depth = full_depth_hooks(D)
    rows = []
    lo, hi = task.ranges.test_id
    for k in (k for k in default_difficulties(task) if lo <= k <= hi):
        examples = eval_instances(task, k, n, seed)  # the instances `anira eval --seed` scores
        batch = collate(examples, pad_id=task.tokenizer.pad_id)
        tokens = torch.from_numpy(batch.tokens)
        with torch.no_grad():
            out = model(tokens)
            forced = model.run_with_hooks(tokens, fwd_hooks=full_depth)
        pred, pred_full = out.logits.argmax(-1).numpy(), forced.logits.argmax(-1).numpy()
        solved = np.array([task.score(e, pred[j, : len(e)]) for j, e in enumerate(examples)])
        solved_full = np.array([task.score(e, pred_full[j, : len(e)]) for j, e in enumerate(examples)])
        depth = out.exit_depth.numpy().astype(np.float64)
        per_instance = np.array([depth[j][batch.answer_mask[j]].mean() for j in range(n)])
        rows.append({
            "difficulty": k, "acc": float(solved.mean()), "acc_full_depth": float(solved_full.mean()),
            "depth_solved": float(per_instance[solved].mean()) if solved.any() else float("nan"),
            "depth_failed": float(per_instance[~solved].mean()) if (~solved).any() else float("nan"),
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--n", type=int, default=128, help="test instances per difficulty")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| checkpoint | difficulty | exact match | forced to depth D | exit depth, solved | failed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in args.checkpoints:
        name = path.rstrip("/").split("/")[-1]
        for r in headroom(path, args.n, args.seed):
            print(f"| {name} | {r['difficulty']} | {r['acc']:.3f} | {r['acc_full_depth']:.3f} | "
                  f"{r['depth_solved']:.2f} | {r['depth_failed']:.2f} |")


if __name__ == "__main__":
    main()
