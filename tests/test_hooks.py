"""Hook points: the catalogue in docs/hooks.md, caching, stacking and patching."""

import re
from pathlib import Path

import pytest
import torch

from anira import AniraError, preset_config
from anira.cache import names_filter_for, stack_iterations
from conftest import POLICIES, make_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"


def _catalogue():
    """(policy or None, name, shape) rows from the tables of docs/hooks.md."""
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.append((None, cells[0].strip("`"), cells[1]))
        elif len(cells) == 4 and cells[0].startswith("`"):
            name = cells[1].strip("`") if cells[1].startswith("`") else None  # "—": no signals
            rows.append((cells[0].strip("`"), name, cells[2]))
    return rows


def _expand(name, cfg):
    names = [name]
    for key, n in (("{t}", cfg.max_iters), ("{l}", None)):
        out = []
        for nm in names:
            if key not in nm:
                out.append(nm)
                continue
            if n is None:  # the layer count depends on the stage
                stage = nm.split(".")[0] if not nm.startswith("loop.") else "core"
                n = {"prelude": cfg.n_prelude, "core": cfg.n_core, "coda": cfg.n_coda}[stage]
            out.extend(nm.replace(key, str(i)) for i in range(n))
            n = None if key == "{l}" else n
        names = out
    return names


def _expected(cfg, policy):
    expected = {}
    for pol, name, shape in _catalogue():
        if pol not in (None, policy) or name is None:
            continue
        for full in _expand(name, cfg):
            if policy == "anira-o" and full.startswith(f"loop.{cfg.max_iters - 1}.halt."):
                continue  # no signal at the last depth (documented)
            expected[full] = shape
    return expected


def _shape(shape_text, cfg, b, p):
    sizes = {"b": b, "p": p, "d": cfg.d_model, "h": cfg.n_heads, "e": cfg.d_head, "V": cfg.vocab_size, "D": cfg.max_iters}
    return tuple(sizes[s.strip()] for s in shape_text.strip("()").split(","))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("layers", [(1, 1, 1), (2, 2, 1)])
def test_catalogue_matches_model(policy, layers):
    cfg = preset_config("test", vocab_size=24, n_prelude=layers[0], n_core=layers[1], n_coda=layers[2])
    model = make_model(cfg, policy)
    model.stop_when_all_exited = False  # every site fires
    expected = _expected(cfg, policy)
    assert set(model.hook_dict) == set(expected) | {
        f"loop.{cfg.max_iters - 1}.halt.hook_{s}" for s in model.policy.step_signals if policy == "anira-o"
    }
    tokens = torch.randint(1, 24, (2, 7))
    _, cache = model.run_with_cache(tokens)
    assert set(cache.keys()) == set(expected)
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == _shape(shape, cfg, 2, 7), name


def test_catalogue_lists_every_builtin_policy():
    from anira import build_registry

    documented = {pol for pol, _, _ in _catalogue() if pol}
    builtin = {r.name for r in build_registry(load_entry_points=False).rows() if r.kind == "policy"}
    assert builtin <= documented


@pytest.mark.parametrize("policy", POLICIES)
def test_every_loop_prefix_is_cached_even_after_early_stop(cfg, tokens, policy):
    model = make_model(cfg, policy, seed=1)
    out, cache = model.run_with_cache(tokens)
    for t in range(cfg.max_iters):
        assert f"loop.{t}.hook_resid_post" in cache
        assert f"loop.{t}.hook_running" in cache
    running = torch.stack([cache[f"loop.{t}.hook_running"] for t in range(cfg.max_iters)])
    assert torch.equal(running, out.running)
    assert torch.equal(cache["coda.hook_exit_depth"], out.exit_depth)


