#!/usr/bin/env python3
"""docs/deciders.md's BREVO per-token table: why exit depth and the task's per-token
complexity (operations of the reference DFS since the previous output) hardly correlate.

For each checkpoint, over the answer positions of `anira eval`'s test instances
(the same seeds): the pooled Spearman(exit depth, complexity) of the deciders'
criterion, the same within each N, how each of the two follows N, and per answer
index (the first node emitted, the second, ...) the mean exit depth, complexity and
in-degree of the emitted node at two sizes. The first node emitted is always a leaf
of the query's dependency graph (in-degree 0) while the DFS does most of its work
before emitting it, so a decider that follows the emitted node's dependencies gives
the token with the most DFS work the least depth.

With ``--needed``, also the depth each answer token needs on the checkpoint's own network
(n: the smallest depth from which its argmax is right at every deeper one, every token
forced to the same depth; scripts/known_depth_deciders.py) and how n ranks with the
complexity, N and the in-degree: whether the network itself spends its iterations on what
the complexity counts, which a decider that follows n (docs/deciders.md, section 1) could
only pass on. Works on a fixed-depth checkpoint too (its exit depth is constant).

    python scripts/brevo_answer_depth.py checkpoints/brevo-anira-o checkpoints/brevo-anira-e [--n 128] [--needed]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import anira
from anira.evaluate import eval_instances
from anira.task import collate


def known_depth_module():
    """scripts/known_depth_deciders.py, whose needed-depth functions --needed uses, loaded on
    first use (registered in sys.modules before it runs: its dataclasses look their module up
    there)."""
    if "known_depth_deciders" not in sys.modules:
        path = Path(__file__).with_name("known_depth_deciders.py")
        spec = importlib.util.spec_from_file_location("known_depth_deciders", path)
        sys.modules["known_depth_deciders"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["known_depth_deciders"]


def answer_rows(path: str, n: int, seed: int, *, needed: bool = False) -> tuple[str, dict[str, np.ndarray]]:
    """One row per answer position with a defined complexity (the <eos> step included);
    with ``needed``, also its needed depth n on this network (0 = wrong at depth D)."""
    model, task = anira.load(path)
    model.eval()
    if task.name != "brevo":
        raise SystemExit(f"{path}: a {task.name} checkpoint; this table is for BREVO")
    lo, hi = task.ranges.test_id
    cols: dict[str, list] = {"depth": [], "complexity": [], "in_degree": [], "index": [], "N": [], "needed": []}
    for N in range(lo, hi + 1):
        examples = eval_instances(task, N, n, seed)  # the instances `anira eval --seed` scores
        batch = collate(examples, pad_id=task.tokenizer.pad_id)
        tokens = torch.from_numpy(batch.tokens)
        with torch.no_grad():
            depth = model(tokens).exit_depth.numpy()
        if needed:
            known_depth = known_depth_module()
            preds, _ = known_depth.forced_depth_outputs(model, tokens)
            need = known_depth.needed_depth(known_depth.correct_by_depth(preds, batch.tokens))
        for j, example in enumerate(examples):
            for index, p in enumerate(np.flatnonzero(batch.answer_mask[j])):
                if np.isnan(example.complexity[p]):
                    continue
                if needed:
                    cols["needed"].append(need[j, p])
                cols["depth"].append(depth[j, p])
                cols["complexity"].append(example.complexity[p])
                cols["in_degree"].append(example.features["in_degree"][p])  # NaN at the <eos> step
                cols["index"].append(index)
                cols["N"].append(N)
    return Path(path).name, {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def rho(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho; NaN where either side is constant (a fixed-depth model's exit depth)."""
    if np.unique(a).size < 2 or np.unique(b).size < 2:
        return float("nan")
    return float(spearmanr(a, b)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--n", type=int, default=128, help="test instances per N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="6,10", help="the N values of the per-index table")
    ap.add_argument("--needed", action="store_true", help="also the needed depth n on each network and its ranks")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    tables = [answer_rows(path, args.n, args.seed, needed=args.needed) for path in args.checkpoints]

    Ns = np.unique(tables[0][1]["N"]).astype(int)
    print("| checkpoint | answer tokens | ρ(depth, complexity) | ρ(depth, N) | ρ(complexity, N) | "
          + " | ".join(f"ρ within N = {N}" for N in Ns) + " |")
    print("| --- " * (5 + len(Ns)) + "|")
    for name, t in tables:
        within = [rho(t["depth"][t["N"] == N], t["complexity"][t["N"] == N]) for N in Ns]
        print(f"| {name} | {len(t['depth'])} | {rho(t['depth'], t['complexity']):+.3f} | "
              f"{rho(t['depth'], t['N']):+.2f} | {rho(t['complexity'], t['N']):+.2f} | "
              + " | ".join(f"{r:+.2f}" for r in within) + " |")

    print()
    print("| checkpoint | N | quantity | " + " | ".join(f"output {i + 1}" for i in range(6)) + " |")
    print("| --- " * 9 + "|")
    for name, t in tables:
        for N in sizes:
            at = t["N"] == N
            for label, key in (("exit depth", "depth"), ("complexity", "complexity"), ("in-degree", "in_degree")):
                cells = []
                for i in range(6):
                    sel = at & (t["index"] == i)
                    vals = t[key][sel]
                    vals = vals[~np.isnan(vals)]
                    cells.append(f"{vals.mean():.2f}" if vals.size else "")
                print(f"| {name} | {N} | {label} | " + " | ".join(cells) + " |")
    if args.needed:
        print()
        print(needed_table(tables))


def needed_table(tables: list[tuple[str, dict[str, np.ndarray]]]) -> str:
    """Markdown: how the needed depth n ranks with the complexity (pooled and within each N),
    with N and with the emitted node's in-degree, over the tokens with a defined n; and the
    exit depth's rank with n where the exit depth varies."""
    Ns = np.unique(tables[0][1]["N"]).astype(int)
    lines = ["| checkpoint | tokens with n (of all) | mean n | ρ(n, complexity) | ρ(n, N) | ρ(n, in-degree) | "
             "ρ(exit depth, n) | " + " | ".join(f"ρ(n, complexity) within N = {N}" for N in Ns) + " |",
             "| --- " * (7 + len(Ns)) + "|"]
    for name, t in tables:
        ok = t["needed"] > 0
        n, c, N = t["needed"][ok], t["complexity"][ok], t["N"][ok]
        deg = ok & ~np.isnan(t["in_degree"])
        exit_rho = rho(t["depth"][ok], n)
        within = [rho(n[N == k], c[N == k]) for k in Ns]
        lines.append(f"| {name} | {int(ok.sum())} ({len(ok)}) | {n.mean():.2f} | {rho(n, c):+.3f} | {rho(n, N):+.2f} | "
                     f"{rho(t['needed'][deg], t['in_degree'][deg]):+.2f} | {exit_rho:+.2f} | "
                     + " | ".join(f"{r:+.2f}" for r in within) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
