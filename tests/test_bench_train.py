"""anira.bench.train.bench_train: modes side by side, any preset, every policy's loss path."""

from __future__ import annotations

import pytest

from anira.bench.train import bench_train
from anira.errors import AniraError

SMALL = ["model.max_iters=2", "task.train=1,2", "task.test_id=1,2", "task.test_ood=3,3"]


@pytest.mark.parametrize("policy", ["anira-o", "oracle", "pondernet"])
def test_bench_train_on_a_preset_reports_each_mode(policy):
    r = bench_train("smoke", device="cpu", steps=2, warmup=1, policy=policy, modes=("eager",), sets=SMALL, pool=1)
    assert r["config"] == "smoke" and r["policy"] == policy and r["max_iters"] == 2
    (mode,) = r["modes"]
    assert mode["mode"] == "eager" and mode["step_time_s"] > 0 and mode["speedup_vs_first"] == 1.0
    assert mode["tokens_per_s"] == pytest.approx(r["batch"] * r["seq"] / mode["step_time_s"])
    assert mode["mfu"] is None  # no peak known for a CPU


def test_bench_train_bad_names_are_one_line_errors():
    with pytest.raises(AniraError, match="unknown benchmark config 'nope'"):
        bench_train("nope", device="cpu")
    with pytest.raises(AniraError, match="unknown benchmark mode"):
        bench_train("smoke", device="cpu", modes=("turbo",))