def test_stack_iterations(cfg, tokens):
    model = make_model(cfg, "anira-o", seed=2)
    out, cache = model.run_with_cache(
        tokens, names_filter=names_filter_for("hook_resid_post", "halt.hook_prob", max_iters=cfg.max_iters)
    )
    states, running = stack_iterations(cache, "hook_resid_post")
    assert states.shape == (cfg.max_iters, *tokens.shape, cfg.d_model)
    assert torch.equal(running, out.running)
    probs, prob_running = stack_iterations(cache, "halt.hook_prob")
    assert probs.shape == (cfg.max_iters, *tokens.shape)
    assert not prob_running[-1].any()  # anira-o emits nothing at depth D
    with pytest.raises(AniraError, match="hook_running"):
        stack_iterations({k: v for k, v in cache.items() if "running" not in k}, "hook_resid_post")
    with pytest.raises(AniraError, match="no iteration"):
        stack_iterations(cache, "core.0.hook_mlp_out")


def test_patching_an_iteration_changes_what_follows(cfg, tokens):
    model = make_model(cfg, "fixed", seed=3)
    base, base_cache = model.run_with_cache(tokens)

    def scale(value, hook):
        return value * 3.0

    with model.hooks(fwd_hooks=[("loop.1.hook_resid_post", scale)]):
        patched, cache = model.run_with_cache(tokens)
    assert torch.allclose(cache["loop.0.hook_resid_post"], base_cache["loop.0.hook_resid_post"])
    assert torch.allclose(cache["loop.2.hook_resid_pre"], 3 * base_cache["loop.1.hook_resid_post"])
    assert not torch.allclose(cache["loop.3.hook_resid_post"], base_cache["loop.3.hook_resid_post"])
    assert not torch.allclose(patched.logits, base.logits)
    # hooks are temporary
    again = model(tokens)
    assert torch.allclose(again.logits, base.logits, atol=1e-5)


def test_patching_a_halting_signal_changes_exits(cfg, tokens):
    model = make_model(cfg, "anira-o", seed=3, init_bias=-10.0)  # alpha ~ 0: run to D
    assert (model(tokens).exit_depth == cfg.max_iters).all()

    def halt_now(value, hook):
        return torch.ones_like(value)

    out = model.run_with_hooks(tokens, fwd_hooks=[("loop.1.halt.hook_prob", halt_now)])
    assert (out.exit_depth == 2).all()

    def stop_first_token(value, hook):
        value = value.clone()
        value[:, 0] = False
        return value

    out = model.run_with_hooks(tokens, fwd_hooks=[("loop.2.hook_running", stop_first_token)])
    assert (out.exit_depth[:, 0] == 2).all() and (out.exit_depth[:, 1:] == cfg.max_iters).all()


def test_early_decider_patch(cfg, tokens):
    model = make_model(cfg, "anira-e", seed=3)

    def prefer_depth_3(value, hook):
        out = torch.full_like(value, -10.0)
        out[..., 2] = 10.0
        return out

    out = model.run_with_hooks(tokens, fwd_hooks=[("halt.hook_logits", prefer_depth_3)])
    assert (out.exit_depth == 3).all()


def test_hooks_bypassed_give_the_same_function(cfg, tokens):
    for policy in POLICIES:
        model = make_model(cfg, policy, seed=4)
        a = model(tokens)
        model.hook_points_enabled = False
        b = model(tokens)
        assert torch.allclose(a.logits, b.logits, atol=1e-6)
        assert torch.equal(a.exit_depth, b.exit_depth)


def test_explicit_pattern_equals_fused_attention(cfg, tokens):
    model = make_model(cfg, "anira-o", seed=6)
    fused = model(tokens)
    explicit, _ = model.run_with_cache(tokens)  # caching the pattern forces the explicit path
    assert torch.allclose(fused.logits, explicit.logits, atol=1e-5)
    assert torch.equal(fused.exit_depth, explicit.exit_depth)


def test_docs_examples_run():
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert code, "docs/hooks.md has python examples"
    namespace: dict = {}
    for block in code:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own docs
