"""The example pool (train.data_pool) and the regulariser warm-up (train.reg_warmup_steps)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import test_train_support as support
from anira import checkpoint as ckpt
from anira.task import collate
from anira.training import train
from anira.training.config import TrainConfig
from anira.training.data import StepBatches
from anira.training.pool import build_pool, load_or_build_pool, pool_example, step_rows


@pytest.fixture(scope="module")
def registry():
    return support.registry()


@pytest.fixture
def task(registry):
    return support.spec().build_task(registry)


def test_pool_rows_are_the_seeded_examples(task):
    pool = build_pool(task, seed=5, size=300, workers=1)
    rows = np.array([0, 17, 299, 17])
    batch = pool.batch(rows)
    expected = collate([pool_example(task, 5, int(i)) for i in rows])
    for field in ("tokens", "loss_mask", "answer_mask", "question_mask", "lengths", "difficulty"):
        assert np.array_equal(getattr(batch, field), getattr(expected, field)), field
    assert np.array_equal(np.isnan(batch.complexity), np.isnan(expected.complexity))


def test_parallel_build_equals_serial_build(task):
    a = build_pool(task, seed=1, size=5000, workers=1)
    b = build_pool(task, seed=1, size=5000, workers=2)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.difficulty, b.difficulty)


def test_pool_batch_pads_to_a_requested_length(task):
    pool = build_pool(task, seed=0, size=50, workers=1)
    batch = pool.batch(np.arange(4), length=20)
    assert batch.tokens.shape == (4, 20) and not batch.loss_mask[:, 11:].any()


def test_cache_is_reused_and_an_unreadable_file_is_rebuilt(task, tmp_path):
    pool, path = load_or_build_pool(task, {}, seed=0, size=200, workers=1, directory=tmp_path)
    mtime = path.stat().st_mtime_ns
    again, same = load_or_build_pool(task, {}, seed=0, size=200, workers=1, directory=tmp_path)
    assert same == path and path.stat().st_mtime_ns == mtime and np.array_equal(pool.tokens, again.tokens)
    other, other_path = load_or_build_pool(task, {}, seed=1, size=200, workers=1, directory=tmp_path)
    assert other_path != path
    path.write_bytes(b"not a pool")
    rebuilt, _ = load_or_build_pool(task, {}, seed=0, size=200, workers=1, directory=tmp_path)
    assert np.array_equal(rebuilt.tokens, pool.tokens)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_ddp_ranks_slice_the_single_process_batch(task):
    pool = build_pool(task, seed=0, size=100, workers=1)
    whole = StepBatches(task, 0, 8, 0, 1, 0, 5, False, pool)[3]
    halves = [StepBatches(task, 0, 8, r, 2, 0, 5, False, pool)[3] for r in (0, 1)]
    joined = torch.cat([h.tokens[:, : whole.tokens.shape[1]] for h in halves])
    width = max(h.tokens.shape[1] for h in halves)
    assert width <= whole.tokens.shape[1]
    assert torch.equal(joined, whole.tokens[:, : joined.shape[1]])
    assert np.array_equal(step_rows(0, 3, 100, 8), step_rows(0, 3, 100, 8))
    assert not np.array_equal(step_rows(0, 3, 100, 8), step_rows(0, 4, 100, 8))


def test_training_from_a_pool_resumes_exactly(tmp_path, registry, monkeypatch):
    monkeypatch.setenv("ANIRA_CACHE_DIR", str(tmp_path / "cache"))
    spec = support.spec("anira-o", steps=6, checkpoint_every=3, eval_every=3, data_pool=64, num_workers=1)
    train(spec, tmp_path / "full", registry=registry)
    half = dataclasses.replace(spec, train=dataclasses.replace(spec.train, steps=3))
    train(half, tmp_path / "split", registry=registry)
    train(spec, tmp_path / "split", resume=True, registry=registry)
    a, _ = ckpt.load(tmp_path / "full", registry=registry)
    b, _ = ckpt.load(tmp_path / "split", registry=registry)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert len(list((tmp_path / "cache" / "pools").glob("copy-*.npz"))) == 1


def test_reg_warmup_scales_the_regulariser_linearly():
    cfg = TrainConfig(reg_warmup_steps=4)
    assert [cfg.reg_weight_at(s) for s in range(6)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert TrainConfig().reg_weight_at(0) == 1.0


def test_reg_warmup_enters_the_loss(tmp_path, registry):
    spec = support.spec("anira-o", steps=4, checkpoint_every=0, eval_every=0, log_every=1, reg_warmup_steps=4)
    train(spec, tmp_path / "run", registry=registry)
    records = [r for r in ckpt.read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["reg_weight"] for r in records] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert records[0]["reg"] == 0.0 and records[1]["reg"] > 0
    for r in records:
        assert r["loss"] == pytest.approx(r["ce"] + r["reg"], rel=1e-6)


def test_bad_pool_and_warmup_values_are_one_line_errors():
    from anira.errors import AniraError

    with pytest.raises(AniraError, match="data_pool"):
        TrainConfig(data_pool=-1)
    with pytest.raises(AniraError, match="reg_warmup_steps"):
        TrainConfig(reg_warmup_steps=-3)
    with pytest.raises(AniraError, match="compile_mode"):
        TrainConfig(compile_mode="turbo")
