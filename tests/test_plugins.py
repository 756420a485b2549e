"""The plugin system: built-ins, entry points, broken plugins, ANIRA_LOAD_PLUGINS."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from anira import AniraError, build_model, build_registry, preset_config
from anira.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "anira-fixed-k"


def _fake_distribution(root: Path, dist: str, entry_name: str, module: str, source: str) -> None:
    """Install a plugin the way pip would, as far as entry points are concerned:
    a module plus a .dist-info folder declaring it in the ``anira`` group."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"  # as pip names it
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[anira]\n{entry_name} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("ANIRA_LOAD_PLUGINS", raising=False)
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith(("anira_fixed_k", "broken_", "dup_")):
            del sys.modules[name]


def test_builtins_are_registered():
    registry = build_registry(load_entry_points=False)
    assert {"fixed", "anira-e", "anira-o"} <= set(registry.names("policy"))
    assert registry.entries["policy"]["anira-o"].plugin == "anira.plugins.policies.anira_o"
    assert registry.problems == []


def test_example_plugin_through_entry_point(site):
    _fake_distribution(site, "anira-fixed-k", "fixed-k", "anira_fixed_k", (EXAMPLE / "anira_fixed_k.py").read_text())
    registry = build_registry()
    assert registry.entries["policy"]["fixed-k"].plugin == "fixed-k"
    cfg = preset_config("test", vocab_size=24)
    model = build_model(cfg, "fixed-k", registry=registry, k=2).eval()
    out = model(torch.randint(1, 24, (2, 6)))
    assert (out.exit_depth == 2).all() and out.iterations_run == 2
    with pytest.raises(AniraError, match="k must lie in"):
        build_model(cfg, "fixed-k", registry=registry, k=9)


def test_broken_plugins_are_reported_and_do_not_stop_others(site):
    _fake_distribution(site, "broken-import", "broken-import", "broken_import", "import not_a_module_anywhere\n")
    _fake_distribution(
        site,
        "broken-hook",
        "broken-hook",
        "broken_hook",
        """
        from anira.hookspecs import hookimpl

        @hookimpl
        def register_halting_policies(register):
            register(object())  # no name
        """,
    )
    _fake_distribution(
        site,
        "broken-raise",
        "broken-raise",
        "broken_raise",
        """
        from anira.hookspecs import hookimpl

        @hookimpl
        def register_tasks(register):
            raise RuntimeError("boom")
        """,
    )
    _fake_distribution(
        site,
        "dup-policy",
        "dup-policy",
        "dup_policy",
        """
        from anira.hookspecs import hookimpl
        from anira.plugins.policies.fixed import FixedDepth

        class Impostor(FixedDepth):
            name = "anira-o"

        @hookimpl
        def register_halting_policies(register):
            register(Impostor)
        """,
    )
    _fake_distribution(site, "anira-fixed-k", "fixed-k", "anira_fixed_k", (EXAMPLE / "anira_fixed_k.py").read_text())
    registry = build_registry()
    problems = "\n".join(registry.problems)
    assert "'broken-import' failed to import: ModuleNotFoundError" in problems
    assert "'broken-hook' failed in register_halting_policies" in problems
    assert "'broken-raise' failed in register_tasks: RuntimeError: boom" in problems
    assert "'dup-policy' registers policy 'anira-o' already provided by 'anira.plugins.policies.anira_o'" in problems
    assert all("\n" not in p for p in registry.problems)  # one line each
    # the built-in wins the name, and the healthy plugin still loaded
    assert registry.entries["policy"]["anira-o"].plugin == "anira.plugins.policies.anira_o"
    assert "fixed-k" in registry.names("policy")


def test_load_plugins_env_restricts(site, monkeypatch):
    _fake_distribution(site, "anira-fixed-k", "fixed-k", "anira_fixed_k", (EXAMPLE / "anira_fixed_k.py").read_text())
    monkeypatch.setenv("ANIRA_LOAD_PLUGINS", "")
    assert "fixed-k" not in build_registry().names("policy")
    monkeypatch.setenv("ANIRA_LOAD_PLUGINS", "fixed-k,not-installed")
    registry = build_registry()
    assert "fixed-k" in registry.names("policy")
    assert any("'not-installed' named in ANIRA_LOAD_PLUGINS is not installed" in p for p in registry.problems)
    assert {"fixed", "anira-e", "anira-o"} <= set(registry.names("policy"))  # built-ins always load


