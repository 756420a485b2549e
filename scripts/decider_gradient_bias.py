"""Straight-through gradients of the ANIRA deciders against the gradient of the
expected loss (docs/deciders.md). Writes docs/data/decider_gradient_bias.json.

A trained fixed-depth model (checkpoints/brevo-fixed unless --checkpoint) gets a
fresh decider of each kind with the regulariser off (gamma 0: the task loss alone).
At several values θ of the decider's output bias (ANIRA-O: the halting bias, θ > 0
halts sooner; ANIRA-E: a tilt of the depth logits, θ > 0 favours shallow depths)
it estimates dE[L]/dθ four ways (anira.gradients): the two straight-through
surrogates and two unbiased references (finite differences of the expected loss
with common random numbers, and the score-function estimator).

    python scripts/decider_gradient_bias.py --seeds 24 --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from anira import load
from anira.gradients import estimate_gradients
from anira.model import build_model
from anira.task import collate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "brevo-fixed"))
    parser.add_argument("--per-difficulty", type=int, default=24, help="test instances per difficulty value")
    parser.add_argument("--seeds", type=int, default=24)
    parser.add_argument("--thetas", default="-3,-1.5,0,1.5")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs" / "data" / "decider_gradient_bias.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fixed, task = load(args.checkpoint)
    lo, hi = task.ranges.test_id
    rng = np.random.default_rng(0)
    examples = [task.sample(d, rng, split="test") for d in range(lo, hi + 1) for _ in range(args.per_difficulty)]
    batch = collate(examples)
    tokens, loss_mask = torch.from_numpy(batch.tokens), torch.from_numpy(batch.loss_mask)
    D = fixed.cfg.max_iters
    rows = []
    for policy in ("anira-o", "anira-e"):
        model = build_model(fixed.cfg, policy, seed=0, gamma=0.0)
        missing = model.load_state_dict(fixed.state_dict(), strict=False).missing_keys
        assert all(k.startswith("policy.") for k in missing), missing  # only the fresh decider
        model.train()
        bias = model.policy.decider.fc_out.bias
        if policy == "anira-o":
            direction = torch.ones_like(bias)
        else:  # θ·((D+1)/2 - d) / ((D-1)/2): θ > 0 raises shallow depths' logits
            d = torch.arange(1, D + 1, dtype=bias.dtype)
            direction = ((D + 1) / 2 - d) / ((D - 1) / 2)
        for theta in (float(x) for x in args.thetas.split(",")):
            est = estimate_gradients(model, tokens, loss_mask, bias, direction, theta, seeds=args.seeds)
            row = {"policy": policy, "theta": theta, **est.as_dict()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"checkpoint": str(Path(args.checkpoint).relative_to(ROOT)) if args.checkpoint.startswith(str(ROOT)) else args.checkpoint,
            "instances": len(examples), "difficulties": [lo, hi], "seeds": args.seeds, "threads": args.threads}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
