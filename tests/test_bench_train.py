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


def test_bench_train_times_aligned_and_unaligned_gemms_side_by_side(monkeypatch):
    from anira.aligned import AlignedLinear

    seen = []  # (layer width, its aligned flag) at every product the benchmark ran
    original = AlignedLinear.forward

    def spy(self, x):
        seen.append((self.out_features, self.aligned))
        return original(self, x)

    monkeypatch.setattr(AlignedLinear, "forward", spy)
    r = bench_train("smoke", device="cpu", steps=2, warmup=0, policy="anira-o", modes=("eager",),
                    gemms=("unaligned", "aligned"), sets=SMALL, pool=1)
    assert r["gemms"] == ["unaligned", "aligned"]
    assert [(m["mode"], m["gemms"]) for m in r["modes"]] == [("eager", "unaligned"), ("eager", "aligned")]
    assert r["modes"][0]["speedup_vs_first"] == 1.0
    assert r["modes"][1]["speedup_vs_first"] == pytest.approx(r["modes"][0]["step_time_s"] / r["modes"][1]["step_time_s"])
    # two steps of each run, alternating: the unembedding (vocab 30) and the decider (one output)
    # ran once unaligned and once aligned per step
    assert sorted(set(seen)) == [(1, False), (1, True), (30, False), (30, True)]
    flags = [aligned for width, aligned in seen if width == 30]
    assert flags == [False, True, False, True]


def test_bench_train_bad_gemm_layouts_are_one_line_errors():
    with pytest.raises(AniraError, match="unknown GEMM layout"):
        bench_train("smoke", device="cpu", gemms=("fast",))
    with pytest.raises(AniraError, match="named only once"):
        bench_train("smoke", device="cpu", gemms=("aligned", "aligned"))


def test_bench_train_command_reports_both_layouts(capsys):
    import json

    from anira.cli import main

    sets = [arg for s in SMALL for arg in ("--set", s)]
    argv = ["bench", "train", "--device", "cpu", "--config", "smoke", "--steps", "1", "--warmup", "0",
            "--gemms", "unaligned,aligned", *sets]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[1:]] == [["eager,", "unaligned", "GEMMs"], ["eager,", "aligned", "GEMMs"]]
    assert main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["schema"] == 4
    assert [m["gemms"] for m in printed["results"][0]["modes"]] == ["unaligned", "aligned"]


def test_bench_train_times_padded_and_packed_rows_of_the_same_examples():
    r = bench_train("smoke", device="cpu", steps=2, warmup=0, policy="anira-o", modes=("eager",),
                    layouts=("padded", "packed"), sets=SMALL, pool=2, seq_len=64)
    padded, packed = r["modes"]
    assert (padded["layout"], packed["layout"]) == ("padded", "packed") and r["layouts"] == ["padded", "packed"]
    assert padded["rows"] == r["batch"] and packed["rows"] < padded["rows"]
    # tokens/s counts examples x seq in both layouts; the computed positions differ
    for m in (padded, packed):
        assert m["tokens_per_s"] == pytest.approx(r["batch"] * r["seq"] / m["step_time_s"])
        assert m["computed_tokens_per_s"] == pytest.approx(m["rows"] * r["seq"] / m["step_time_s"])
    with pytest.raises(AniraError, match="unknown batch layout"):
        bench_train("smoke", device="cpu", layouts=("ragged",))
