"""DDP: two gloo processes on CPU give the same model as one process with the same
global batch (the trainer weights each rank's loss by its share of the global
token counts, so the averaged gradient is the global batch's gradient)."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

import test_train_support as support
from anira import checkpoint as ckpt
from anira.training import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, steps: int, pack_length: int = 0) -> None:
    # what torchrun would set
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    spec = support.spec("fixed", steps=steps, batch_size=8, checkpoint_every=0, eval_every=0, log_every=1,
                        device="cpu", pack_length=pack_length)
    train(spec, out, registry=support.registry())


# packed: each rank packs its own examples (so the ranks' row counts and token counts
# differ); the result must still be the single process's padded run
@pytest.mark.parametrize("pack_length", [0, 48])
def test_two_gloo_processes_match_one_process(tmp_path, pack_length):
    if not torch.distributed.is_gloo_available():
        pytest.skip("gloo backend not available")
    steps = 4
    port = _free_port()
    # the test helpers live next to this file; spawned children import them by path
    sys.path.insert(0, os.path.dirname(__file__))
    mp.spawn(_worker, args=(2, port, str(tmp_path / "ddp"), steps, pack_length), nprocs=2, join=True)
    spec = support.spec("fixed", steps=steps, batch_size=8, checkpoint_every=0, eval_every=0, log_every=1,
                        device="cpu")
    train(spec, tmp_path / "single", registry=support.registry())
    registry = support.registry()
    a, _ = ckpt.load(tmp_path / "ddp", registry=registry)
    b, _ = ckpt.load(tmp_path / "single", registry=registry)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)
    # the logged global loss agrees too, and the DDP run records its world size
    ra = [r for r in ckpt.read_metrics(tmp_path / "ddp" / "metrics.jsonl") if r["kind"] == "train"]
    rb = [r for r in ckpt.read_metrics(tmp_path / "single" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["world_size"] for r in ra] == [2] * steps
    for x, y in zip(ra, rb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
    # the initial weights changed (the test would be vacuous otherwise)