def test_plugins_list_cli(capsys):
    assert main(["plugins", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    names = {(e["kind"], e["name"]): e["plugin"] for e in doc["entries"]}
    for policy in ("fixed", "anira-e", "anira-o"):
        assert ("policy", policy) in names
    assert set(doc) == {"plugins", "entries", "problems"}
    assert main(["plugins", "list"]) == 0
    assert "anira-o" in capsys.readouterr().out


def test_hookspecs_are_documented():
    from anira import hookspecs

    doc = (ROOT / "docs" / "plugins.md").read_text()
    specs = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert specs
    for name in specs:
        assert getattr(hookspecs, name).__doc__, name
        assert f"{name}(register)" in doc, f"docs/plugins.md does not document {name}"


def test_docs_plugin_example_is_the_shipped_example():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    assert "class FixedK(HaltingPolicy)" in doc
    assert "class FixedK(HaltingPolicy)" in (EXAMPLE / "anira_fixed_k.py").read_text()


@pytest.mark.slow
def test_non_editable_install_and_example_package(tmp_path):
    """`pip install .` puts plugins and probes under anira/, never top-level, and a
    separately installed plugin package is picked up through its entry point."""
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    build = tmp_path / "src"
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "__pycache__", "runs", ".whl"))
    subprocess.run([*pip, str(build)], check=True)
    # pip builds a local project in place (build/, *.egg-info): build a copy, so
    # the source tree stays clean
    example = tmp_path / "example"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([*pip, str(example)], check=True)
    top = {p.name for p in target.iterdir()}
    assert "anira" in top and "plugins" not in top and "probes" not in top
    assert (target / "anira" / "plugins" / "policies" / "anira_o.py").exists()
    assert (target / "anira" / "probes").is_dir()
    # every package of the source tree was installed
    for init in list((ROOT / "anira").rglob("__init__.py")) + list((ROOT / "plugins").rglob("__init__.py")):
        rel = init.parent.relative_to(ROOT)
        rel = Path("anira", *rel.parts[1:]) if rel.parts[0] == "anira" else Path("anira", *rel.parts)
        assert (target / rel / "__init__.py").exists(), f"{rel} was not installed"
    script = textwrap.dedent(
        """
        import anira, torch, anira.cli
        assert anira.__file__.startswith(%r), anira.__file__
        anira.cli.build_parser()
        reg = anira.build_registry()
        assert not reg.problems, reg.problems
        m = anira.build_model(anira.preset_config("test", vocab_size=9), "fixed-k", registry=reg, k=3).eval()
        print(sorted(reg.names("policy")), m(torch.tensor([[1, 2, 3]])).exit_depth.tolist())
        """
        % str(target)
    )
    env = {k: v for k, v in os.environ.items() if k != "ANIRA_LOAD_PLUGINS"}
    env["PYTHONPATH"] = str(target)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fixed-k" in result.stdout and "[[3, 3, 3]]" in result.stdout


def test_unknown_policy_names_the_plugin_that_failed_to_load(site, monkeypatch, capsys):
    _fake_distribution(site, "my-halting", "my-halting", "broken_my_halting", "import not_a_module_anywhere\n")
    registry = build_registry()
    with pytest.raises(AniraError) as err:
        registry.policy("my-halting")
    message = str(err.value)
    assert "unknown policy 'my-halting'" in message
    assert "'my-halting' failed to import: ModuleNotFoundError" in message and "\n" not in message
    # and so does every command that resolves the name
    from anira.registry import default_registry

    default_registry.cache_clear()
    try:
        code = main(["train", "--preset", "smoke", "--policy", "my-halting", "--out", str(site / "run")])
    finally:
        default_registry.cache_clear()
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "failed to import" in lines[0] and "my-halting" in lines[0]
    assert not (site / "run").exists()  # nothing half-written


def test_a_policy_bug_in_training_is_one_line_and_leaves_no_run_behind(site, capsys):
    """A plugin whose step returns (b,) continue weights: `anira train` prints one line
    naming the plugin and the method, and leaves no run directory, so the same command
    can run again once the plugin is fixed."""
    _fake_distribution(site, "bad-shape", "bad-shape", "broken_bad_shape", """
        import torch
        from anira.hookspecs import hookimpl
        from anira.plugins.policies.fixed import FixedDepth

        class BadShape(FixedDepth):
            name = "bad-shape"

            def step(self, state, h, t, ctx, emit):
                return state, torch.ones(h.shape[0], dtype=h.dtype)

        @hookimpl
        def register_halting_policies(register):
            register(BadShape)
        """)
    from anira.registry import default_registry

    default_registry.cache_clear()
    out = site / "run"
    try:
        code = main(["train", "--preset", "smoke", "--policy", "bad-shape", "--out", str(out),
                     "--set", "train.steps=2", "--set", "train.data_pool=0"])
    finally:
        default_registry.cache_clear()
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("train:")]
    assert code == 2 and len(lines) == 1, lines  # (progress bars aside)
    assert lines[-1].startswith("anira: error: halting policy 'bad-shape' (broken_bad_shape.BadShape): step returned")
    assert not out.exists()


def test_plugins_list_names_the_distribution_and_version(site, capsys):
    _fake_distribution(site, "anira-fixed-k", "fixed-k", "anira_fixed_k", (EXAMPLE / "anira_fixed_k.py").read_text())
    assert main(["plugins", "list", "--json"]) == 0
    entries = {(e["kind"], e["name"]): e for e in json.loads(capsys.readouterr().out)["entries"]}
    import importlib.metadata

    assert (entries[("policy", "fixed-k")]["distribution"], entries[("policy", "fixed-k")]["version"]) == \
        ("anira-fixed-k", "0.1")
    own = ("anira", importlib.metadata.version("anira"))
    for key in (("policy", "anira-o"), ("task", "mano"), ("suite", "decision")):
        assert (entries[key]["distribution"], entries[key]["version"]) == own
    assert main(["plugins", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["kind", "name", "plugin", "distribution"]
    assert any(line.split() == ["policy", "fixed-k", "fixed-k", "anira-fixed-k", "0.1"] for line in table)
