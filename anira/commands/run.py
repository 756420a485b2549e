"""``anira run``: the main job.

Without trained checkpoints it builds a small model, runs it with a cache and
shows, iteration by iteration, which tokens were still computing and where each
token exited. (Once reference checkpoints are bundled, this command evaluates
them and writes the report.)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from anira.cache import names_filter_for, stack_iterations
from anira.config import preset_config
from anira.model import build_model
from anira.registry import default_registry


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="the main job: run the bundled default and show what it did")
    parser.add_argument("--task", default="mano", help="task to draw an example from (default: mano)")
    parser.add_argument("--policy", default="anira-o", help="halting policy (default: anira-o)")
    parser.add_argument("--difficulty", type=int, default=3, help="task difficulty (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data (default: 0)")
    parser.set_defaults(func=run)


def trace_lines(task_name: str, policy: str, difficulty: int, seed: int) -> list[str]:
    task = default_registry().task(task_name)()
    example = task.sample(difficulty, np.random.default_rng(seed), split="test")
    cfg = preset_config("tiny", vocab_size=task.vocab_size, max_len=max(64, len(example)))
    model = build_model(cfg, policy, seed=seed).eval()
    D = cfg.max_iters
    out, cache = model.run_with_cache(
        torch.as_tensor(example.tokens)[None], names_filter=names_filter_for("hook_resid_pre", "hook_resid_post", max_iters=D)
    )
    before, _ = stack_iterations(cache, "hook_resid_pre")
    after, running = stack_iterations(cache, "hook_resid_post")
    moved = (after - before).norm(dim=-1)[:, 0]  # (iter, pos): how far each state moved
    words = [task.tokenizer.vocab[i] for i in example.tokens.tolist()]
    width = max(5, max(len(w) for w in words))
    lines = [
        f"task {task.name} (difficulty {difficulty}), policy {policy}, untrained {cfg.d_model}-wide model, D = {D}",
        f"text: {task.decode(example.tokens)}",
        "",
        "iteration " + " ".join(w.rjust(width) for w in words),
    ]
    for t in range(D):
        cells = ["run".rjust(width) if r else ".".rjust(width) for r in running[t, 0].tolist()]
        lines.append(f"{t:>9} " + " ".join(cells) + f"   ({int(running[t, 0].sum())} running, largest state change {float(moved[t].max()):.3f})")
    lines.append("exit depth " + " ".join(str(d).rjust(width) for d in out.exit_depth[0].tolist()))
    lines.append("E[depth]   " + " ".join(f"{d:.2f}".rjust(width) for d in out.expected_depth[0].tolist()))
    cost = int(out.execution_cost[0])
    lines.append("")
    lines.append(
        f"loop ran {out.iterations_run} of {D} iterations; execution cost Σ_d |A_d| = {cost} "
        f"token-iterations = {cost / (D * len(words)):.2f} of fixed depth"
    )
    return lines


def run(args: argparse.Namespace) -> int:
    for line in trace_lines(args.task, args.policy, args.difficulty, args.seed):
        print(line)
    return 0
