"""``anira probe``: report files, JSON schema, bad input, plugin suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import anira
from anira.checkpoint import checkpoint_config, write_checkpoint
from anira.cli import main
from anira.hookspecs import hookimpl
from anira.probes.builtin_suites import BUILTIN_SUITES, LazySuite
from anira.probes.run import discover_checkpoints
from anira.probes.suites import Requirements, SuiteResult
from anira.probes.verdict import LABELS

FAST = ["--suite", "attribution,decision", "--option", "*.correct_only=false", "--option", "attribution.n_boot=20"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    task = anira.default_registry().task("mano")()
    cfg = anira.preset_config("test", vocab_size=task.vocab_size, max_len=64, max_iters=6)
    model = anira.build_model(cfg, "anira-e", seed=0)
    config = checkpoint_config(step=1, model_config=cfg, policy="anira-e", policy_options={}, task="mano",
                               task_options={}, train={})
    return write_checkpoint(tmp_path_factory.mktemp("ck") / "mano-e", config, model)


def test_probe_writes_json_and_self_contained_html(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["probe", str(ckpt), "--n", "40", "--json", "--out", str(out), *FAST]) == 0
    printed = json.loads(capsys.readouterr().out)
    on_disk = json.loads((out / "probe.json").read_text())
    assert printed == on_disk and printed["schema"] == 2
    r = printed["results"][0]
    assert r["task"] == "mano" and r["policy"] == "anira-e" and r["timing"] == "early"
    assert set(r["suites"]) == {"attribution", "decision"}
    dec = r["suites"]["decision"]
    assert dec["status"] == "ok" and dec["data"]["mode"] == "early"
    assert r["verdict"] in LABELS and r["verdicts"]["decision"] == r["verdict"]
    assert dec["data"]["token_set"] == "question"  # MANO's default token set
    page = (out / "probe_report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2
    import re

    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # random base64 may spell anything
    assert "http" not in text.lower().replace("http-equiv", "")


def test_summary_table_and_too_few_instances(ckpt, capsys):
    assert main(["probe", str(ckpt), "--n", "3", *FAST]) == 0
    text = capsys.readouterr().out
    assert "mano-e" in text and "attribution" in text and "decision" in text
    assert "suite decision skipped: needs at least 5 instances" in text


@pytest.mark.parametrize("argv, message", [
    (["--suite", "attribution,nope"], "unknown probe suite 'nope'"),
    (["--option", "decision.n_splits"], "SUITE.KEY=VALUE"),
    (["--option", "other.k=1", "--suite", "decision"], "is not being run"),
    (["--n", "0"], "--n must be >= 1"),
])
def test_bad_input_is_one_line(ckpt, capsys, argv, message):
    assert main(["probe", str(ckpt), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_no_checkpoint_and_discovery(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("anira.probes.run.discover_checkpoints", lambda root=None: [])
    assert main(["probe"]) == 2
    assert "no bundled checkpoints" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    (tmp_path / "b").mkdir()  # no config.json: not a checkpoint
    assert discover_checkpoints(tmp_path) == [tmp_path / "a"]


class _Broken:
    name = "broken"
    description = "raises inside run"

    def requires(self, context):
        return Requirements()

    def run(self, table, context):
        raise RuntimeError("boom")


class _Counter:
    name = "tokens"
    description = "counts rows: a minimal third-party suite"

    def requires(self, context):
        return Requirements(hidden_sites=("prelude.0.hook_resid_post",))

    def run(self, table, context):
        width = table.hidden("prelude.0.hook_resid_post").shape[1]
        return SuiteResult(name=self.name, headline={"rows": table.n_rows, "d_model": width})


class _Plugin:
    @hookimpl
    def register_probe_suites(self, register):
        register(_Broken())
        register(_Counter())


def test_plugin_suites_run_and_a_broken_one_is_reported(ckpt, tmp_path, monkeypatch, capsys):
    registry = anira.build_registry(load_entry_points=False, extra_plugins=(_Plugin(),))
    assert {"broken", "tokens"} <= set(registry.names("suite"))
    monkeypatch.setattr("anira.registry.default_registry", lambda: registry)
    out = tmp_path / "o"
    rc = main(["probe", str(ckpt), "--n", "6", "--suite", "tokens,broken", "--json", "--out", str(out)])
    assert rc == 1  # a suite failed: non-zero, but the report is complete
    captured = capsys.readouterr()
    suites = json.loads(captured.out)["results"][0]["suites"]
    assert suites["broken"]["status"] == "error" and "RuntimeError: boom" in suites["broken"]["reason"]
    assert suites["tokens"]["headline"]["d_model"] == 32
    assert "suite broken failed" in captured.err
    assert (out / "probe_report.html").is_file()


def test_builtin_handles_match_their_classes():
    for name, description, target in BUILTIN_SUITES:
        handle = LazySuite(name, description, target)
        impl = handle.load()
        assert (impl.name, impl.description) == (name, description)


def test_docs_probes_examples_run():
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "probes.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/probes.md", "exec"), {"__name__": "docs_example"})
