"""The README's main job (`anira run`) on a bundled checkpoint, and its trace mode."""

from pathlib import Path

import pytest

from anira.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_trace_shows_every_iteration(capsys):
    assert main(["run", "--trace", "--task", "brevo", "--difficulty", "3"]) == 0
    out = capsys.readouterr().out
    assert "exit depth" in out and "execution cost" in out
    assert sum(line.strip().split(" ")[0].isdigit() for line in out.splitlines()) >= 6  # one row per iteration


@pytest.mark.slow
def test_main_job_on_a_bundled_checkpoint(tmp_path, capsys):
    ckpt = ROOT / "checkpoints" / "brevo-anira-o"
    assert main(["run", str(ckpt), "--n", "4", "--probe-n", "80", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "brevo-anira-o" in out and "report:" in out
    page = (tmp_path / "report.html").read_text()
    assert "<img" in page and "http://" not in page and "https://" not in page


def test_main_job_errors_are_one_line(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anira: error:")
    assert main(["run", str(ROOT / "checkpoints" / "brevo-fixed"), "--suites", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_main_job_in_parallel_equals_one_at_a_time(tmp_path, capsys):
    """--jobs 2 (spawned worker processes) prints the same summary as --jobs 1."""
    ckpts = [str(ROOT / "checkpoints" / name) for name in ("mano-anira-e", "brevo-anira-o")]
    common = ["--n", "4", "--probe-n", "60", "--suites", "decision"]
    tables = []
    for jobs in ("1", "2"):
        assert main(["run", *ckpts, *common, "--jobs", jobs, "--out", str(tmp_path / jobs)]) == 0
        out = capsys.readouterr().out
        tables.append([line for line in out.splitlines() if not line.startswith("report:")])
    assert tables[0] == tables[1]
    assert any(line.startswith("mano-anira-e") for line in tables[0])
    assert main(["run", *ckpts, "--jobs", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_main_job_passes_suite_options_to_the_probes(tmp_path, capsys, monkeypatch):
    """--option reaches probe_checkpoint as `anira probe` resolves it; a bad one fails first."""
    import anira.evaluate
    import anira.probes.run

    seen = {}

    def fake_probe(path, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)  # stop before any probing work: the options are what is tested

    monkeypatch.setattr(anira.evaluate, "evaluate_checkpoint", lambda *a, **k: None)
    monkeypatch.setattr(anira.probes.run, "probe_checkpoint", fake_probe)
    ckpt = str(ROOT / "checkpoints" / "brevo-anira-o")
    with pytest.raises(SystemExit):
        main(["run", ckpt, "--jobs", "1", "--suites", "attribution", "--option", "*.null_permutations=5",
              "--out", str(tmp_path / "ok")])
    assert seen["options"]["attribution"]["null_permutations"] == 5
    assert main(["run", ckpt, "--suites", "attribution", "--option", "attribution.nope=1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["run", ckpt, "--suites", "none", "--option", "*.null_permutations=5",
                 "--out", str(tmp_path / "none")]) == 2
    assert "--option" in capsys.readouterr().err
