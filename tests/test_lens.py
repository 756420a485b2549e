"""TransformerLens habits on the looped model: the ActivationCache, gradients in
run_with_cache, hook.layer() over the unrolled network, to_tokens / to_string."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import anira
from anira import ActivationCache, build_model, default_registry, preset_config
from anira.cache import stack_iterations
from anira.errors import AniraError
from anira.lens import next_token_loss
from conftest import make_model

_ROOT = Path(__file__).resolve().parents[1]


def test_cache_is_a_dict_with_iteration_shorthand(cfg, tokens):
    model = make_model(cfg, "anira-o")
    out, cache = model.run_with_cache(tokens)
    D = cfg.max_iters
    assert isinstance(cache, ActivationCache) and isinstance(cache, dict)
    for t in range(D):
        assert cache["resid_post", t] is cache[f"loop.{t}.hook_resid_post"]
        assert cache["resid_pre", t] is cache[f"loop.{t}.hook_resid_pre"]
        assert cache["running", t] is cache[f"loop.{t}.hook_running"]
        assert cache["resid_post", t - D] is cache[f"loop.{t}.hook_resid_post"]  # negative: from D
    assert cache["q", 1] is cache["loop.1.core.0.attn.hook_q"]
    assert cache["mlp_out", 0, 0] is cache["loop.0.core.0.hook_mlp_out"]
    assert cache["resid_post", 0, 0] is cache["loop.0.core.0.hook_resid_post"]  # the candidate, before freezing
    assert cache["halt.prob", 0] is cache["halt.hook_prob", 0] is cache["loop.0.halt.hook_prob"]
    assert cache["core.0.attn.hook_z", 1] is cache["loop.1.core.0.attn.hook_z"]
    assert ("resid_post", 1) in cache and ("nonsense", 1) not in cache and "loop.1.hook_resid_post" in cache
    with pytest.raises(AniraError, match="outside 0..3"):
        cache["resid_post", D]
    with pytest.raises(AniraError, match="unknown site 'resid'"):
        cache["resid", 0]
    with pytest.raises(KeyError, match="names_filter"):
        model.run_with_cache(tokens, names_filter="hook_logits")[1]["resid_post", 0]
    assert len(cache) == len(model.run_with_cache(tokens, return_cache_object=False)[1])


def test_core_of_several_layers_needs_the_layer(cfg, tokens):
    import dataclasses

    model = make_model(dataclasses.replace(cfg, n_core=2), "fixed")
    _, cache = model.run_with_cache(tokens)
    assert cache["pattern", 1, 1] is cache["loop.1.core.1.attn.hook_pattern"]
    with pytest.raises(AniraError, match="the core has 2 layers"):
        cache["pattern", 1]
    with pytest.raises(AniraError, match="core layer 2 is outside 0..1"):
        cache["pattern", 1, 2]


def test_stacking_by_name_matches_the_helper(cfg, tokens):
    model = make_model(cfg, "anira-o")
    _, cache = model.run_with_cache(tokens)
    values, running = cache.stack("resid_post")
    ref_values, ref_running = stack_iterations(dict(cache), "hook_resid_post")
    assert torch.equal(values, ref_values) and torch.equal(running, ref_running)
    assert torch.equal(cache.stack_activation("resid_post"), values)
    q, _ = cache.stack("q")
    assert q.shape == (cfg.max_iters, *cache["loop.0.core.0.attn.hook_q"].shape)
    resid = cache.accumulated_resid()
    assert torch.equal(resid[0], cache["loop.0.hook_resid_pre"]) and torch.equal(resid[1:], values)


def test_remove_batch_dim(cfg, tokens):
    model = make_model(cfg, "anira-o")
    _, batch = model.run_with_cache(tokens)
    with pytest.raises(AniraError, match="batch of one"):
        batch.remove_batch_dim()
    with pytest.raises(AniraError, match="batch of one"):
        model.run_with_cache(tokens, remove_batch_dim=True)
    _, one = model.run_with_cache(tokens[:1])
    full = {k: v.clone() for k, v in one.items()}
    assert one.remove_batch_dim() is one and not one.has_batch_dim
    for name, value in one.items():
        assert torch.equal(value, full[name][0])
    values, running = one.stack("resid_post")
    assert values.shape == (cfg.max_iters, tokens.shape[1], cfg.d_model) and running.shape == (cfg.max_iters, tokens.shape[1])
    _, direct = model.run_with_cache(tokens[:1], remove_batch_dim=True)
    assert not direct.has_batch_dim and torch.equal(direct["resid_post", 1], one["resid_post", 1])


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_incl_bwd_caches_the_true_gradients(cfg, tokens, mode):
    """The cached gradients equal autograd's gradient of the same loss with respect
    to the same activations (kept with retain_grad in a plain forward pass)."""
    torch.manual_seed(0)
    model = make_model(cfg, "anira-o").train(mode == "train")
    names = ["prelude.0.hook_resid_post", "loop.0.hook_resid_post", "loop.1.hook_resid_post", "hook_logits"]
    kept = {}

    def keep(value, hook):
        value.retain_grad()
        kept[hook.name] = value
        return value

    torch.manual_seed(1)  # the training path samples exits: the same draws in both passes
    out = model.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names])
    next_token_loss(out, tokens.to(model.device)).backward()
    model.zero_grad()
    torch.manual_seed(1)
    _, cache = model.run_with_cache(tokens, incl_bwd=True, names_filter=names)
    for name in names:
        assert torch.allclose(cache[f"{name}_grad"], kept[name].grad, atol=1e-6), name
    assert cache["resid_post_grad", 1] is cache["loop.1.hook_resid_post_grad"]
    assert all(not t.requires_grad for t in cache.values())


def test_incl_bwd_with_a_chosen_loss_and_a_bad_one(cfg, tokens):
    model = make_model(cfg, "anira-o")
    _, cache = model.run_with_cache(tokens, incl_bwd=True, names_filter="hook_logits",
                                    loss_fn=lambda out, toks: out.logits[0, -1, 3])
    grad = cache["hook_logits_grad"]
    expected = torch.zeros_like(grad)
    expected[0, -1, 3] = 1.0
    assert torch.equal(grad, expected)
    with pytest.raises(AniraError, match="scalar tensor"):
        model.run_with_cache(tokens, incl_bwd=True, loss_fn=lambda out, toks: out.logits)


def test_hook_layer_is_unambiguous(tokens):
    cfg = preset_config("test", vocab_size=24, n_prelude=2, n_core=2, n_coda=2)
    model = make_model(cfg, "anira-o")
    P, C, D = cfg.n_prelude, cfg.n_core, cfg.max_iters
    layer_of = {name: point.layer() for name, point in model.hook_dict.items() if point.location.unrolled is not None}
    # each layer's own sites map to one index, and distinct layers to distinct indices
    own = {}
    for name, index in layer_of.items():
        parts = name.split(".")
        key = tuple(parts[:4]) if parts[0] == "loop" and parts[2] == "core" else tuple(parts[:2])
        if parts[0] == "loop" and parts[2] != "core":
            continue
        own.setdefault(index, set()).add(key)
    assert sorted(own) == list(range(P + D * C + cfg.n_coda))
    assert all(len(keys) == 1 for keys in own.values())
    assert layer_of["prelude.1.attn.hook_q"] == 1
    assert layer_of["loop.0.core.0.attn.hook_q"] == P
    assert layer_of["loop.2.core.1.hook_mlp_out"] == P + 2 * C + 1
    assert layer_of["coda.0.hook_resid_post"] == P + D * C
    assert layer_of["loop.2.hook_resid_pre"] == P + 2 * C and layer_of["loop.2.hook_resid_post"] == P + 2 * C + 1
    loc = model.hook_location("loop.3.core.1.attn.hook_pattern")
    assert (loc.stage, loc.iteration, loc.layer) == ("loop", 3, 1)
    assert model.hook_location("coda.1.hook_resid_pre").stage == "coda"
    for name in ("hook_embed", "hook_logits", "coda.hook_exit_state"):
        with pytest.raises(AniraError, match="belongs to no layer"):
            model.hook_dict[name].layer()
    seen = []
    model.run_with_hooks(tokens, fwd_hooks=[("coda.0.hook_resid_pre", lambda v, hook: seen.append(hook.layer()))])
    assert seen == [P + D * C]


def test_tokens_and_text_through_a_checkpoint_tokenizer():
    model, task = anira.load(_ROOT / "checkpoints" / "mano-anira-o") if _bundled() else _built("mano")
    example = task.sample(2, np.random.default_rng(0), split="test")
    text = task.decode(example.tokens)
    ids = model.to_tokens(text)
    assert ids.shape == (1, len(example)) and ids.dtype == torch.long
    assert torch.equal(ids[0].cpu(), torch.as_tensor(example.tokens))
    assert model.to_string(ids[0]) == text and model.to_string(ids) == [text]
    assert model.to_str_tokens(text) == text.split() == model.to_str_tokens(ids[0])
    batch = model.to_tokens([text, "<bos> 3 <eos>"])
    assert batch.shape == (2, len(example)) and (batch[1, 3:] == 0).all()
    assert model.to_string(batch)[1] == "<bos> 3 <eos>"  # padding dropped
    with pytest.raises(AniraError, match="'banana' is not in the vocabulary"):
        model.to_tokens("<bos> banana")
    with pytest.raises(AniraError, match="outside the vocabulary"):
        model.to_string([99])


def test_a_model_without_tokenizer_says_how_to_get_one(cfg):
    model = make_model(cfg, "fixed")
    with pytest.raises(AniraError, match="no tokenizer.*set_tokenizer"):
        model.to_tokens("<bos>")
    task = default_registry().task("mano")()
    with pytest.raises(AniraError, match="vocabulary is 24"):
        model.set_tokenizer(task)
    fitted = build_model(preset_config("test", vocab_size=task.vocab_size), "fixed", seed=0)
    assert fitted.set_tokenizer(task) is fitted and fitted.tokenizer is task.tokenizer


def _bundled() -> bool:
    return (_ROOT / "checkpoints" / "mano-anira-o" / "config.json").is_file()


def _built(name):
    task = default_registry().task(name)()
    return build_model(preset_config("test", vocab_size=task.vocab_size), "fixed", seed=0).set_tokenizer(task), task


def test_full_depth_hooks_run_the_model_at_depth_d():
    """Patched to run every iteration, an anira-o model computes what the same weights
    compute under the fixed policy (the policy's own parameters aside)."""
    from anira import build_model, preset_config
    from anira.lens import full_depth_hooks

    cfg = preset_config("test", vocab_size=24, max_iters=5)
    adaptive = build_model(cfg, "anira-o", seed=1).eval()
    fixed = build_model(cfg, "fixed", seed=2).eval()
    missing, unexpected = fixed.load_state_dict(adaptive.state_dict(), strict=False)
    assert not missing and all(k.startswith("policy.") for k in unexpected)
    tokens = torch.randint(1, 24, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = adaptive(tokens)
        forced = adaptive.run_with_hooks(tokens, fwd_hooks=full_depth_hooks(5))
        reference = fixed(tokens)
    assert (plain.exit_depth < 5).any()  # the policy alone halts some tokens early
    assert (forced.exit_depth == 5).all()
    assert torch.allclose(forced.logits, reference.logits, atol=1e-5)
    with pytest.raises(AniraError, match="max_iters"):
        full_depth_hooks(0)
