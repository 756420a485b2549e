"""A contract check for halting-policy plugins, for their authors' own tests.

    from anira.testing import check_policy

    def test_my_policy_keeps_the_contract():
        check_policy(MyPolicy, options={"k": 2})

:func:`check_policy` builds small models with the policy and checks the whole
interface the engine relies on (see :class:`anira.halting.HaltingPolicy`):

* outputs: shapes, exit depths in 1..D, running masks that follow the exits,
  ``exit_depth`` = the iterations each token ran, q a distribution (the engine
  also checks these on every forward pass: here they are exercised);
* inference: deterministic, causal (a token's output and depth never depend on
  later tokens), the same with and without the fast path and the early stop,
  and a plan (``planned_exit_depths``) that equals what ``step`` decides;
* training: the loss is finite and its gradient reaches every trainable
  parameter of the policy;
* hook catalogue: every declared signal (``begin_signals``, ``step_signals``) is
  emitted, with the shape its declaration starts with, e.g. ``"(batch, pos) ..."``;
* no per-call state on the policy object: a deep copy computes the same.

The project's own contract test runs it on every installed policy.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from anira.config import ModelConfig, preset_config
from anira.errors import AniraError
from anira.halting import HaltingPolicy, build_policy

__all__ = ["PolicyContractError", "PolicyCheckReport", "check_policy"]

_TIMINGS = ("early", "online", "fixed", "training-free")


class PolicyContractError(AssertionError):
    """A policy broke the contract; the message names the check and the policy."""


@dataclass
class PolicyCheckReport:
    """What :func:`check_policy` checked (every entry passed)."""

    policy: str
    checks: list[str] = field(default_factory=list)


def check_policy(policy: str | type[HaltingPolicy], *, options: dict[str, Any] | None = None,
                 config: ModelConfig | None = None, registry: Any = None, seed: int = 0) -> PolicyCheckReport:
    """Check a halting policy (a class, or a registered name) against the engine's
    interface; raise :class:`PolicyContractError` at the first broken promise.

    ``options``: the policy's keyword options; ``config``: the model to build
    (default: the ``test`` preset with 24 tokens, D = 4, one core layer, which the
    fast path needs)."""
    if isinstance(policy, str):
        from anira.registry import default_registry

        policy_cls = (registry or default_registry()).policy(policy)
    else:
        policy_cls = policy
    cfg = config or preset_config("test", vocab_size=24, max_iters=4, max_len=64)
    checker = _Checker(policy_cls, dict(options or {}), cfg, seed)
    for check in (checker.declaration, checker.outputs, checker.determinism, checker.causality,
                  checker.paths, checker.plan, checker.signals, checker.gradients, checker.copies):
        check()
    return checker.report


class _Checker:
    def __init__(self, policy_cls: type, options: dict[str, Any], cfg: ModelConfig, seed: int) -> None:
        self.cls, self.options, self.cfg, self.seed = policy_cls, options, cfg, seed
        self.label = f"policy {getattr(policy_cls, 'name', policy_cls)!r} ({policy_cls.__module__}.{policy_cls.__qualname__})"
        self.report = PolicyCheckReport(policy=str(getattr(policy_cls, "name", policy_cls)))
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(1, cfg.vocab_size, (3, 12), generator=g)

    # -- helpers --------------------------------------------------------------------------
    def fail(self, check: str, problem: str) -> PolicyContractError:
        return PolicyContractError(f"{self.label} fails '{check}': {problem}")

    def model(self, seed_offset: int = 0):
        from anira.model import RecurrentTransformer

        torch.manual_seed(self.seed + seed_offset)
        try:
            model = RecurrentTransformer(self.cfg, build_policy(self.cls, self.cfg, self.options))
        except AniraError as exc:
            raise self.fail("construction", str(exc)) from None
        model.fast_path_min_tokens = {}  # small test batches take the fast path everywhere
        return model.eval()

    def run(self, check: str, model, tokens=None, **kwargs):
        try:
            with torch.no_grad():
                return model(self.tokens if tokens is None else tokens, **kwargs)
        except AniraError as exc:  # the engine's own output checks
            raise self.fail(check, str(exc)) from None

    def same(self, check: str, a, b, what: str, atol: float = 1e-5) -> None:
        if not torch.equal(a.exit_depth, b.exit_depth):
            raise self.fail(check, f"{what}: exit depths differ")
        if not torch.allclose(a.logits, b.logits, atol=atol, rtol=atol):
            raise self.fail(check, f"{what}: logits differ by {(a.logits - b.logits).abs().max().item():.3g}")
        if not torch.allclose(a.q, b.q, atol=1e-5):
            raise self.fail(check, f"{what}: q differs")

    def passed(self, check: str) -> None:
        self.report.checks.append(check)

    # -- checks ---------------------------------------------------------------------------
    def declaration(self) -> None:
        check = "declaration"
        if not (isinstance(self.cls, type) and issubclass(self.cls, HaltingPolicy)):
            raise self.fail(check, "is not a subclass of anira.HaltingPolicy")
        name = getattr(self.cls, "name", None)
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
            raise self.fail(check, f"needs a lower-case `name` class attribute, got {name!r}")
        if getattr(self.cls, "timing", None) not in _TIMINGS:
            raise self.fail(check, f"`timing` must be one of {', '.join(_TIMINGS)}, got {getattr(self.cls, 'timing', None)!r}")
        for attr in ("begin_signals", "step_signals"):
            signals = getattr(self.cls, attr)
            if not isinstance(signals, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in signals.items()):
                raise self.fail(check, f"`{attr}` must map signal names to shape descriptions")
        unknown = set(self.options) - set(self.cls.option_names())
        if unknown:
            raise self.fail(check, f"options {sorted(unknown)} are not keyword-only parameters of __init__")
        self.passed(check)

    def outputs(self) -> None:
        check = "outputs"
        model, D = self.model(), self.cfg.max_iters
        for mode in ("eval", "train"):
            getattr(model, mode)()
            out = self.run(check, model)
            depth, running = out.exit_depth, out.running
            if running.shape != (D, *self.tokens.shape) or running.dtype != torch.bool:
                raise self.fail(check, f"{mode}: running masks of shape {tuple(running.shape)}")
            if depth.min() < 1 or depth.max() > D:
                raise self.fail(check, f"{mode}: exit depths outside 1..{D}")
            if not running[0].all():
                raise self.fail(check, f"{mode}: a token skipped the first iteration")
            if (running[1:] > running[:-1]).any():
                raise self.fail(check, f"{mode}: a token restarted after it stopped")
            if not torch.equal(depth, running.sum(0)):
                raise self.fail(check, f"{mode}: exit_depth differs from the iterations run")
            if not (torch.allclose(out.q.sum(-1), torch.ones(()), atol=1e-4) and (out.q >= 0).all()):
                raise self.fail(check, f"{mode}: q is not a distribution over depths")
        self.passed(check)

    def determinism(self) -> None:
        model = self.model()
        self.same("determinism at inference", self.run("determinism", model), self.run("determinism", model),
                  "two forward passes")
        self.passed("determinism at inference")

    def causality(self) -> None:
        check = "causality at inference"
        model = self.model(1)
        changed = self.tokens.clone()
        changed[:, -3:] = (changed[:, -3:] + 5) % self.cfg.vocab_size
        a, b = self.run(check, model), self.run(check, model, changed)
        if not torch.equal(a.exit_depth[:, :-3], b.exit_depth[:, :-3]):
            raise self.fail(check, "an earlier token's exit depth depends on later tokens")
        if not torch.allclose(a.logits[:, :-3], b.logits[:, :-3], atol=1e-5):
            raise self.fail(check, "an earlier token's logits depend on later tokens")
        self.passed(check)

    def paths(self) -> None:
        check = "same function on every inference path"
        model = self.model(2)
        reference = self.run(check, model)
        model.fast_inference, model.stop_when_all_exited = False, False
        self.same(check, reference, self.run(check, model), "masked path at full depth vs default path")
        model.fast_inference, model.stop_when_all_exited, model.loop_graphs = True, True, "static"
        self.same(check, reference, self.run(check, model), "iterations on static graph buffers")
        self.passed(check)

    def plan(self) -> None:
        check = "plan equals loop"
        model = self.model(3)
        planned = self.run(check, model)
        model.use_planned_depths = False
        self.same(check, planned, self.run(check, model), "planned_exit_depths vs the decisions of step")
        self.passed(check)

    def signals(self) -> None:
        check = "hook catalogue"
        model = self.model(4)
        D = self.cfg.max_iters
        sizes = {"batch": self.tokens.shape[0], "b": self.tokens.shape[0], "pos": self.tokens.shape[1],
                 "p": self.tokens.shape[1], "D": D, "d": self.cfg.d_model, "d_model": self.cfg.d_model}
        model.stop_when_all_exited = False  # every iteration's signals
        try:
            with torch.no_grad():
                _, cache = model.run_with_cache(self.tokens, names_filter=lambda n: ".halt." in n or n.startswith("halt."))
        except AniraError as exc:
            raise self.fail(check, str(exc)) from None
        for name, text in self.cls.begin_signals.items():
            self._signal(check, [f"halt.hook_{name}"], text, cache, sizes)
        for name, text in self.cls.step_signals.items():
            self._signal(check, [f"loop.{t}.halt.hook_{name}" for t in range(D)], text, cache, sizes)
        self.passed(check)

    def _signal(self, check: str, names: list[str], text: str, cache, sizes: dict[str, int]) -> None:
        found = [cache[n] for n in names if n in cache]
        if not found:
            raise self.fail(check, f"declared signal {names[0]} is never emitted")
        shape = _declared_shape(text, sizes)
        for value in found:
            if shape is not None and tuple(value.shape) != shape:
                raise self.fail(check, f"signal {names[0]} has shape {tuple(value.shape)}, declared {text.split(')')[0]})")

    def gradients(self) -> None:
        check = "gradients reach the policy"
        from anira.objective import compute_loss

        model = self.model(5).train()
        trainable = [(n, p) for n, p in model.policy.named_parameters() if p.requires_grad]
        tokens = self.tokens
        loss_mask = torch.zeros_like(tokens, dtype=torch.bool)
        loss_mask[:, tokens.shape[1] // 2:] = True
        targets = {"complexity": torch.rand(tokens.shape, generator=torch.Generator().manual_seed(self.seed))}
        try:
            out = model(tokens)
            terms = compute_loss(model, out, tokens, loss_mask, targets=targets)
        except AniraError as exc:
            raise self.fail(check, str(exc)) from None
        if not torch.isfinite(terms.total):
            raise self.fail(check, "the training loss is not finite")
        if not trainable:
            self.passed(check + " (no trainable parameters)")
            return
        terms.total.backward()
        for name, param in trainable:
            if param.grad is None:
                raise self.fail(check, f"parameter {name} gets no gradient from the loss")
            if not torch.isfinite(param.grad).all():
                raise self.fail(check, f"parameter {name} gets a non-finite gradient")
        if all(float(p.grad.abs().sum()) == 0 for _, p in trainable):
            raise self.fail(check, "every gradient of the policy's parameters is zero")
        self.passed(check)

    def copies(self) -> None:
        check = "no per-call state on the policy"
        model = self.model(6)
        first = self.run(check, model)
        twin = copy.deepcopy(model)
        self.run(check, model, (self.tokens + 3) % self.cfg.vocab_size)  # another call in between
        self.same(check, first, self.run(check, twin), "a deep copy")
        self.same(check, first, self.run(check, model), "the same input after another call")
        self.passed(check)


def _declared_shape(text: str, sizes: dict[str, int]) -> tuple[int, ...] | None:
    """The shape a signal's description starts with, e.g. "(batch, pos, D) ..."; None
    if it starts with no shape made of known names."""
    match = re.match(r"\s*\(([^)]*)\)", text)
    if not match:
        return None
    parts = [p.strip() for p in match.group(1).split(",") if p.strip()]
    if not all(p in sizes for p in parts):
        return None
    return tuple(sizes[p] for p in parts)
