"""Start-up: `anira --help`, `anira tasks ...` and argument errors never import
torch or TransformerLens (importing them takes seconds); the rest import lazily."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformer_lens", "sklearn", "matplotlib")

# Each case runs `anira.cli.main(argv)` in one fresh interpreter, in order, and
# records which heavy modules were loaded after it.
TORCH_FREE = [
    [],
    ["--help"],
    ["train", "--help"],
    ["bench", "hooks", "--help"],
    ["tasks", "list"],
    ["tasks", "list", "--json"],
    ["tasks", "sample", "mano", "--n", "2"],
    ["tasks", "sample", "brevo", "--json"],
    ["tasks", "sample", "depo", "--split", "test"],
    ["tasks", "sample", "lano", "-k", "8"],
    ["tasks", "sample", "mano", "--split", "val"],  # argument errors
    ["eval"],
    ["train", "--bogus"],
    ["bench", "hooks", "--repeats", "x"],
    ["probe", "--threads", "many"],
    ["tasks", "sample", "nope"],  # an error raised by the command itself
]

SCRIPT = """
import contextlib, io, json, sys
from anira.cli import main
heavy = {heavy!r}
loaded = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
    loaded.append([m for m in heavy if m in sys.modules])
print(json.dumps(loaded))
"""


def test_help_tasks_and_argument_errors_import_no_torch():
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(heavy=HEAVY), json.dumps(TORCH_FREE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    for argv, modules in zip(TORCH_FREE, loaded):
        assert modules == [], f"`anira {' '.join(argv)}` imported {modules}"


def test_import_anira_is_light_and_names_still_resolve():
    script = (
        "import sys, anira\n"
        f"assert not [m for m in {HEAVY!r} if m in sys.modules], sorted(sys.modules)\n"
        "from anira import build_model, LossTerms, with_policy\n"
        "assert 'torch' in sys.modules\n"
        "assert set(anira.__all__) <= set(dir(anira))\n"
        "print(build_model.__module__, LossTerms.__module__, with_policy.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["anira.model", "anira.objective", "anira.plugins.policies.exit_criteria"]


def test_every_public_name_resolves():
    import anira

    for name in anira.__all__:
        assert getattr(anira, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        anira.nope  # noqa: B018


def test_tasks_registry_matches_the_full_registry():
    """`anira tasks` loads only the task plugins; it must see the same tasks."""
    from anira.commands.tasks import task_registry
    from anira.registry import build_registry

    full = build_registry()
    tasks_only = build_registry(kinds=("task",))
    assert tasks_only.names("task") == full.names("task") == task_registry().names("task")
    assert tasks_only.names("policy") == [] and tasks_only.names("suite") == []
    for name in full.names("task"):
        assert tasks_only.entries["task"][name] == full.entries["task"][name]
