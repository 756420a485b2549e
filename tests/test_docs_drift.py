"""Docs that drifted from the code once: the preset table, references to files
that are not in the repository, and output folders the README writes."""

import re
import subprocess
from pathlib import Path

import pytest

from anira.presets import PRESETS
from anira.registry import build_registry

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = [ROOT / "README.md", ROOT / "checkpoints" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _number(cell: str) -> float:
    """`250k` -> 250000, `60k (stops at 97 %)` -> 60000, `1e-4` -> 0.0001."""
    match = re.match(r"([\d.e-]+)(k?)", cell.strip())
    return float(match.group(1)) * (1000 if match.group(2) else 1)


def test_training_preset_table_matches_the_presets():
    text = (ROOT / "docs" / "training.md").read_text()
    header = "| preset | task | D | d_model | d_ff | max len | batch | LR | gamma / b | steps |"
    table = text[text.index(header):].split("\n\n")[0].splitlines()[2:]
    registry = build_registry(load_entry_points=False, kinds=("task",))
    documented = set()
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name, task, depth, d_model, d_ff, _, batch, lr, _, steps = cells[:10]
        preset = PRESETS[name]
        spec = preset.spec("fixed")
        cfg = spec.model_config(spec.build_task(registry))
        assert (task, int(depth), int(d_model), int(d_ff)) == (preset.task, cfg.max_iters, cfg.d_model, cfg.d_ff), name
        assert (_number(batch), _number(lr), _number(steps)) == \
            (spec.train.batch_size, spec.train.lr, spec.train.steps), name
        documented.add(name)
    assert documented == set(PRESETS)


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_cite_only_what_the_repository_has(path):
    text = path.read_text()
    for missing in ("PAPER.md", "DESIGN.md", "STYLE.md"):
        assert missing not in text, f"{path.name} cites {missing}, which is not in the repository"
    assert not re.search(r"\b[Ii]ssue \d+", text), f"{path.name} mentions a tracker issue by number"
    for link in re.findall(r"\b(docs/[\w.-]+\.md)", text):
        assert (ROOT / link).exists(), f"{path.name} links {link}, which does not exist"


def test_readme_output_folders_are_ignored():
    readme = (ROOT / "README.md").read_text()
    folders = set(re.findall(r"--out ([\w-]+)/", readme))
    assert {"report", "probe", "cmp"} <= folders
    check = subprocess.run(["git", "check-ignore", *[f"{f}/x" for f in sorted(folders)]], cwd=ROOT,
                           capture_output=True, text=True)
    if check.returncode not in (0, 1):  # not a git checkout (e.g. an unpacked sdist)
        pytest.skip(f"git check-ignore failed: {check.stderr.strip()}")
    ignored = {line.split("/")[0] for line in check.stdout.split()}
    assert ignored == folders, f"not in .gitignore: {sorted(folders - ignored)}"


def test_policies_doc_exit_criteria_tables_are_the_scripts_rows():
    """Both exit-criteria tables of docs/policies.md list the (policy, threshold) rows of
    scripts/training_free_exits.py, in order, and the script measures them (at 1 instance
    per difficulty instead of 256, same calls)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("training_free_exits", ROOT / "scripts" / "training_free_exits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    expected = [("fixed", None)] + [(p, t) for p, ts in script.THRESHOLDS.items() for t in ts]
    text = (ROOT / "docs" / "policies.md").read_text()
    section = text[text.index("## Training-free exits"):text.index("## mor-token")]
    assert "python scripts/training_free_exits.py checkpoints/brevo-fixed --n 256" in section
    starts = [m.start() for m in re.finditer(r"^\| policy \| threshold \|", section, flags=re.M)]
    tables = [section[i:].split("\n\n")[0].splitlines()[2:] for i in starts]
    assert len(tables) == 2
    for table in tables:
        documented = [(row.split("|")[1].strip().strip("`"), row.split("|")[2].strip()) for row in table]
        assert len(documented) == len(expected) == 13
        for (name, threshold), (doc_name, doc_threshold) in zip(expected, documented):
            assert name == doc_name
            assert (threshold is None) == (doc_threshold == "—")
            if threshold is not None:
                assert threshold == float(doc_threshold)
    measured = list(script.rows(str(ROOT / "checkpoints" / "brevo-fixed"), n=1, seed=0))
    assert [(r["policy"], r["threshold"]) for r in measured] == expected
    assert measured[0]["mean_exit_depth"] == 6.0 and measured[0]["cost_ratio"] == 1.0
