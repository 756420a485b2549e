"""The deciders' criteria (docs/deciders.md) from `anira eval --json` outputs.

    python scripts/decider_criteria.py FIXED.json ADAPTIVE.json [...] [--out summary.json]

For each adaptive model against the fixed-depth model of the same recipe and budget:
in-distribution exact match and its gap to the fixed model (``--out`` also keeps the
answer-token accuracy ID and OOD), mean exit depth over
answer tokens against 0.75·D, Spearman of per-difficulty mean exit depth with the
difficulty, and per-token Spearman(exit depth, complexity) on answer tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anira.evaluate import spearman


def summary(path: Path) -> dict:
    data = json.loads(path.read_text())
    ind = data["in_distribution"]["metrics"]
    lo, hi = data["ranges"]["test_id"]
    rows = [p for p in data["per_difficulty"] if lo <= p["difficulty"] <= hi]
    depths = [p["metrics"]["mean_exit_depth"] for p in rows]
    return {
        "name": path.stem, "policy": data["policy"], "step": data["step"], "max_iters": data["max_iters"],
        "id_accuracy": ind["accuracy"], "ood_accuracy": data["ood"]["metrics"]["accuracy"],
        # answer tokens right / answer tokens (docs/evaluation.md); None in JSON of an older anira
        "id_token_acc": ind.get("token_acc"), "ood_token_acc": data["ood"]["metrics"].get("token_acc"),
        "mean_exit_depth": ind["mean_exit_depth"],
        "depth_by_difficulty": {p["difficulty"]: round(p["metrics"]["mean_exit_depth"], 3) for p in rows},
        "accuracy_by_difficulty": {p["difficulty"]: round(p["metrics"]["accuracy"], 3) for p in rows},
        "spearman_depth_difficulty": spearman([p["difficulty"] for p in rows], depths) if len(set(depths)) > 1 else None,
        "spearman_exit_depth_complexity": ind["spearman_exit_depth"],
    }


def _token_rho(rho: float | None) -> str:
    # None where depth is constant (a fixed-depth model given among the adaptive ones)
    return "—" if rho is None else f"{rho:+.3f} {'✔' if rho >= 0.3 else '✘'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixed", type=Path)
    parser.add_argument("adaptive", type=Path, nargs="+")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    fixed = summary(args.fixed)
    rows = [fixed]
    print("| model | steps | ID exact match (gap to fixed) | mean exit depth (≤ 0.75·D) | ρ(depth, difficulty) | ρ(exit depth, complexity) per token | OOD |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {fixed['name']} | {fixed['step']} | {fixed['id_accuracy']:.3f} | {fixed['mean_exit_depth']:.2f} | — | — | {fixed['ood_accuracy']:.3f} |")
    for path in args.adaptive:
        row = summary(path)
        rows.append(row)
        gap = 100 * (row["id_accuracy"] - fixed["id_accuracy"])
        limit = 0.75 * row["max_iters"]
        rho_d = row["spearman_depth_difficulty"]
        print(f"| {row['name']} | {row['step']} | {row['id_accuracy']:.3f} ({gap:+.1f} pts {'✔' if gap >= -3 else '✘'}) "
              f"| {row['mean_exit_depth']:.2f} {'✔' if row['mean_exit_depth'] <= limit else '✘'} "
              f"| {rho_d if rho_d is None else f'{rho_d:.2f}'} {'✔' if rho_d is not None and rho_d >= 0.9 else '✘'} "
              f"| {_token_rho(row['spearman_exit_depth_complexity'])} "
              f"| {row['ood_accuracy']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
