"""A hook patch means the same on every execution path (docs/hooks.md, "Patching").

The reference is the freeze equation run on every token for all D iterations (the
training path). Inference may skip frozen tokens (the fast path), run iterations as
CUDA graphs (here the graphs' static buffers on a CPU), take the masked path (a core
hook is attached) and stop the loop early: the logits, the running masks and the exit
depths must not depend on which. ``exit_depth`` counts the iterations a token ran.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from anira import load, preset_config
from anira.task import collate
from conftest import make_model

REPO = Path(__file__).resolve().parents[1]
# exit depths per position (cycled): several tokens stop early, one runs all D = 6
PATTERN = [6, 1, 3, 2, 5, 4, 2, 1, 1, 3, 2, 2]


def _noop(value, hook):
    return None


def _configure(model, path):
    """Select an execution path; returns the extra hooks it needs."""
    model.eval()
    model.fast_path_min_tokens = {}
    model.stop_when_all_exited = True
    model.fast_inference = path in ("fast", "fast-graphs")
    model.loop_graphs = "static" if path.endswith("graphs") else "off"
    if path == "train":
        model.train()
    if path == "no-early-stop":
        model.stop_when_all_exited = False
    # a do-nothing hook on a core site switches inference to the masked path
    return [("loop.0.core.0.hook_mlp_out", _noop)] if path == "core-hooked" else []


INFERENCE_PATHS = ["fast", "fast-graphs", "masked", "masked-graphs", "core-hooked", "no-early-stop"]


def _run(model, tokens, path, hooks, **kwargs):
    extra = _configure(model, path)
    with torch.no_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=hooks + extra, **kwargs)
    model.eval()
    return out


def _same(a, b, what):
    assert torch.equal(a.running, b.running), what
    assert torch.equal(a.exit_depth, b.exit_depth), what
    assert torch.allclose(a.logits, b.logits, atol=2e-5, rtol=1e-5), what


def _set(t, fn):
    return (f"loop.{t}.hook_running", fn)


def _force(value, positions=None):
    def patch(running, hook):
        running = running.clone()
        if positions is None:
            running[:] = value
        else:
            running[:, positions] = value
        return running
    return patch


def _zero_state(positions):
    def patch(state, hook):
        state = state.clone()
        state[:, positions] = 0
        return state
    return patch


def _scale_in_place(value, hook):  # edits its argument and returns nothing
    value.mul_(0.5)


PATCHES = {
    "none": [],
    "zero state after everyone exited": [("loop.5.hook_resid_post", _zero_state(slice(None)))],
    "restart stopped tokens": [_set(t, _force(True)) for t in range(3, 6)],
    "stop tokens early": [_set(1, _force(False, [0, 4, 5]))],
    "hold back at t=0": [_set(0, _force(False, [2, 7]))],
    "restart one iteration only": [_set(4, _force(True, [1, 8]))],
    "frozen token's state edited": [("loop.3.hook_resid_pre", _zero_state([1, 7]))],
    "state edited in place": [("loop.2.hook_resid_post", _scale_in_place)],
}


@pytest.fixture
def pattern_model():
    cfg = preset_config("test", vocab_size=24, max_iters=6, max_len=64)
    return make_model(cfg, "pattern", seed=4, depths=PATTERN)


@pytest.fixture
def tokens():
    return torch.randint(1, 24, (3, 12), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("patch", list(PATCHES))
def test_a_patch_means_the_same_on_every_path(pattern_model, tokens, patch):
    hooks = PATCHES[patch]
    reference = _run(pattern_model, tokens, "train", hooks)  # every token, every iteration
    for path in INFERENCE_PATHS:
        _same(_run(pattern_model, tokens, path, hooks), reference, f"{patch}: {path}")
    assert torch.equal(reference.exit_depth, reference.running.sum(0))
    if patch != "none":  # the patch really changed something
        plain = _run(pattern_model, tokens, "train", [])
        assert not torch.allclose(reference.logits, plain.logits)


@pytest.mark.parametrize("policy", ["anira-o", "anira-e"])
def test_learned_policies_agree_across_paths_under_patches(policy, tokens):
    cfg = preset_config("test", vocab_size=24, max_iters=6, max_len=64)
    model = make_model(cfg, policy, seed=2)
    for patch in ("restart stopped tokens", "zero state after everyone exited", "frozen token's state edited"):
        hooks = PATCHES[patch]
        results = {path: _run(model, tokens, path, hooks) for path in INFERENCE_PATHS}
        for path, out in results.items():
            _same(out, results["masked"], f"{policy}, {patch}: {path}")
        # training with the same (forced) exits computes the same function
        depths = _run(model, tokens, "masked", []).exit_depth
        forced = {path: _run(model, tokens, path, hooks, exit_depths=depths) for path in ("train", "fast", "masked")}
        _same(forced["fast"], forced["train"], f"{policy}, {patch}, forced: fast")
        _same(forced["masked"], forced["train"], f"{policy}, {patch}, forced: masked")


def test_exit_depth_counts_the_iterations_a_token_ran(pattern_model, tokens):
    """A token ran at iteration t iff its state changed there (the core's update is
    never exactly zero for these weights)."""
    hooks = PATCHES["restart stopped tokens"] + PATCHES["stop tokens early"]
    for path in INFERENCE_PATHS:
        extra = _configure(pattern_model, path)
        with torch.no_grad():
            with pattern_model.hooks(fwd_hooks=hooks + extra):
                out, cache = pattern_model.run_with_cache(tokens)
        changed = torch.stack([
            (cache[f"loop.{t}.hook_resid_post"] != cache[f"loop.{t}.hook_resid_pre"]).any(-1)
            for t in range(6)])
        assert torch.equal(changed, out.running), path
        assert torch.equal(out.exit_depth, changed.sum(0)), path


def test_the_issue_cases_on_a_bundled_checkpoint():
    """On checkpoints/mano-anira-o: zeroing the state at the first iteration after every
    token has exited changes the output, and forcing tokens to run from t = 3 on gives the
    same logits and truthful depths on the fast and the masked path."""
    model, task = load(REPO / "checkpoints" / "mano-anira-o")
    rng = np.random.default_rng(0)
    # the easiest expressions: every token of these exits before the last iteration
    examples = [task.sample(task.ranges.test_id[0], rng, split="test") for _ in range(8)]
    tokens = torch.from_numpy(collate(examples).tokens)
    with torch.no_grad():
        plain = model(tokens)
        after = plain.iterations_run
        assert after < model.cfg.max_iters
        zeroed = model.run_with_hooks(tokens, fwd_hooks=[(f"loop.{after}.hook_resid_post",
                                                          _zero_state(slice(None)))])
        assert (zeroed.logits - plain.logits).abs().max() > 1e-3
        restart = [_set(t, _force(True)) for t in range(3, model.cfg.max_iters)]
        fast = model.run_with_hooks(tokens, fwd_hooks=restart)
        masked = model.run_with_hooks(tokens, fwd_hooks=restart + [("loop.0.core.0.hook_mlp_out", _noop)])
    _same(fast, masked, "restart on the checkpoint")
    assert (fast.exit_depth >= model.cfg.max_iters - 3).all()
