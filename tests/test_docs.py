"""The README: its python example runs as written, and it opens with the two
set-up commands that CI runs (docs/hooks.md's examples: tests/test_hooks.py;
docs/probes.md's: tests/test_probe_cli.py)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_examples_run(path):
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"{path.name} has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)  # noqa: S102 - our own docs


def test_readme_opens_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].endswith("anira run")
    ci = (ROOT / ".ci" / "run").read_text()
    assert first_block[1] in ci  # CI runs the README's test command verbatim


def test_training_docs_example_runs(tmp_path, monkeypatch):
    """docs/training.md's Python example, shortened to a few steps (same calls)."""
    text = (ROOT / "docs" / "training.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)[:1]
    assert '"train.steps=500"' in block
    block = block.replace('"train.steps=500"', '"train.steps=3", "train.data_pool=0", "train.eval_examples=2"')
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "docs/training.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert namespace["result"].step == 3 and namespace["task"].name == "brevo"
