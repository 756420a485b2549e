"""The training options that address the deciders' collapse (docs/deciders.md), and
the gradient estimators used to diagnose it (anira.gradients)."""

import time

import pytest
import torch

from anira import checkpoint as ckpt
from anira import preset_config
from anira.gradients import estimate_gradients, exit_log_prob
from anira.objective import compute_loss
from anira.training import Callback, train
from anira.training.config import TrainConfig
from conftest import make_model


def _stopped_token_gradient(mode):
    """d(loss of the last token)/d(decider bias) where every token halts at depth 1."""
    cfg = preset_config("test", vocab_size=24, max_iters=4)
    model = make_model(cfg, "anira-o", seed=1, gamma=0.0, init_bias=6.0).train()  # α ≈ 1: halt at 1
    model.straight_through = mode
    tokens = torch.randint(1, 24, (2, 6), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out = model(tokens)
    assert (out.exit_depth == 1).all()
    out.logits[:, -1].logsumexp(-1).sum().backward()
    return model.policy.decider.fc_out.bias.grad


def test_stopped_tokens_learn_only_with_the_all_tokens_surrogate():
    assert _stopped_token_gradient("running") is None or (_stopped_token_gradient("running") == 0).all()
    grad = _stopped_token_gradient("all")
    assert grad is not None and grad.abs().sum() > 0


def test_surrogates_share_the_forward_pass():
    cfg = preset_config("test", vocab_size=24, max_iters=4)
    model = make_model(cfg, "anira-o", seed=2).train()
    tokens = torch.randint(1, 24, (2, 6), generator=torch.Generator().manual_seed(1))
    outs = []
    for mode in ("running", "all"):
        model.straight_through = mode
        torch.manual_seed(3)
        outs.append(model(tokens))
    assert torch.equal(outs[0].logits, outs[1].logits)
    assert torch.equal(outs[0].exit_depth, outs[1].exit_depth)


def test_full_depth_warm_up_and_decider_lr(tmp_path):
    from anira.presets import get_preset
    from anira.training.loop import Trainer

    spec = get_preset("smoke").spec("anira-o")
    spec.train = TrainConfig.from_dict({**spec.train.to_dict(), "steps": 4, "full_depth_steps": 2, "log_every": 1,
                                        "decider_lr_mult": 0.5, "warmup_steps": 0, "eval_every": 0,
                                        "checkpoint_every": 0})
    trainer = Trainer(spec, tmp_path / "run")
    trainer._setup()
    groups = trainer.optimizer.param_groups
    assert {g["lr_mult"] for g in groups if g["policy"]} == {0.5}
    assert {g["lr_mult"] for g in groups if not g["policy"]} == {1.0}
    decider = [p.detach().clone() for p in trainer.model.policy.parameters()]
    result = trainer._loop(time.perf_counter())

    records = [r for r in ckpt.read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["full_depth"] for r in records] == [True, True, False, False]
    assert all(r["mean_depth"] == spec.model_config(trainer.task).max_iters for r in records[:2])
    assert records[0]["reg"] == 0.0 and records[0]["policy_grad_norm"] >= 0
    assert result.step == 4
    # the policy moved only after the warm-up (its parameters changed by the end)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(decider, trainer.model.policy.parameters()))


def test_bad_remedy_options_are_one_line_errors():
    from anira.errors import AniraError

    with pytest.raises(AniraError, match="straight_through must be one of running, all"):
        TrainConfig.from_dict({"straight_through": "some"})
    with pytest.raises(AniraError, match="decider_lr_mult"):
        TrainConfig.from_dict({"decider_lr_mult": 0})


@pytest.mark.parametrize("policy", ["anira-o", "anira-e"])
def test_exit_log_prob_is_log_q_for_a_lone_token(policy):
    """With one token there is no interaction: P(exit = d) = q(d) for both deciders."""
    cfg = preset_config("test", vocab_size=24, max_iters=4)
    model = make_model(cfg, policy, seed=4).train()
    token = torch.tensor([[5]])
    for seed in range(6):
        torch.manual_seed(seed)
        out = model(token)
        expected = torch.log(out.q[0, 0, out.exit_depth[0, 0] - 1])
        assert torch.allclose(exit_log_prob(out, policy, token != 0), expected, atol=1e-5)


def test_score_function_and_finite_difference_agree_on_a_lone_token():
    """One token, one decision: the two unbiased references agree within noise, and the
    exact gradient of Σ_d q(d)·L(d) lies in between (L(d) read from forced depths)."""
    cfg = preset_config("test", vocab_size=24, max_iters=3)
    model = make_model(cfg, "anira-o", seed=5, gamma=0.0).train()
    tokens = torch.tensor([[3, 7]])
    loss_mask = torch.tensor([[True, False]])  # the loss reads the first token's output
    bias = model.policy.decider.fc_out.bias
    est = estimate_gradients(model, tokens, loss_mask, bias, torch.ones_like(bias), 0.0, seeds=400, delta=0.25)
    # exact: dE[L]/db with E[L] = Σ_d q(d) L(d) for the first token (its depth alone matters)
    with torch.no_grad():
        losses = []
        for d in (1, 2, 3):
            out = model(tokens, exit_depths=torch.tensor([[d, 3]]))
            losses.append(compute_loss(model, out, tokens, loss_mask).total)

    def expected(b):
        with torch.no_grad():
            bias.fill_(b)
            torch.manual_seed(0)
            q = model(tokens).q[0, 0]
            bias.fill_(0.0)
        return float(sum(q[i] * losses[i] for i in range(3)))

    exact = (expected(1e-3) - expected(-1e-3)) / 2e-3
    assert abs(est.score_function - exact) < 4 * est.score_function_se + 1e-3
    assert abs(est.finite_difference - exact) < 0.1 * abs(exact) + 0.02


class _Initial(Callback):
    """Keeps a copy of every parameter as the loop starts."""

    def on_start(self, trainer, start_step, total):
        self.params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def copy_registry():
    import test_train_support as support

    return support.registry()


@pytest.fixture(scope="module")
def donor(tmp_path_factory, copy_registry):
    """A trained fixed-depth network: its weights initialise the runs below."""
    import test_train_support as support

    out = tmp_path_factory.mktemp("donor") / "run"
    train(support.spec("fixed", steps=3, checkpoint_every=0, eval_every=0), out, registry=copy_registry)
    return out


@pytest.mark.parametrize("freeze", [True, False])
def test_a_fresh_decider_on_a_loaded_network(tmp_path, copy_registry, donor, freeze):
    """`init_network_from` copies every tensor but the policy's; `freeze_network` then keeps
    them bit-identical while the decider trains (without it, the network trains too)."""
    import test_train_support as support

    spec = support.spec("anira-o", steps=3, checkpoint_every=0, eval_every=0, straight_through="all",
                        init_network_from=str(donor), freeze_network=freeze)
    initial = _Initial()
    result = train(spec, tmp_path / "run", registry=copy_registry, callbacks=[initial])
    donor_model, _ = ckpt.load(donor, registry=copy_registry)
    trained, _ = ckpt.load(result.checkpoint, registry=copy_registry)
    network = {k: v for k, v in donor_model.state_dict().items()}
    for k, v in initial.params.items():
        if not k.startswith("policy."):
            assert torch.equal(v, network[k]), k  # loaded from the donor
    moved = {k for k, v in trained.state_dict().items() if not torch.equal(v, initial.params[k])}
    assert any(k.startswith("policy.") for k in moved)  # the decider trained
    assert all(k.startswith("policy.") for k in moved) == freeze
    records = [r for r in ckpt.read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert all((r["network_grad_norm"] == 0.0) == freeze for r in records)


def test_init_network_from_refuses_another_network(tmp_path, copy_registry, donor):
    import dataclasses

    import test_train_support as support
    from anira.errors import AniraError

    wider = support.spec("anira-o", steps=1, init_network_from=str(donor))
    wider = dataclasses.replace(wider, model={**wider.model, "d_model": 48})
    with pytest.raises(AniraError, match="has shape .* not the run's network"):
        train(wider, tmp_path / "a", registry=copy_registry)
    with pytest.raises(AniraError, match="no such checkpoint"):
        train(support.spec("anira-o", steps=1, init_network_from=str(tmp_path / "none")), tmp_path / "b",
              registry=copy_registry)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # a failed start leaves nothing
