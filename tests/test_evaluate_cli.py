"""`anira eval` and `anira report` on real checkpoint directories."""

from __future__ import annotations

import json

import pytest

from anira import build_model, preset_config
from anira.checkpoint import checkpoint_config, write_checkpoint
from anira.cli import main
from anira.registry import default_registry

TASK_OPTIONS = {"train": [3, 4], "test_id": [3, 4], "test_ood": [5, 6]}


def make_checkpoint(path, policy: str):
    task = default_registry().task("mano")()
    cfg = preset_config("test", vocab_size=task.vocab_size)
    model = build_model(cfg, policy, seed=0)
    metrics = path.parent / f"{path.name}-metrics.jsonl"
    rows = [{"difficulty": k, "n": 2, "acc": 0.5, "mean_depth": 2.0, "mean_expected_depth": 2.0} for k in (3, 4)]
    metrics.write_text(
        "\n".join(json.dumps({"kind": "eval", "step": s, "split": "test_id", "per_difficulty": rows}) for s in (5, 10)),
        encoding="utf-8",
    )
    config = checkpoint_config(step=10, model_config=cfg, policy=policy, policy_options={}, task="mano",
                               task_options=TASK_OPTIONS, train={})
    return write_checkpoint(path, config, model, metrics_source=metrics)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return [make_checkpoint(root / policy, policy) for policy in ("fixed", "anira-e")]


def test_eval_json_and_plots(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", str(checkpoints[0]), "--n", "2", "--seed", "3", "--json", "--out", str(out),
                 "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema_version"] == 1 and data["policy"] == "fixed" and data["step"] == 10
    assert data["label"] == "fixed" and data["seed"] == 3 and data["n_per_difficulty"] == 2
    assert [r["difficulty"] for r in data["per_difficulty"]] == [3, 4, 5, 6]
    assert data["in_distribution"]["metrics"]["cost_ratio"] == 1.0
    m = data["in_distribution"]["metrics"]
    assert m["token_acc"] == pytest.approx(m["n_correct_answer_tokens"] / m["n_answer_tokens"])
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_vs_difficulty.png", "depth_vs_difficulty.png", "eval.json", "token_depths.png",
        "training_dynamics.png",
    ]
    assert json.loads((out / "eval.json").read_text()) == data


def test_eval_table(checkpoints, capsys):
    assert main(["eval", str(checkpoints[1]), "--n", "2", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "mano · policy anira-e" in text
    assert "ID" in text and "OOD" in text and "(5..6)" in text
    assert "tok acc" in text.splitlines()[3]  # the header row


def test_report_cli(checkpoints, tmp_path, capsys):
    eval_json = tmp_path / "e.json"
    assert main(["eval", str(checkpoints[0]), "--n", "2", "--json", "--device", "cpu"]) == 0
    eval_json.write_text(capsys.readouterr().out, encoding="utf-8")
    out = tmp_path / "rep"
    assert main(["report", str(checkpoints[1]), str(eval_json), "--n", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "anira-e" in text and "fixed" in text and "training dynamics" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "/no/such/checkpoint"],
        ["report", "/no/such/checkpoint", "--out", "/tmp/unused-anira-report"],
        ["eval", ".", "--n", "zero"],
        ["eval", ".", "--n", "0"],
    ],
)
def test_user_errors_are_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("anira: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_not_a_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err
