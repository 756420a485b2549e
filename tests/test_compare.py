"""``anira bench compare`` / anira.bench.compare: rows, table, failure rows, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anira.bench.compare import HEADER, MEASURED, POLICY_TABLE, compare_policies, markdown_table
from anira.cli import main

torch.set_num_threads(1)

TINY = ["model.max_iters=2", "task.train=1,2", "task.test_id=1,2", "task.test_ood=3,3",
        "train.eval_every=100", "train.checkpoint_every=100"]
ROW_KEYS = {"task", "policy", "timing", "preset", "status", "reason", "trained", "base_run", "run_dir", "steps",
            "train_s", "eval_s", "probe_s", "wall_s", "mean_expected_depth", "probe_suites", *MEASURED}


def _compare(tmp_path, policies, **kwargs):
    options = dict(preset_for_task="smoke", steps=3, out_dir=tmp_path / "cmp", device="cpu",
                   train_overrides=TINY, eval_n=8, probe_n=12)
    options.update(kwargs)
    return compare_policies(policies, ["mano"], **options)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    # correct_only=false: a 3-step model solves nothing, the decision probe still runs on every instance
    rows = _compare(tmp, ["anira-o", "exit-kl"], probe_options={"decision": {"correct_only": False, "n_splits": 2}})
    return tmp / "cmp", rows


def test_rows_schema_and_training_free_base(compared):
    out, rows = compared
    # fixed is added (first) as the base of the training-free exit
    assert [r["policy"] for r in rows] == ["fixed", "anira-o", "exit-kl"]
    for r in rows:
        assert set(r) == ROW_KEYS, set(r) ^ ROW_KEYS
        assert r["task"] == "mano" and r["preset"] == "smoke" and r["steps"] == 3
        assert r["status"] == "ok", r["reason"]
        assert 0.0 <= r["id_accuracy"] <= 1.0 and 1.0 <= r["mean_exit_depth"] <= 2.0
        assert r["verdict"] is not None and r["probe_suites"]["decision"]["status"] == "ok"
        assert (Path(r["run_dir"]) / "eval.json").is_file() and (Path(r["run_dir"]) / "probe.json").is_file()
    by = {r["policy"]: r for r in rows}
    assert by["anira-o"]["timing"] == "online" and by["anira-o"]["trained"]
    exit_row = by["exit-kl"]
    assert exit_row["timing"] == "training-free" and not exit_row["trained"]
    assert exit_row["base_run"] == by["fixed"]["run_dir"]
    assert not (Path(exit_row["run_dir"]) / "checkpoints").exists()  # not trained
    saved = json.loads((out / "compare.json").read_text())
    assert saved["schema"] == 1 and saved["rows"] == rows
    json.dumps(rows, allow_nan=False)  # JSON-able: NaN became null


def test_markdown_table(compared):
    out, rows = compared
    table = markdown_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |" and len(lines) == 2 + len(rows)
    assert all(line.count(" | ") == len(HEADER) - 1 for line in lines[2:])
    assert POLICY_TABLE["anira-o"][1] in table and "`exit-kl`" in table
    assert (out / "compare.md").read_text().strip() == table


def test_static_columns_match_docs():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "policies.md").read_text(encoding="utf-8")
    rows = {}
    for line in docs.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows.setdefault(cells[0].strip("`"), tuple(cells[1:]))
    for name, columns in POLICY_TABLE.items():
        assert rows.get(name) == columns, name
    from anira import build_registry

    builtin = set(build_registry(load_entry_points=False).names("policy"))
    assert builtin <= set(POLICY_TABLE), "every built-in policy has its row"


def test_skipped_probe_and_failure_give_rows(tmp_path):
    # the default decision probe needs solved instances: a 3-step model has none
    rows = _compare(tmp_path, ["fixed", "exit-latent"])
    for r in rows:
        assert r["status"] == "incomplete" and r["verdict"] is None
        assert r["reason"].startswith("no decision verdict") and r["id_accuracy"] == 0.0
    # a run that cannot be trained: a failed row with the reason, the rest continues
    out = tmp_path / "broken"
    (out / "mano" / "fixed").mkdir(parents=True)
    (out / "mano" / "fixed" / "run.json").write_text("{}")
    rows = _compare(tmp_path, ["fixed", "exit-kl"], out_dir=out)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert rows[0]["reason"] and "\n" not in rows[0]["reason"]
    assert "fixed run it applies to failed" in rows[1]["reason"]
    assert "failed:" in markdown_table(rows)


@pytest.mark.parametrize("argv, message", [
    (["--policies", "nope"], "unknown policy 'nope'"),
    (["--tasks", "nope"], "unknown task 'nope'"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--suite", "nope"], "unknown probe suite 'nope'"),
    (["--steps", "x"], "expected an integer"),
    (["--set", "train.nope=1"], "unknown key 'train.nope'"),
    (["--policies", ","], "no policy given"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "cmp"
    base = ["bench", "compare", "--policies", "fixed", "--tasks", "mano", "--preset", "smoke", "--device", "cpu",
            "--out", str(out)]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anira: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_trained_runs_are_evaluated_not_retrained(compared, tmp_path):
    """--trained DIR: runs trained elsewhere (named <task>-<policy>) are evaluated and
    probed as they are; exits go onto <task>-fixed."""
    from anira.checkpoint import export

    out, first = compared
    trained = tmp_path / "elsewhere"
    for policy in ("fixed", "anira-o"):
        export(out / "mano" / policy, trained / f"mano-{policy}")  # no optimizer state: cannot be resumed
    rows = compare_policies(["anira-o", "exit-kl"], ["mano"], out_dir=tmp_path / "again", device="cpu",
                            eval_n=8, probe_n=12, trained=trained,
                            probe_options={"decision": {"correct_only": False, "n_splits": 2}})
    by = {r["policy"]: r for r in rows}
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"], [r["reason"] for r in rows]
    assert by["anira-o"]["steps"] == 3 and by["anira-o"]["train_s"] == 0.0
    assert by["anira-o"]["base_run"] == str(trained / "mano-anira-o")
    assert by["exit-kl"]["base_run"] == str(trained / "mano-fixed")
    old = {r["policy"]: r for r in first}
    assert by["anira-o"]["id_accuracy"] == old["anira-o"]["id_accuracy"]  # same weights, same eval sets
    assert not (tmp_path / "again" / "mano" / "anira-o" / "checkpoints").exists()


def test_trained_run_missing_is_an_error_before_any_work(tmp_path):
    from anira.errors import AniraError

    with pytest.raises(AniraError, match="mano-act"):
        compare_policies(["act"], ["mano"], out_dir=tmp_path / "x", device="cpu", trained=tmp_path)
    assert not (tmp_path / "x").exists()
