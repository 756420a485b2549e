"""--set parsing, presets and the spec -> model config mapping."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from anira.training.config import TrainConfig

import test_train_support as support
from anira.errors import AniraError
from anira.presets import PRESETS, get_preset
from anira.registry import default_registry
from anira.training.config import apply_overrides

ROOT = Path(__file__).resolve().parent.parent


def command_spec(argv: list[str], registry):
    """The RunSpec an `anira train ARGV` command line describes, through the CLI's own parser."""
    from anira.cli import build_parser
    from anira.commands.train import build_spec

    return build_spec(build_parser().parse_args(["train", *argv]), registry)


@pytest.fixture(scope="module")
def registry():
    return support.registry()


def test_set_parses_typed_dotted_keys(registry):
    spec = apply_overrides(support.spec("anira-o"), [
        "train.lr=3e-4", "train.steps=7", "train.amp=false", "model.d_model=64", "model.preset=tiny",
        "policy.gamma=0.05", "policy.rule=mean", "task.train=2,3", "task.test_ood=5..6",
    ], registry)
    assert spec.train.lr == 3e-4 and spec.train.steps == 7 and spec.train.amp is False
    assert spec.model == {"max_iters": 3, "d_model": 64} and spec.model_preset == "tiny"
    assert spec.policy_options["gamma"] == 0.05 and spec.policy_options["rule"] == "mean"
    assert spec.task_options == {"train": [2, 3], "test_ood": [5, 6]}
    task = spec.build_task(registry)
    assert task.ranges.train == (2, 3) and task.ranges.test_id == (2, 4)


@pytest.mark.parametrize("item, message", [
    ("train.nope=1", "unknown key 'train.nope'"),
    ("train.steps=ten", "expected an integer"),
    ("train.lr=fast", "expected a number"),
    ("train.amp=maybe", "expected true/false"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("model.width=3", "unknown key 'model.width'"),
    ("model.d_model=1.5", "expected an integer"),
    ("model.preset=huge", "unknown model preset"),
    ("policy.temperature=2", "policy 'anira-o' options are"),
    ("task.train=3", "expected a range"),
    ("task.colour=red", "unknown key 'task.colour'"),
    ("optim.lr=1", "unknown --set section"),
    ("lr=1", "must be dotted"),
    ("train.lr", "expects key=value"),
])
def test_set_errors_are_one_line(registry, item, message):
    with pytest.raises(AniraError, match=message) as info:
        apply_overrides(support.spec("anira-o"), [item], registry)
    assert "\n" not in str(info.value)


def test_fixed_policy_ignores_preset_gamma_but_rejects_explicit_option(registry):
    spec = support.spec("fixed")
    assert spec.effective_policy_options(registry) == {}
    with pytest.raises(AniraError, match="policy 'fixed' options are none"):
        apply_overrides(spec, ["policy.gamma=0.1"], registry)


def test_paper_presets_match_the_paper_table():
    table = {  # docs/paper.md §3: D, d_model, d_ff, max len, batch, LR, gamma, b
        "mano": (14, 256, 1664, 64, 512, 1e-4, 0.1, 1.25),
        "brevo": (6, 512, 2048, 256, 64, 1e-3, 0.1, 2.0),
        "depo": (6, 512, 2048, 256, 64, 3e-4, 0.1, 2.0),
        "lano": (6, 512, 2048, 512, 64, 1e-4, 0.01, 1.0),
    }
    registry = default_registry()
    for task, (D, d, ff, max_len, batch, lr, gamma, b) in table.items():
        spec = get_preset(f"paper-{task}").spec("anira-o")
        cfg = spec.model_config(spec.build_task(registry))
        assert (cfg.max_iters, cfg.d_model, cfg.d_ff) == (D, d, ff), task
        assert spec.model["max_len"] == max_len and cfg.max_len >= max_len
        assert (spec.train.batch_size, spec.train.lr, spec.train.warmup_steps, spec.train.steps) == (batch, lr, 1000, 250_000)
        assert spec.policy_options == {"gamma": gamma, "prior_base": b}


def test_every_preset_builds_for_its_task():
    registry = default_registry()
    for preset in PRESETS.values():
        spec = preset.spec("anira-e")
        task = spec.build_task(registry)
        cfg = spec.model_config(task)
        assert cfg.vocab_size == task.vocab_size
        assert cfg.max_len >= task.max_len(task.ranges.test_ood[1])


def test_unknown_preset():
    with pytest.raises(AniraError, match="unknown preset 'nope'"):
        get_preset("nope")


@pytest.mark.parametrize("name", ["mano-fixed", "mano-anira-e", "mano-anira-o",
                                  "brevo-fixed", "brevo-anira-e", "brevo-anira-o", "depo-fixed", "depo-anira-o"])
def test_the_recorded_command_reproduces_the_bundled_checkpoints_recipe(name, registry):
    """The first line of a bundled checkpoint's train_command.txt, parsed by `anira train`'s
    own parser, describes the recipe its config.json records (only the machine-specific
    device and worker count differ), and that line is `--preset ref-<task>` plus at most
    deliberate `--set` overrides of the recipe (mano-anira-o: the slower decider; DEPO:
    `ref-brevo` with `--task depo` and its layout, on a curriculum-trained network)."""
    task, policy = name.split("-", 1)
    preset = "ref-brevo" if task == "depo" else f"ref-{task}"
    folder = ROOT / "checkpoints" / ("depo" if task == "depo" else "") / name
    recorded = json.loads((folder / "config.json").read_text())["run"]
    argv = shlex.split((folder / "train_command.txt").read_text().splitlines()[0])
    assert argv[:2] == ["anira", "train"]
    spec = command_spec(argv[2:], registry)
    assert (spec.preset, spec.policy) == (preset, policy)
    spec = spec.to_dict()
    for key in ("task", "policy", "task_options", "model_preset", "model"):
        assert spec[key] == recorded[key], key
    if policy != "fixed":
        assert spec["policy_options"] == recorded["policy_options"]
    machine = {"device", "num_workers"}
    if policy == "fixed":  # options that do nothing without a decider (not passed to the fixed run)
        machine |= {"straight_through", "full_depth_steps", "decider_lr_mult"}
    mine = {k: v for k, v in spec["train"].items() if k not in machine}
    # fields added after the checkpoint was trained ran with their defaults' behaviour
    defaults = TrainConfig.from_dict({}).to_dict()
    theirs = {k: recorded["train"].get(k, defaults[k]) for k in defaults if k not in machine}
    assert mine == theirs


@pytest.mark.parametrize("jobs_file", sorted((ROOT / "scripts" / "device").glob("*.json")), ids=lambda p: p.name)
def test_every_device_jobs_file_describes_runs_anira_train_accepts(jobs_file, registry):
    """A typo in a jobs file would cost a device call; each job (and its fallback) must parse
    with `anira train`'s own parser and build its spec, task and model config here."""
    jobs = json.loads(jobs_file.read_text())
    assert jobs and len({j["name"] for j in jobs}) == len(jobs)
    for job in jobs:
        for argv in (job["args"], [*job["args"], *job.get("fallback", [])]):
            spec = command_spec([*argv, "--out", "unused"], registry)
            task = spec.build_task(registry)
            cfg = spec.model_config(task)
            assert cfg.max_len >= task.max_len(task.ranges.test_ood[1]), job["name"]
