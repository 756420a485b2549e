"""What a policy plugin hands the engine is checked where the engine receives it:
a bug in a plugin is a one-line error naming the plugin and the method, never a
broadcasting error from the engine or a silently wrong result."""

import pytest
import torch

from anira import AniraError, preset_config
from anira.halting import HaltingPolicy
from anira.model import RecurrentTransformer
from anira.plugins.policies.fixed import FixedDepth

CFG = preset_config("test", vocab_size=24, max_iters=4)


def _model(policy_cls, **options):
    torch.manual_seed(0)
    return RecurrentTransformer(CFG, policy_cls(CFG, **options)).eval()


class BadStepShape(FixedDepth):
    name = "bad-step-shape"

    def step(self, state, h, t, ctx, emit):
        return state, torch.ones(h.shape[0], dtype=h.dtype)  # (b,) instead of (b, p)


class BadFinishShape(FixedDepth):
    name = "bad-finish-shape"

    def finish(self, state, ctx, like):
        return torch.ones(like.shape[:2])  # (b, p) instead of (b, p, D)


class SoftContinue(FixedDepth):
    name = "soft-continue"

    def planned_exit_depths(self, state, ctx, h0):
        return None  # decide in the loop, so the weights decide

    def step(self, state, h, t, ctx, emit):
        return state, torch.full(h.shape[:2], 0.7, dtype=h.dtype)


class NotADistribution(FixedDepth):
    name = "not-a-distribution"

    def finish(self, state, ctx, like):
        return torch.full((*like.shape[:2], self.max_iters), 0.5)


class PlanOutOfRange(FixedDepth):
    name = "plan-out-of-range"

    def planned_exit_depths(self, state, ctx, h0):
        return torch.full(h0.shape[:2], self.max_iters + 1, dtype=torch.long, device=h0.device)


class StateNotADict(FixedDepth):
    name = "state-not-a-dict"

    def begin(self, h0, ctx, emit):
        return [h0]


class FloatPlan(FixedDepth):
    name = "float-plan"

    def planned_exit_depths(self, state, ctx, h0):
        return torch.full(h0.shape[:2], 2.0, device=h0.device)


CASES = [
    (BadStepShape, "step returned continue weights of shape (2,), expected (2, 5)"),
    (BadFinishShape, "finish returned q of shape (2, 5), expected (2, 5, 4)"),
    (SoftContinue, "step returned continue weights other than 0 or 1"),
    (NotADistribution, "finish returned q that is not a distribution"),
    (PlanOutOfRange, "planned_exit_depths returned exit depths outside 1..4"),
    (StateNotADict, "begin returned a list, expected the state dict"),
    (FloatPlan, "planned_exit_depths returned exit depths of dtype torch.float32, expected a integer tensor"),
]


@pytest.mark.parametrize("policy_cls,problem", CASES, ids=[c[0].name for c in CASES])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_bad_outputs_are_one_line_errors_naming_plugin_and_method(policy_cls, problem, mode):
    model = _model(policy_cls)
    getattr(model, mode)()
    tokens = torch.randint(1, 24, (2, 5))
    if mode == "train" and policy_cls in (PlanOutOfRange, FloatPlan):
        model(tokens)  # plans are used at inference only
        return
    with pytest.raises(AniraError) as err:
        model(tokens)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"halting policy {policy_cls.name!r} (")
    assert problem in message


def test_batch_equal_to_length_is_caught_too():
    # a (b,) continue weight broadcasts silently when b == p: the shape check catches it
    model = _model(BadStepShape)
    with pytest.raises(AniraError, match="shape"):
        model(torch.randint(1, 24, (5, 5)))


def test_the_registered_name_survives_transformer_lens_setup():
    model = _model(FixedDepth)
    assert model.policy.name == "fixed"
    model.setup()  # TransformerLens names submodules by their path
    assert model.policy.name == "fixed"


def test_forced_depths_do_not_ask_continue_weights_to_be_hard():
    # with forced exits the policy's continue weights are not used: only their shape is checked
    model = _model(SoftContinue)
    out = model(torch.randint(1, 24, (2, 5)), exit_depths=torch.full((2, 5), 2))
    assert (out.exit_depth == 2).all()


def test_a_correct_policy_passes(cfg=CFG):
    class Fine(HaltingPolicy):
        name = "fine"
        timing = "online"

        def step(self, state, h, t, ctx, emit):
            return state, (torch.arange(h.shape[1]) > t).to(h.dtype).expand(h.shape[:2])

        def finish(self, state, ctx, like):
            return torch.full((*like.shape[:2], self.max_iters), 1 / self.max_iters)

    out = _model(Fine)(torch.randint(1, 24, (2, 5)))
    assert out.exit_depth[0].tolist() == [1, 2, 3, 4, 4]


def test_a_16_bit_distribution_passes_within_its_precision():
    class HalfQ(FixedDepth):
        name = "half-q"

        def finish(self, state, ctx, like):
            q = torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]).expand(*like.shape[:2], self.max_iters)
            return q.to(torch.bfloat16)  # 1/3 rounds to 0.3340 in bf16: the sum is 1.002

    out = _model(HalfQ)(torch.randint(1, 24, (2, 5)))
    assert out.q.dtype == torch.bfloat16
