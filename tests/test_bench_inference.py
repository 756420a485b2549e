"""`anira bench inference`: the ratios, the per-iteration row scaling and the flags."""

import json

import pytest

from anira.bench.inference import balanced_depths, bench_inference
from anira.cli import main


def test_balanced_depths_hit_the_target_mean_and_include_D():
    depths = balanced_depths(64, 8, 0.5, seed=0)
    assert len(depths) == 64 and min(depths) >= 1 and max(depths) == 8
    assert sum(depths) / 64 == pytest.approx(4.0, abs=1 / 64)


def test_result_holds_ratios_and_row_scaling():
    r = bench_inference(batches=(2,), seq=16, d_model=32, repeats=2, warmup=1, decode_len=4, loop_graphs="off")
    assert r["config"]["loop_graphs"] == "off" and r["config"]["graphs_recorded"] == 0
    from anira.model import FAST_PATH_MIN_TOKENS_CUDA

    assert r["config"]["fast_path_min_tokens"] == {"cuda": FAST_PATH_MIN_TOKENS_CUDA}  # the default, recorded
    row = r["results"][0]
    assert row["ideal_ratio"] == pytest.approx(row["mean_depth"] / 8)
    assert row["core_ratio_over_ideal"] == pytest.approx(row["core"]["median_ratio"] / row["ideal_ratio"])
    assert set(row["row_scaling"]) == {"dense_s", "rows_1_s", "rows_0.5_s", "rows_0.25_s", "rows_0.125_s"}
    assert all(v > 0 for v in row["row_scaling"].values())
    assert r["decode"]["bytes_ratio"] < 1  # the allocation-aware cache is smaller


def test_cli_prints_the_row_scaling_and_takes_graphs(capsys):
    code = main(["bench", "inference", "--batches", "1", "--seq", "16", "--d-model", "32", "--repeats", "1",
                 "--decode-len", "0", "--graphs", "off", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["config"]["loop_graphs"] == "off"
    assert main(["bench", "inference", "--batches", "1", "--seq", "16", "--d-model", "32", "--repeats", "1",
                 "--decode-len", "0"]) == 0
    assert "one iteration, dense" in capsys.readouterr().out


def test_cli_rejects_an_unknown_graph_mode(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "inference", "--graphs", "sometimes"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err
