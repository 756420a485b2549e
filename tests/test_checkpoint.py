"""Checkpoints: round trip, anira.load, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import anira
import test_train_support as support
from anira import checkpoint as ckpt
from anira.errors import AniraError
from anira.training import train


@pytest.fixture(scope="module")
def registry():
    return support.registry()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, registry):
    out = tmp_path_factory.mktemp("ck") / "run"
    train(support.spec("anira-o", steps=3, checkpoint_every=3, eval_every=0), out, registry=registry)
    return out


@pytest.fixture
def copy(run_dir, tmp_path):
    """A private copy of the run's latest checkpoint, to damage."""
    dest = tmp_path / "ck"
    shutil.copytree(ckpt.latest_checkpoint(run_dir), dest)
    return dest


def test_load_gives_a_hooked_model_and_its_task(run_dir, registry):
    model, task = anira.load(run_dir, registry=registry)
    assert not model.training and task.name == "copy"
    tokens = torch.tensor([[1, 4, 5, 3, 4, 5, 2]])
    logits, cache = model.run_with_cache(tokens)
    assert "loop.0.hook_resid_post" in cache
    again, _ = anira.load(ckpt.latest_checkpoint(run_dir), registry=registry)
    assert torch.equal(model(tokens).logits, again(tokens).logits)


def test_config_json_records_everything(run_dir):
    config = json.loads((ckpt.latest_checkpoint(run_dir) / "config.json").read_text())
    assert config["format"] == "anira-checkpoint" and config["format_version"] == ckpt.FORMAT_VERSION
    assert config["anira_version"] == anira.__version__
    assert "git_commit" in config and config["step"] == 3
    assert config["policy"] == {"name": "anira-o", "options": {"gamma": 0.1, "prior_base": 2.0}}
    assert config["task"]["name"] == "copy" and config["train"]["steps"] == 3
    assert set(config["files"]) == {"model.safetensors", "train_state.safetensors"}


def test_loading_never_unpickles(run_dir, registry, monkeypatch):
    import pickle

    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    anira.load(run_dir, registry=registry)


def test_failed_save_leaves_the_previous_checkpoint_latest(tmp_path, registry, monkeypatch):
    out = tmp_path / "run"
    spec = support.spec("fixed", steps=2, checkpoint_every=0, eval_every=0)
    train(spec, out, registry=registry)
    good = ckpt.latest_checkpoint(out)
    model_before = (good / "model.safetensors").read_bytes()

    real_save = ckpt.save_file

    def save_then_die(tensors, path, metadata=None):
        if path.endswith(ckpt.STATE_FILE):  # the model file is written, then the disk "fails"
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError("disk full")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", save_then_die)
    longer = support.spec("fixed", steps=4, checkpoint_every=0, eval_every=0)
    with pytest.raises(OSError, match="disk full"):
        train(longer, out, resume=True, registry=registry)
    monkeypatch.setattr(ckpt, "save_file", real_save)
    assert ckpt.latest_checkpoint(out) == good
    assert (good / "model.safetensors").read_bytes() == model_before
    leftovers = [p.name for p in (out / "checkpoints").iterdir()]
    assert leftovers == [good.name]  # no half-written directory left behind
    anira.load(out, registry=registry)
    assert train(longer, out, resume=True, registry=registry).step == 4


def test_truncated_weights(copy, registry):
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AniraError, match=r"model\.safetensors: .*bytes but config.json field files\.model\.safetensors\.bytes"):
        anira.load(copy, registry=registry)


def test_truncated_weights_without_digest(copy, registry):
    config = json.loads((copy / "config.json").read_text())
    config.pop("files")
    (copy / "config.json").write_text(json.dumps(config))
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(AniraError, match=r"model\.safetensors: not a readable safetensors file"):
        anira.load(copy, registry=registry)


def test_corrupt_weights_same_size(copy, registry):
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(AniraError, match="sha256"):
        anira.load(copy, registry=registry)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_missing_file(copy, registry, name):
    (copy / name).unlink()
    with pytest.raises(AniraError, match="missing"):
        anira.load(copy, registry=registry)


def test_truncated_config(copy, registry):
    text = (copy / "config.json").read_text()
    (copy / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(AniraError, match=r"config\.json: not valid JSON"):
        anira.load(copy, registry=registry)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(format_version=99), "field 'format_version' is 99"),
    (lambda c: c.update(format="other"), "field 'format'"),
    (lambda c: c.pop("model"), "missing field 'model'"),
    (lambda c: c["model"].update(colour=1), "field 'model': unknown ModelConfig field"),
    (lambda c: c["policy"].update(name="nope"), "field 'policy': unknown policy 'nope'"),
    (lambda c: c["task"].update(name="nope"), "field 'task': unknown task 'nope'"),
    (lambda c: c["model"].update(vocab_size=99), "field 'model.vocab_size' is 99"),
])
def test_bad_config_fields(copy, registry, edit, message):
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(AniraError, match=message):
        anira.load(copy, registry=registry)


def test_weights_that_do_not_match_the_config(copy, registry):
    config = json.loads((copy / "config.json").read_text())
    config["model"]["d_ff"] = 2 * config["model"]["d_ff"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(AniraError, match=r"model\.safetensors: tensor '.*' has shape .* config\.json field 'model'"):
        anira.load(copy, registry=registry)


def test_not_a_checkpoint(tmp_path, registry):
    with pytest.raises(AniraError, match="no such checkpoint"):
        anira.load(tmp_path / "absent", registry=registry)
    with pytest.raises(AniraError, match="not a checkpoint"):
        anira.load(tmp_path, registry=registry)


def test_export_drops_the_training_state(run_dir, tmp_path, registry):
    dest = ckpt.export(run_dir, tmp_path / "export")
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors"]
    anira.load(dest, registry=registry)
    with pytest.raises(AniraError, match="already exists"):
        ckpt.export(run_dir, dest)


def test_export_of_a_config_without_file_digests(run_dir, tmp_path, registry):
    """A config whose "files" is null (e.g. written by hand) still exports, with
    digests computed from the copied weights."""
    src = ckpt.latest_checkpoint(run_dir)
    config = json.loads((src / "config.json").read_text())
    config["files"] = None
    (src / "config.json").write_text(json.dumps(config))
    dest = ckpt.export(src, tmp_path / "export")
    exported = json.loads((dest / "config.json").read_text())
    assert exported["files"]["model.safetensors"]["bytes"] == (dest / "model.safetensors").stat().st_size
    anira.load(dest, registry=registry)
