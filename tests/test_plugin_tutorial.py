"""docs/plugins.md's tutorial, end to end and in its order: write the policy package
from the doc's files, pip install it, `anira plugins list`, train with
`--set policy.<option>`, eval, probe, and the package's own contract check.

The commands are the doc's, with arguments appended that make them small (fewer
steps and instances; the probe suites use unsolved instances too, since a run of
a few dozen steps solves none)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from anira.cli import main
from anira.registry import default_registry
from anira.training.rundir import read_run_spec

ROOT = Path(__file__).resolve().parents[1]

#: appended to each tutorial command: the same path, at test size
SHORTER = {
    "plugins": [],
    "train": ["--steps", "30", "--set", "train.data_pool=0", "--set", "train.eval_examples=4",
              "--set", "train.checkpoint_every=30", "--quiet"],
    "eval": ["--n", "8", "--json"],
    "probe": ["--n", "60", "--json", "--option", "attribution.correct_only=false",
              "--option", "decision.correct_only=false"],
}


def _tutorial() -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return text[text.index("## Tutorial: from a halting idea to a probed plugin"):]


def _files(text: str) -> dict[str, str]:
    """The code blocks that open with `# <file name>`."""
    files = {}
    for body in re.findall(r"```(?:python|toml)\n(.*?)```", text, flags=re.S):
        first, _, rest = body.partition("\n")
        match = re.fullmatch(r"# ([\w.-]+\.(?:py|toml))", first.strip())
        if match:
            files[match.group(1)] = body
    return files


def _can_build_here() -> bool:
    """Whether this environment's setuptools can build the package without fetching
    build requirements (>= 69 as the doc's pyproject asks, and a bdist_wheel: built in
    from 70.1, else the `wheel` package)."""
    try:
        version = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    if version < (69, 0):
        return False
    try:
        importlib.metadata.version("wheel")
        return True
    except importlib.metadata.PackageNotFoundError:
        return version >= (70, 1)


def _pip_install(argv: list[str], target: Path, cwd: Path) -> None:
    assert argv[:2] == ["pip", "install"]
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *argv[2:]]
    if _can_build_here():
        cmd.insert(4, "--no-build-isolation")  # otherwise pip fetches setuptools for an isolated build
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture
def clean_plugins(monkeypatch):
    monkeypatch.delenv("ANIRA_LOAD_PLUGINS", raising=False)
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()
    for name in [m for m in sys.modules if m.startswith("anira_linear_exit")]:
        del sys.modules[name]


@pytest.mark.slow
def test_the_plugin_tutorial_runs_end_to_end(tmp_path, monkeypatch, capsys, clean_plugins):
    tutorial = _tutorial()
    files = _files(tutorial)
    assert set(files) == {"anira_linear_exit.py", "pyproject.toml", "test_linear_exit.py"}
    package = tmp_path / "anira-linear-exit"
    package.mkdir()
    for name, body in files.items():
        (package / name).write_text(body)
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", tutorial, flags=re.S)
                for line in block.strip().splitlines()]
    assert [c.split()[:2] for c in commands] == [
        ["pip", "install"], ["anira", "plugins"], ["anira", "train"], ["anira", "eval"], ["anira", "probe"]]

    monkeypatch.chdir(tmp_path)
    site = tmp_path / "site"
    outputs = {}
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "pip":
            _pip_install(argv, site, tmp_path)
            monkeypatch.syspath_prepend(str(site))  # as if installed into this environment
            default_registry.cache_clear()
            continue
        assert argv[0] == "anira"
        code = main(argv[1:] + SHORTER[argv[1]])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        outputs[argv[1]] = captured.out

    # 3. the entry is listed with its distribution and version
    rows = [line.split() for line in outputs["plugins"].splitlines()]
    assert ["policy", "linear-exit", "linear-exit", "anira-linear-exit", "0.1.0"] in rows
    # 4. the option given with --set is recorded with the run and used by eval and probe
    train = shlex.split(commands[2])
    run_dir = tmp_path / train[train.index("--out") + 1]
    spec = read_run_spec(run_dir)
    assert spec.policy == "linear-exit" and spec.policy_options["cost"] == 0.01
    evaluated = json.loads(outputs["eval"])
    assert evaluated["policy"] == "linear-exit" and evaluated["per_difficulty"]
    depth = evaluated["in_distribution"]["metrics"]["mean_exit_depth"]
    assert 1 <= depth <= evaluated["max_iters"]
    probed = json.loads(outputs["probe"])
    suites = probed["results"][0]["suites"]
    assert {"attribution", "decision"} <= set(suites)
    assert all(s["status"] == "ok" for s in suites.values()), suites
    probe_out = shlex.split(commands[4])
    assert (tmp_path / probe_out[probe_out.index("--out") + 1] / "probe.json").exists()
    # 5. the package's own contract test
    namespace: dict = {}
    exec(compile(files["test_linear_exit.py"], "test_linear_exit.py", "exec"), namespace)  # noqa: S102
    namespace["test_linear_exit_keeps_the_contract"]()
