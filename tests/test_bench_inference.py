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


def test_decoding_reports_the_reference_and_the_static_decoder_side_by_side():
    r = bench_inference(batches=(1,), seq=16, d_model=32, repeats=1, warmup=1, decode_len=6, loop_graphs="off")
    dec = r["decode"]
    assert dec["aware"]["tokens_per_s"] > 0 and dec["full"]["tokens_per_s"] > 0  # the reference's keys stay
    static = dec["static"]
    assert static["graphed"] is False and static["max_len"] == 16  # eager on a CPU; buffers for the model's max_len
    # compiled decoders (tens of seconds to compile on a CPU) and device skipping run on a GPU only
    assert static["compiled"] is False and static["conditional_nodes"] is False
    assert not {"aware_compiled", "compiled_speed_ratio", "aware_skip_device"} & static.keys()
    for layout in ("aware", "full"):
        assert static[layout]["depths_match"] is True and static[layout]["tokens_per_s"] > 0
    # the static aware layout uses one row per iteration run plus the exit row (unless the token ran all D)
    assert static["aware"]["core_kv_entries"] < static["full"]["core_kv_entries"] == 6 * 8
    assert static["aware"]["core_kv_bytes"] < static["full"]["core_kv_bytes"]
    assert static["speed_ratio"] == pytest.approx(static["aware"]["tokens_per_s"] / static["full"]["tokens_per_s"])
    # skipping the iterations no token runs: the same depths and cache entries, fewer iterations;
    # at batch 1 a step runs exactly its token's exit depth
    for layout in ("aware", "full"):
        skip = static[f"{layout}_skip"]
        assert skip["depths_match"] is True and skip["tokens_per_s"] > 0
        assert skip["core_kv_entries"] == static[layout]["core_kv_entries"]
        assert static[layout]["iterations_per_step"] == 8
        assert skip["iterations_per_step"] == pytest.approx(dec["mean_depth"]) and dec["mean_depth"] < 8
    assert static["skip_speed_ratio"] == pytest.approx(
        static["aware_skip"]["tokens_per_s"] / static["full"]["tokens_per_s"])


def test_cli_decodes_in_bfloat16(capsys):
    code = main(["bench", "inference", "--batches", "1", "--seq", "16", "--d-model", "32", "--repeats", "1",
                 "--decode-len", "4", "--dtype", "bfloat16", "--graphs", "off"])
    assert code == 0
    out = capsys.readouterr().out
    assert "(static cache, eager, buffers for 16 tokens): allocation-aware" in out
    assert "(static cache, eager), skipping the iterations no token runs (mean exit depth" in out
    assert "EXIT DEPTHS DIFFER" not in out
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "inference", "--dtype", "float16"])
    assert exit_info.value.code == 2


def test_cli_prints_the_compiled_decoders_where_they_ran(capsys, monkeypatch):
    """On a GPU the benchmark adds the compiled static decoders. Here their compile is left out
    (tens of seconds on a CPU) so that the keys the benchmark writes and the line the CLI
    prints from them meet."""
    import functools

    from anira.bench import inference

    static_decoder = inference.StaticDecoder
    monkeypatch.setattr(inference, "StaticDecoder",
                        lambda *args, compile=False, **kwargs: static_decoder(*args, **kwargs))
    monkeypatch.setattr(inference, "bench_decode", functools.partial(inference.bench_decode, compiled=True))
    code = main(["bench", "inference", "--batches", "1", "--seq", "16", "--d-model", "32", "--repeats", "1",
                 "--decode-len", "4", "--graphs", "off"])
    assert code == 0
    out = capsys.readouterr().out
    assert "(static cache, eager), all D through torch.compile: allocation-aware" in out
    assert "aware/full speed" in out and "EXIT DEPTHS DIFFER" not in out
