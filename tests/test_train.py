"""Training loop: learning, exact resume, stop-and-save, run-directory safety, presets."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import test_train_support as support
from anira import checkpoint as ckpt
from anira.errors import AniraError
from anira.training import Callback, Trainer, train
from anira.training.config import TrainConfig


@pytest.fixture(scope="module")
def registry():
    return support.registry()


def _params(path, registry):
    model, _ = ckpt.load(path, registry=registry)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _strip_timing(records):
    drop = ("elapsed_s", "tokens_per_s", "examples_per_s")
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def test_tiny_training_run_loss_decreases(tmp_path, registry):
    spec = support.spec("fixed", steps=60, batch_size=16, lr=1e-2, warmup_steps=5, eval_every=0,
                        checkpoint_every=0, log_every=5)
    result = train(spec, tmp_path / "run", registry=registry)
    records = [r for r in ckpt.read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    first, last = records[0]["ce"], sum(r["ce"] for r in records[-3:]) / 3
    assert result.status == "completed" and result.step == 60
    assert last < 0.7 * first, (first, last)
    evals = {r["split"]: r for r in result.last_eval}
    assert set(evals) == {"test_id", "test_ood"}
    assert [d["difficulty"] for d in evals["test_id"]["per_difficulty"]] == [2, 3, 4]


@pytest.mark.parametrize("policy", ["anira-o", "anira-e"])
def test_resume_is_bitwise_exact(tmp_path, registry, policy):
    spec = support.spec(policy, steps=6, checkpoint_every=3, eval_every=3)
    train(spec, tmp_path / "full", registry=registry)
    half = dataclasses.replace(spec, train=dataclasses.replace(spec.train, steps=3))
    first = train(half, tmp_path / "split", registry=registry)
    assert first.step == 3
    second = train(spec, tmp_path / "split", resume=True, registry=registry)
    assert second.step == 6
    a, b = _params(tmp_path / "full", registry), _params(tmp_path / "split", registry)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = _strip_timing(ckpt.read_metrics(tmp_path / "full" / "metrics.jsonl"))
    mb = _strip_timing(ckpt.read_metrics(tmp_path / "split" / "metrics.jsonl"))
    assert ma == mb


class _StopAt(Callback):
    def __init__(self, step):
        self.step = step
        self.trainer = None

    def on_start(self, trainer, start_step, total):
        self.trainer = trainer

    def on_step(self, step, record):
        if step == self.step:
            self.trainer.request_stop("test")


def test_stop_request_saves_and_resume_finishes_exactly(tmp_path, registry):
    spec = support.spec("anira-o", steps=5, checkpoint_every=0, eval_every=0)
    stopped = Trainer(spec, tmp_path / "run", registry=registry, callbacks=[_StopAt(2)]).run()
    assert stopped.status == "interrupted" and stopped.step == 2
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-00000002"
    done = train(spec, tmp_path / "run", resume=True, registry=registry)
    assert done.status == "completed" and done.step == 5
    train(spec, tmp_path / "ref", registry=registry)
    a, b = _params(tmp_path / "run", registry), _params(tmp_path / "ref", registry)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_out_dir_with_another_run_is_refused(tmp_path, registry):
    spec = support.spec("fixed", steps=2, checkpoint_every=0, eval_every=0)
    train(spec, tmp_path / "run", registry=registry)
    before = (tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors").read_bytes()
    with pytest.raises(AniraError, match="already holds a training run"):
        train(spec, tmp_path / "run", registry=registry)
    other = dataclasses.replace(spec, train=dataclasses.replace(spec.train, lr=1e-4))
    with pytest.raises(AniraError, match=r"different config \(train.lr"):
        train(other, tmp_path / "run", resume=True, registry=registry)
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors").read_bytes() == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("hi")
    with pytest.raises(AniraError, match="not empty"):
        train(spec, tmp_path / "junk", registry=registry)
    with pytest.raises(AniraError, match="nothing to resume"):
        train(spec, tmp_path / "nothing", resume=True, registry=registry)


def test_resume_may_extend_steps(tmp_path, registry):
    spec = support.spec("fixed", steps=2, checkpoint_every=0, eval_every=0)
    train(spec, tmp_path / "run", registry=registry)
    longer = dataclasses.replace(spec, train=dataclasses.replace(spec.train, steps=4))
    assert train(longer, tmp_path / "run", resume=True, registry=registry).step == 4
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["run"]["train"]["steps"] == 4


def test_keep_checkpoints_prunes_old_ones(tmp_path, registry):
    spec = support.spec("fixed", steps=4, checkpoint_every=1, eval_every=0, keep_checkpoints=2)
    train(spec, tmp_path / "run", registry=registry)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000003", "step-00000004"]


def test_warmup_then_constant_lr():
    cfg = TrainConfig(lr=1e-3, warmup_steps=4)
    assert [cfg.lr_at(s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert TrainConfig(lr=1e-3, warmup_steps=0).lr_at(0) == 1e-3


def test_metrics_schema(tmp_path, registry):
    spec = support.spec("anira-e", steps=2, checkpoint_every=0, eval_every=2, log_every=1)
    train(spec, tmp_path / "run", registry=registry)
    records = ckpt.read_metrics(tmp_path / "run" / "metrics.jsonl")
    train_keys = {"kind", "split", "step", "loss", "ce", "reg", "reg_weight", "lr", "grad_norm", "token_acc", "mean_depth",
                  "mean_expected_depth", "tokens_per_s", "examples_per_s", "elapsed_s", "world_size",
                  "policy_grad_norm", "network_grad_norm", "full_depth", "expected_depth_by_difficulty"}
    eval_keys = {"kind", "split", "step", "acc", "mean_depth", "mean_expected_depth", "per_difficulty", "elapsed_s"}
    assert [set(r) for r in records if r["kind"] == "train"] == [train_keys, train_keys]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [set(r) for r in evals] == [eval_keys, eval_keys]
    assert set(evals[0]["per_difficulty"][0]) == {"difficulty", "n", "acc", "mean_depth", "mean_expected_depth"}


def test_stop_at_acc_ends_the_run_at_the_first_good_eval(tmp_path, registry, monkeypatch):
    from anira.training import loop

    def perfect(model, task, which, sets, batch_size, amp=False):
        return {"split": which, "acc": 1.0, "mean_depth": 1.0, "mean_expected_depth": 1.0, "per_difficulty": []}

    monkeypatch.setattr(loop, "evaluate_range", perfect)
    spec = support.spec("fixed", steps=10, eval_every=2, checkpoint_every=0, stop_at_acc=0.95)
    result = train(spec, tmp_path / "run", registry=registry)
    assert result.status == "target reached" and result.step == 2
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-00000002"


def _slow_rank1_worker(rank: int, world: int, port: int, out: str) -> None:
    # what torchrun would set; rank 1 reaches the run-directory check late (a slow
    # import or device set-up), after rank 0 could already have written run.json
    import os
    import time

    from anira.training import loop

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if rank == 1:
        original = loop.check_run_dir

        def late(*args, **kwargs):
            time.sleep(2.0)
            return original(*args, **kwargs)

        loop.check_run_dir = late
    spec = support.spec("fixed", steps=1, batch_size=4, checkpoint_every=0, eval_every=0, log_every=1,
                        device="cpu")
    train(spec, out, registry=support.registry())


def test_ddp_new_run_does_not_race_on_the_run_directory(tmp_path):
    """Every rank checks that --out is free before rank 0 writes into it."""
    import os
    import socket
    import sys

    import torch.multiprocessing as mp

    if not torch.distributed.is_gloo_available():
        pytest.skip("gloo backend not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sys.path.insert(0, os.path.dirname(__file__))
    mp.spawn(_slow_rank1_worker, args=(2, port, str(tmp_path / "ddp")), nprocs=2, join=True)
    assert ckpt.latest_checkpoint(tmp_path / "ddp").name == "step-00000001"
