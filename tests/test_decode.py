"""Autoregressive decoding with the allocation-aware cache equals the full forward."""

import pytest
import torch

from anira import AniraError, build_model, preset_config
from anira import decode

CASES = [("fixed", {}), ("anira-e", {}), ("anira-o", {}), ("pattern", {"depths": [1, 5, 3, 2]})]


@pytest.mark.parametrize("policy, options", CASES)
@pytest.mark.parametrize("full", [False, True])
def test_teacher_forced_decoding_equals_forward(policy, options, full):
    cfg = preset_config("test", vocab_size=24, max_iters=5)
    model = build_model(cfg, policy, seed=3, **options).eval()
    tokens = torch.randint(1, 24, (3, 11), generator=torch.Generator().manual_seed(2))
    out = model(tokens)
    logits, depths, state = decode.teacher_forced(model, tokens, full_cache=full)
    assert torch.allclose(logits, out.logits, atol=1e-5)
    assert torch.equal(depths, out.exit_depth)
    n = tokens.numel()
    if full:
        assert state.core.entries() == n * cfg.max_iters
    else:  # one entry per iteration run, plus the exit state's entry
        assert state.core.entries() == int(out.exit_depth.sum()) + n


def test_cache_memory_follows_mean_depth():
    cfg = preset_config("test", vocab_size=24, max_iters=8)
    model = build_model(cfg, "pattern", depths=[1, 2, 3]).eval()  # mean depth 2 of 8
    tokens = torch.randint(1, 24, (1, 12))
    _, _, aware = decode.teacher_forced(model, tokens)
    _, _, full = decode.teacher_forced(model, tokens, full_cache=True)
    assert aware.core.nbytes() / full.core.nbytes() == pytest.approx((2 + 1) / 8)


def test_generate_greedy_matches_argmax_of_forward():
    cfg = preset_config("test", vocab_size=24, max_iters=4)
    model = build_model(cfg, "anira-o", seed=1).eval()
    prompt = torch.randint(1, 24, (2, 5))
    seq, _ = decode.generate(model, prompt, 4)
    assert seq.shape == (2, 9)
    out = model(seq[:, :-1])
    assert torch.equal(seq[:, 5:], out.logits[:, 4:].argmax(-1))


def test_decoding_rejects_what_it_cannot_do():
    cfg = preset_config("test", vocab_size=24, max_iters=4)
    with pytest.raises(AniraError, match="full-distribution rule"):
        decode.new_state(build_model(cfg, "anira-o", rule="mode"))
    with pytest.raises(AniraError, match="n_core == 1"):
        decode.new_state(build_model(preset_config("test", vocab_size=24, n_core=2), "fixed"))
    with pytest.raises(AniraError, match="max_new_tokens"):
        decode.generate(build_model(cfg, "fixed"), torch.tensor([[1, 2]]), -1)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_single_query_attention_written_out_equals_sdpa(dtype, tol):
    # decoding picks one of the two by dtype (anira.decode.attend_one): they must be one function,
    # with a mask of the positions written so far and without one, at batch > 1
    g = torch.Generator().manual_seed(0)
    q, keys, values = (torch.randn(3, n, 4, 16, generator=g).to(dtype) for n in (1, 10, 10))
    for visible in (torch.arange(10) <= 6, None):
        written = decode.written_one(q, keys, values, visible)
        fused = decode.sdpa_one(q, keys, values, visible)
        assert written.shape == fused.shape == (3, 1, 4, 16) and written.dtype == dtype
        torch.testing.assert_close(written.float(), fused.float(), atol=tol, rtol=tol)
    # a masked key changes nothing: z is the attention over the visible keys alone
    visible = torch.arange(10) <= 6
    alone = decode.written_one(q, keys[:, :7], values[:, :7])
    moved = keys.clone()
    moved[:, 7:] += 100.0
    torch.testing.assert_close(decode.written_one(q, moved, values, visible).float(), alone.float(), atol=tol, rtol=tol)
    # and a hand-computed single head: softmax(q·k / sqrt(e)) weighted sum of values
    scores = torch.einsum("be,bke->bk", q[:, 0, 0].float(), keys[:, :7, 0].float()) / 4.0
    expected = torch.einsum("bk,bke->be", scores.softmax(-1), values[:, :7, 0].float())
    torch.testing.assert_close(alone[:, 0, 0].float(), expected, atol=tol, rtol=tol)


def test_decoding_attends_by_dtype():
    g = torch.Generator().manual_seed(1)
    q, keys, values = (torch.randn(2, n, 2, 8, generator=g) for n in (1, 5, 5))
    assert torch.equal(decode.attend_one(q, keys, values), decode.written_one(q, keys, values))
    q, keys, values = (t.bfloat16() for t in (q, keys, values))
    assert torch.equal(decode.attend_one(q, keys, values), decode.sdpa_one(q, keys, values))
