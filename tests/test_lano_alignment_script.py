"""scripts/lano_alignment.py (docs/findings.md's LANO alignment table): it reads the
paper's numbers from docs/paper.md with their signs, and its table and JSON carry the
alignment suite's numbers unchanged, a skipped suite's reason included."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from anira.probes.run import probe_table
from anira.probes.table import TokenTable

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "lano_alignment.py"
spec = importlib.util.spec_from_file_location("lano_alignment", SCRIPT)
lano_alignment = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lano_alignment)


def test_paper_table_is_read_with_its_signs():
    paper = lano_alignment.paper_table(ROOT / "docs" / "paper.md")
    text = (ROOT / "docs" / "paper.md").read_text(encoding="utf-8")
    for policy, col in (("anira-e", 1), ("anira-o", 2)):
        assert set(paper[policy]) == {"expansion", "convergence", "additions", "multiplications"}
        for proxy, name in lano_alignment.PROXIES.items():
            row = next(line for line in text.splitlines() if line.startswith(f"| {proxy} |"))
            cell = row.strip("|").split("|")[col].strip()
            assert paper[policy][name] == float(cell.replace("−", "-"))
    assert paper["anira-e"]["convergence"] < 0 < paper["anira-o"]["expansion"]


def test_numbers_pass_through_unchanged(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    instance = np.repeat(np.arange(30), 10)
    x = rng.integers(0, 8, size=instance.size).astype(float)
    depth = np.clip(1 + x // 2 + rng.integers(0, 2, size=x.size), 1, 6).astype(int)
    feats = {"expansion": x, "convergence": rng.normal(size=x.size), "additions": x,
             "multiplications": np.ones_like(x)}
    table = TokenTable.from_arrays(instance=instance, exit_depth=depth, max_iters=6, features=feats,
                                   kinds={n: "execution" for n in feats}, meta={"label": "planted-e"})
    flat = TokenTable.from_arrays(instance=instance, exit_depth=np.full(x.size, 6), max_iters=6,
                                  features=feats, kinds={n: "execution" for n in feats}, meta={"label": "flat"})
    results = []
    for t in (table, flat):
        r = probe_table(t, suites="alignment", options={"alignment": {"n_boot": "50"}}).to_dict()
        r["collection"] = {"seed": 0, "split": "test", "difficulties": [8, 9]}
        results.append(r)
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"results": results}))
    out = tmp_path / "out.json"
    monkeypatch.setattr(sys, "argv", ["lano_alignment.py", "--probe", str(probe), "--out", str(out)])
    lano_alignment.main()
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    got = data["models"][0]["features"]
    suite = results[0]["suites"]["alignment"]["data"]["features"]
    for f in suite:
        assert got[f["name"]]["rho"] == f["rho"] and got[f["name"]]["ci_low"] == f["ci_low"]
    assert got["multiplications"]["rho"] is None and "constant" in got["multiplications"]["undefined"]
    assert f"{suite[0]['rho']:+.3f}" in printed and "| expansion | +0.666 | +0.456 |" in printed
    assert data["models"][1]["status"] == "skipped" and "constant" in data["models"][1]["reason"]
    assert "flat: alignment skipped" in printed
