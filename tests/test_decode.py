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
