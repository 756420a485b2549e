#!/usr/bin/env python3
"""docs/findings.md's LANO alignment table: ours beside the paper's (docs/paper.md §4).

Reads the JSON of `anira probe ... --suite alignment --out DIR` (DIR/probe.json)
and the `anira eval --json` outputs of the checkpoints, takes the paper's
numbers from docs/paper.md's "Alignment on LANO" table, prints the markdown
table and writes the compact numbers:

    python scripts/lano_alignment.py --probe probe/probe.json [--probe other/probe.json ...] \\
        --eval lano-anira-e=eval-e.json --eval lano-anira-o=eval-o.json --eval lano-fixed=eval-f.json \\
        --out docs/data/findings_lano_alignment.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: the paper's proxy names (docs/paper.md) -> the LANO task's feature names
PROXIES = {"parse-space expansion": "expansion", "parse convergence": "convergence",
           "parser additions": "additions", "parser multiplications": "multiplications"}


def paper_table(path: Path) -> dict[str, dict[str, float]]:
    """{"anira-e": {"expansion": 0.666, ...}, "anira-o": {...}} from docs/paper.md."""
    text = path.read_text(encoding="utf-8")
    section = text.split("### Alignment on LANO", 1)[1].split("###", 1)[0]
    out: dict[str, dict[str, float]] = {"anira-e": {}, "anira-o": {}}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in PROXIES:
            for policy, cell in zip(("anira-e", "anira-o"), cells[1:]):
                out[policy][PROXIES[cells[0]]] = float(cell.replace("−", "-"))
    if any(len(v) != len(PROXIES) for v in out.values()):
        raise SystemExit(f"{path}: the alignment table does not list the four proxies")
    return out


def eval_summary(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    out = {"policy": data["policy"], "n_per_difficulty": data["n_per_difficulty"], "seed": data["seed"],
           "step": data.get("step")}
    for split in ("in_distribution", "ood"):
        s = data.get(split)
        if s is None:
            continue
        m = s["metrics"]
        out[split] = {"difficulties": [s["difficulties"][0], s["difficulties"][-1]], "n": m["n"],
                      "accuracy": m["accuracy"], "mean_exit_depth_all": m["mean_exit_depth_all"],
                      "mean_expected_depth_all": m["mean_expected_depth_all"], "cost_ratio": m["cost_ratio"],
                      "expected_depth_spearman": {f: r["expected_depth"] for f, r in m["feature_spearman"].items()}}
    return out


def fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:+.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe", required=True, type=Path, action="append",
                    help="probe.json of anira probe --suite alignment --out (repeatable)")
    ap.add_argument("--eval", action="append", default=[], metavar="LABEL=JSON",
                    help="anira eval --json output of the checkpoint LABEL (repeatable)")
    ap.add_argument("--paper", type=Path, default=REPO / "docs" / "paper.md")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    paper = paper_table(args.paper)
    results = [r for path in args.probe for r in json.loads(path.read_text(encoding="utf-8"))["results"]]
    evals = {}
    for item in args.eval:
        label, _, path = item.partition("=")
        evals[label] = eval_summary(Path(path))
    models = []
    for r in results:
        suite = r["suites"]["alignment"]
        col = r["collection"]
        rule = col.get("depth_rule")
        # a planted rule replaces the policy: name the column by the rule (and the probe's seed)
        label = f"{r['label']} rule `{rule}` (seed {col.get('seed')})" if rule else r["label"]
        entry = {"label": label, "policy": r["policy"], "checkpoint": r["checkpoint"],
                 "collection": {"seed": col.get("seed"), "split": col.get("split"), "depth_rule": rule,
                                "difficulties": [min(col["difficulties"]), max(col["difficulties"])]},
                 "status": suite["status"], "reason": suite["reason"]}
        if suite["status"] == "ok":
            d = suite["data"]
            entry.update({k: d[k] for k in ("token_set", "correct_only", "target", "n_tokens", "n_instances",
                                            "n_boot", "level", "target_spread")})
            entry["features"] = {f["name"]: {k: f[k] for k in ("rho", "ci_low", "ci_high", "n_tokens",
                                                             "n_instances", "undefined")}
                                 | {"within_instance_median": f["within_instance"]["median"],
                                    "within_instance_n": f["within_instance"]["n_instances"]}
                                 for f in d["features"]}
        models.append(entry)
    out = {"paper": paper, "proxies": PROXIES, "models": models, "evals": evals}

    head = "| proxy | paper ANIRA-E | paper ANIRA-O | " + " | ".join(m["label"] for m in models) + " |"
    print(head)
    print("|" + " --- |" * (3 + len(models)))
    names = list(PROXIES.values()) + sorted({f for m in models for f in m.get("features", {})} - set(PROXIES.values()))
    for name in names:
        cells = []
        for m in models:
            f = m.get("features", {}).get(name)
            if f is None:
                cells.append("skipped (below)" if m["status"] != "ok" else "—")
            elif f["rho"] is None:
                cells.append(f"undefined ({f['undefined']})")
            else:
                cells.append(f"{fmt(f['rho'])} [{fmt(f['ci_low'])}, {fmt(f['ci_high'])}]")
        pe = paper["anira-e"].get(name)
        po = paper["anira-o"].get(name)
        print(f"| {name} | {fmt(pe) if pe is not None else '—'} | {fmt(po) if po is not None else '—'} | "
              + " | ".join(cells) + " |")
    for m in models:
        if m["status"] != "ok":
            print(f"\n{m['label']}: alignment {m['status']}: {m['reason']}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
