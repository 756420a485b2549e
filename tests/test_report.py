"""The HTML report: self-contained, atomic, extensible; plots render."""

from __future__ import annotations

import base64
import json
import re

import pytest

from anira import build_model, preset_config
from anira.errors import AniraError
from anira.evaluate import EvalResult, evaluate
from anira.plots import read_training_curves, write_plots
from anira.registry import default_registry
from anira.report import REPORT_FILE, RESULTS_FILE, write_report
from anira.task import DifficultyRanges

RANGES = DifficultyRanges(train=(3, 4), test_id=(3, 4), test_ood=(5, 6))


@pytest.fixture(scope="module")
def results() -> list[EvalResult]:
    task = default_registry().task("mano")(ranges=RANGES)
    cfg = preset_config("test", vocab_size=task.vocab_size)
    return [
        evaluate(build_model(cfg, policy, seed=0), task, n_per_difficulty=3, seed=0, label=policy)
        for policy in ("fixed", "anira-o")
    ]


def eval_record(step: int, split: str, ks: range) -> dict:
    """A metrics.jsonl evaluation record in the trainer's schema (docs/training.md)."""
    rows = [{"difficulty": k, "n": 4, "acc": min(1.0, step / (100 * k)), "mean_depth": 1 + step / 1000,
             "mean_expected_depth": 1.0} for k in ks]
    return {"kind": "eval", "step": step, "split": split, "acc": 0.5, "mean_depth": 1.0, "per_difficulty": rows}


def write_metrics(path, steps=(0, 100, 200)) -> None:
    lines = []
    for step in steps:
        lines.append(json.dumps({"kind": "train", "split": "train", "step": step, "loss": 1.0, "mean_depth": 2.0}))
        lines.append(json.dumps(eval_record(step, "test_id", range(3, 5))))
        lines.append(json.dumps(eval_record(step, "test_ood", range(5, 7))))
    path.write_text("\n".join(lines) + '\n{"kind": "eval", "st', encoding="utf-8")  # torn last line


def test_report_is_self_contained(tmp_path, results):
    page = write_report(results, tmp_path / "rep", extra_sections=[("Probes <b>", "<p id=probe>probe table</p>")])
    assert page == tmp_path / "rep" / REPORT_FILE
    text = page.read_text(encoding="utf-8")
    # every image is an embedded PNG; nothing points outside the page
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 2  # the two overlays; per-token depths are HTML, training curves absent here
    assert text.count("<div class=tokens>") >= len(results)  # a token strip per checkpoint
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for forbidden in ("http://", "https://", "<link", "<script", "url(", "@import"):
        assert forbidden not in text
    # summary table names every checkpoint; the extra section comes with an escaped title
    assert "fixed" in text and "anira-o" in text
    assert "Alignment with task features" in text and "<td class=l>execution</td>" in text
    assert "<h2>Probes &lt;b&gt;</h2><p id=probe>probe table</p>" in text
    saved = json.loads((tmp_path / "rep" / RESULTS_FILE).read_text())
    assert [r["label"] for r in saved["results"]] == ["fixed", "anira-o"]
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == [REPORT_FILE, RESULTS_FILE]  # no temp files


def test_report_never_half_written(tmp_path, results, monkeypatch):
    out = tmp_path / "rep"
    first = write_report(results[:1], out).read_bytes()
    with pytest.raises(AniraError):
        write_report(results, out, extra_sections=[("only a title",)])
    import anira.report as report

    def broken(*args, **kwargs):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(report, "render_report", broken)
    with pytest.raises(RuntimeError):
        write_report(results, out)
    assert (out / REPORT_FILE).read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == [REPORT_FILE, RESULTS_FILE]


def test_report_reads_training_metrics_and_eval_json(tmp_path, results):
    ck = tmp_path / "ck"
    ck.mkdir()
    write_metrics(ck / "metrics.jsonl")
    with_ck = EvalResult.from_dict({**results[1].to_dict(), "checkpoint": str(ck), "label": "online"})
    json_file = tmp_path / "fixed.json"
    json_file.write_text(results[0].to_json(), encoding="utf-8")
    text = write_report([json_file, with_ck], tmp_path / "rep").read_text(encoding="utf-8")
    assert 'alt="online: training dynamics"' in text
    assert "no training metrics recorded" in text  # the JSON-file column has no checkpoint
    with pytest.raises(AniraError):
        write_report([], tmp_path / "empty")


def test_training_curves_follow_the_trainer_schema(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl")
    curves = read_training_curves(tmp_path)
    assert set(curves) == {"test_id", "test_ood"}
    assert curves["test_id"].steps[3] == [0, 100, 200]
    assert curves["test_id"].accuracy[3] == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert curves["test_ood"].mean_depth[6] == pytest.approx([1.0, 1.1, 1.2])
    assert read_training_curves(tmp_path / "missing") == {}


def test_write_plots(tmp_path, results):
    write_metrics(tmp_path / "metrics.jsonl")
    paths = write_plots(results[1], tmp_path / "plots", metrics_path=tmp_path)
    assert set(paths) == {"depth_vs_difficulty", "accuracy_vs_difficulty", "token_depths", "training_dynamics"}
    for p in paths.values():
        assert p.read_bytes()[:4] == b"\x89PNG"
    assert "training_dynamics" not in write_plots(results[1], tmp_path / "p2")


def test_report_introduces_the_run_and_links_the_docs(tmp_path, results):
    """The overview says what ran and links the repository's documents with
    relative links that resolve from the report's directory."""
    out = tmp_path / "deep" / "rep"
    text = write_report(results, out).read_text(encoding="utf-8")
    overview = text[text.index('<section id="overview">'):text.index('<section id="summary">')]
    assert "Evaluated <b>2 checkpoints</b>" in overview and "3 fresh test instances per difficulty" in overview
    hrefs = [h for h in re.findall(r'href="([^"]*)"', text) if not h.startswith("#")]
    assert any(h.endswith("docs/findings.md") for h in hrefs)
    assert any(h.endswith("docs/evaluation.md") for h in hrefs)
    for h in hrefs:
        assert not h.startswith("/") and (out / h).resolve().is_file(), h
    # every in-page link has its target
    ids = set(re.findall(r'id="([^"]+)"', text))
    assert {h[1:] for h in re.findall(r'href="(#[^"]*)"', text)} <= ids


def test_report_links_degrade_to_names_without_a_checkout(tmp_path, results, monkeypatch):
    import anira.htmlpage as htmlpage

    monkeypatch.setattr(htmlpage, "find_document", lambda relative, near=(): None)
    text = write_report(results, tmp_path / "rep").read_text(encoding="utf-8")
    assert "<code>docs/findings.md</code> (in the anira repository)" in text
    assert not [h for h in re.findall(r'href="([^"]*)"', text) if not h.startswith("#")]


def test_token_strip_marks_answers_and_wrong_predictions(results):
    from anira.evaluate import Sample
    from anira.report import token_strip

    s = Sample(difficulty=1, tokens=["a", "=", "b", "c"], exit_depth=[1, 3, 2, 9],
               expected_depth=[1.0, 2.5, 2.0, 3.0], answer_mask=[False, True, True, False],
               complexity=[None] * 4, predicted=["x", "b", "z", ""], correct=False)
    chips = re.findall(r"<span class='([^']*)'", token_strip(s, D=4))
    assert chips == ["tok", "tok ans", "tok ans miss", "tok"]  # "b" predicted "z" for "c"
    assert token_strip(s, D=4).count(">4</b>") == 0 and ">9</b>" in token_strip(s, D=4)  # the depth as recorded
