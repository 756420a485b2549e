#!/usr/bin/env python3
"""docs/deciders.md's MANO answer-token table: inference exit depth at '=' (where the
model must produce the value: L operator applications) and at the result token (which
predicts <eos>: no work), per L, and Spearman(exit depth at '=', L) within the '='
tokens alone: the per-token criterion without the '=' / result contrast that
dominates it on MANO's two answer tokens. A second table asks whether the depth at '='
differs between solved and failed instances, and what forcing every token to run all D
iterations (a `hook_running` patch) does to exact match: a decider that halts too early
on hard instances loses accuracy that depth would have bought.

    python scripts/mano_answer_depth.py checkpoints/mano-anira-e checkpoints/mano-anira-o [--n 128]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import spearmanr

import anira
from anira.lens import full_depth_hooks
from anira.evaluate import eval_instances
from anira.task import collate


def answer_depths(path: str, n: int, seed: int) -> dict:
    model, task = anira.load(path)
    model.eval()
    if task.name != "mano":
        raise SystemExit(f"{path}: a {task.name} checkpoint; this table is for MANO")
    lo, hi = task.ranges.test_id
    D = model.cfg.max_iters
    full_depth = full_depth_hooks(D)
    eq, result, sizes, solved, solved_full = [], [], [], [], []
    for L in range(lo, hi + 1):
        examples = eval_instances(task, L, n, seed)  # the instances `anira eval --seed` scores
        batch = collate(examples)
        tokens = torch.from_numpy(batch.tokens)
        with torch.no_grad():
            out = model(tokens)
            forced = model.run_with_hooks(tokens, fwd_hooks=full_depth)
        depth = out.exit_depth.numpy()
        for i in range(n):
            at_eq, at_result = np.nonzero(batch.answer_mask[i])[0][:2]  # '=' then the result
            eq.append(depth[i, at_eq])
            result.append(depth[i, at_result])
            sizes.append(L)
            value = batch.tokens[i, at_eq + 1]  # '=' predicts the value
            solved.append(int(out.logits[i, at_eq].argmax()) == value)
            solved_full.append(int(forced.logits[i, at_eq].argmax()) == value)
    eq, result, sizes, solved, solved_full = map(np.asarray, (eq, result, sizes, solved, solved_full))
    Ls = list(range(lo, hi + 1))

    def mean(values, mask):
        return float(values[mask].mean()) if mask.any() else float("nan")

    return {"L": Ls, "eq": [mean(eq, sizes == L) for L in Ls],
            "result": [mean(result, sizes == L) for L in Ls],
            "rho_eq_L": float(spearmanr(eq, sizes)[0]) if np.unique(eq).size > 1 else float("nan"),
            "acc": [mean(solved, sizes == L) for L in Ls], "acc_full_depth": [mean(solved_full, sizes == L) for L in Ls],
            "eq_solved": [mean(eq, (sizes == L) & solved) for L in Ls],
            "eq_failed": [mean(eq, (sizes == L) & ~solved) for L in Ls]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--n", type=int, default=128, help="test instances per L")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {path: answer_depths(path, args.n, args.seed) for path in args.checkpoints}
    for path, r in results.items():
        if path == args.checkpoints[0]:
            print("| checkpoint | token | " + " | ".join(f"L = {L}" for L in r["L"]) + " | Spearman with L |")
            print("| --- | --- | " + " | ".join("---" for _ in r["L"]) + " | --- |")
        name = path.rstrip("/").split("/")[-1]
        print(f"| {name} | '=' (the value) | " + " | ".join(f"{d:.2f}" for d in r["eq"]) + f" | {r['rho_eq_L']:+.3f} |")
        print(f"| {name} | result (<eos>) | " + " | ".join(f"{d:.2f}" for d in r["result"]) + " | |")
    print()
    print("| checkpoint | L | exact match | forced to depth D | depth at '=', solved | failed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path, r in results.items():
        name = path.rstrip("/").split("/")[-1]
        for j, L in enumerate(r["L"]):
            print(f"| {name} | {L} | {r['acc'][j]:.3f} | {r['acc_full_depth'][j]:.3f} | {r['eq_solved'][j]:.2f} "
                  f"| {r['eq_failed'][j]:.2f} |")


if __name__ == "__main__":
    main()
