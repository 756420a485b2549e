"""anira.testing.check_policy: passes correct policies and catches each kind of
broken one with a message naming the check."""

import pytest
import torch
from torch import nn

from anira import HaltingPolicy
from anira.plugins.policies.fixed import FixedDepth
from anira.testing import PolicyContractError, check_policy


class Depth2(HaltingPolicy):
    """A correct minimal policy: every token exits at depth 2."""

    name = "depth-2"
    timing = "fixed"

    def step(self, state, h, t, ctx, emit):
        return state, torch.full(h.shape[:2], float(t + 1 < 2), dtype=h.dtype, device=h.device)

    def finish(self, state, ctx, like):
        q = torch.zeros(*like.shape[:2], self.max_iters, device=like.device)
        q[..., 1] = 1.0
        return q


class StoresState(Depth2):
    name = "stores-state"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0

    def step(self, state, h, t, ctx, emit):
        if t == 0:
            self.calls += 1  # per-call state kept on the object
        keep = float(t + 1 < 1 + self.calls % 3)
        return state, torch.full(h.shape[:2], keep, dtype=h.dtype, device=h.device)

    def finish(self, state, ctx, like):
        return torch.full((*like.shape[:2], self.max_iters), 1 / self.max_iters, device=like.device)


class PeeksAhead(Depth2):
    name = "peeks-ahead"

    def begin(self, h0, ctx, emit):
        # every token's depth from the last token of its sequence: later tokens change
        # earlier decisions (changing a token by 5 flips its parity)
        return {"deep": (ctx.tokens[:, -1:] % 2 == 0).expand(h0.shape[:2])}

    def step(self, state, h, t, ctx, emit):
        return state, (state["deep"] & (t + 1 < 3)).to(h.dtype)


class PlanDisagrees(Depth2):
    name = "plan-disagrees"

    def planned_exit_depths(self, state, ctx, h0):
        return torch.full(h0.shape[:2], 3, dtype=torch.long, device=h0.device)


class DeadParameter(Depth2):
    name = "dead-parameter"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.unused = nn.Linear(cfg.d_model, 1)


class MissingSignal(Depth2):
    name = "missing-signal"
    step_signals = {"score": "(batch, pos) a score"}


class WrongSignalShape(Depth2):
    name = "wrong-signal-shape"
    step_signals = {"score": "(batch, pos) a score"}

    def step(self, state, h, t, ctx, emit):
        emit("score", h[..., 0:2])  # (batch, pos, 2)
        return super().step(state, h, t, ctx, emit)


class NoName(Depth2):
    name = "No Name"


def test_correct_policies_pass():
    report = check_policy(Depth2)
    assert "plan equals loop" in report.checks and "hook catalogue" in report.checks
    assert check_policy("anira-o").policy == "anira-o"  # by registered name
    check_policy(FixedDepth)


@pytest.mark.parametrize("policy,check", [
    (StoresState, "determinism at inference"),  # a second call sees the stored state
    (PeeksAhead, "causality at inference"),
    (PlanDisagrees, "plan equals loop"),
    (DeadParameter, "gradients reach the policy"),
    (MissingSignal, "hook catalogue"),
    (WrongSignalShape, "hook catalogue"),
    (NoName, "declaration"),
])
def test_broken_policies_fail_the_right_check(policy, check):
    with pytest.raises(PolicyContractError, match=f"fails '{check}") as err:
        check_policy(policy)
    assert "\n" not in str(err.value)


def test_unknown_options_are_caught():
    with pytest.raises(PolicyContractError, match="declaration"):
        check_policy(Depth2, options={"k": 3})
