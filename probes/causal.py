"""Causal check: does halting *use* the direction a probe finds?

A representation probe shows that a feature is linearly readable at
iteration t; it does not show that the halting decision reads it. Here we
remove the probe's direction from the running tokens' states at
``loop.{t}.hook_resid_post`` (h <- h - (h·u)u, u unit, in the raw residual
basis) and measure how exit depth and accuracy change, against the same
intervention with as many random directions (same rank) as a control.

* The direction comes from :class:`ProbeDirectionAblation` fitted on hidden
  states at t (tokens running at t, feature defined), e.g. from the table.
* ``t = -1`` ablates the Prelude output h0 instead (early policies decide from it).
* Only tokens running at t *and* at positions where the feature is defined
  are ablated; their exit depths are what we compare. Tokens already halted
  keep their exit state untouched.

Caveat: a policy whose inference rule needs the full distribution (anira-o
with ``rule="mode"``/``"mean"``) picks depths in a scouting pass with hooks
off, so its exit depths cannot move; expected depth (from q) still can, and
the result says so in ``notes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anira.probes.estimators import ProbeDirectionAblation, RandomDirectionAblation

H0 = -1


@dataclass
class CausalBatch:
    """Inputs of one forward pass of the intervention.

    tokens: (b, p) token ids; ``where`` (b, p) bool: positions the ablation
    targets (the feature is defined there); ``answer`` (b, p) bool: positions
    whose prediction of token i+1 is scored; ``lengths`` (b,): real lengths;
    ``examples``: the task's examples, when instance accuracy should use
    ``task.score`` instead of exact match on ``answer``.
    """

    tokens: Tensor
    where: np.ndarray
    answer: np.ndarray
    lengths: np.ndarray
    examples: Sequence[Any] | None = None


@dataclass
class Outcome:
    """What one (ablated or clean) pass over all batches produced, on the target tokens."""

    exit_depth: np.ndarray  # (n_target,) exit depth of each ablated token
    expected_depth: np.ndarray  # (n_target,)
    correct: np.ndarray  # (n_instances,) bool
    token_correct: np.ndarray  # (n_answer,) bool
    removed_sq: np.ndarray  # (n_target,) squared norm of the removed component (0 for the clean pass)


# ---------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------


def ablation_site(model: Any, t: int) -> str:
    """The hook whose output is the state we ablate: ``loop.{t}.hook_resid_post``,
    or for ``t = -1`` the Prelude output h0 (the embedding when there is no Prelude)."""
    if t == H0:
        n = int(model.cfg.n_prelude)
        return f"prelude.{n - 1}.hook_resid_post" if n else "hook_embed"
    if not 0 <= t < int(model.cfg.max_iters):
        raise ValueError(f"iteration t={t} is outside -1..{int(model.cfg.max_iters) - 1}")
    return f"loop.{t}.hook_resid_post"


def ablation_hooks(
    model: Any, t: int, components: Tensor, where: Tensor, record: dict[str, Tensor]
) -> list[tuple[str, Callable]]:
    """fwd_hooks that project ``components`` (k, d) out of the targeted running tokens at t.

    ``record`` receives ``running`` (b, p) (the mask at t) and ``removed_sq``
    (b, p), the squared norm of what was removed.
    """
    hooks: list[tuple[str, Callable]] = []
    if t != H0:

        def keep_running(value: Tensor, hook: Any) -> Tensor:
            record["running"] = value.detach().clone()
            return value

        hooks.append((f"loop.{t}.hook_running", keep_running))

    def project(value: Tensor, hook: Any) -> Tensor:
        running = record.get("running", torch.ones(value.shape[:2], dtype=torch.bool, device=value.device))
        mask = (running.bool() & where).to(value.dtype)[..., None]  # (b, p, 1)
        U = components.to(value)
        coords = value @ U.T  # (b, p, k)
        removed = coords @ U  # (b, p, d)
        record["removed_sq"] = (coords.pow(2).sum(-1) * mask[..., 0]).detach()
        return value - mask * removed

    hooks.append((ablation_site(model, t), project))
    return hooks


@torch.no_grad()
def run_outcome(
    model: Any, batches: Sequence[CausalBatch], t: int, components: np.ndarray | None, task: Any = None
) -> Outcome:
    """Run every batch clean (``components=None``) or ablated; gather the outcome.

    The target tokens are ``where`` & running at t in *this* pass: ablating at t
    cannot change who runs at t, so clean and ablated passes share them.
    """
    depths, expected, correct, tok_ok, removed = [], [], [], [], []
    for batch in batches:
        where = torch.as_tensor(batch.where, dtype=torch.bool, device=model.device)
        record: dict[str, Tensor] = {}
        if components is None:
            hooks = [(f"loop.{t}.hook_running", _recorder(record))] if t != H0 else []
        else:
            U = torch.as_tensor(components, dtype=torch.float32, device=model.device)
            hooks = ablation_hooks(model, t, U, where, record)
        out = model.run_with_hooks(batch.tokens.to(model.device), fwd_hooks=hooks)
        running = record.get("running", torch.ones_like(where)).bool()
        target = (running & where).cpu().numpy()
        depths.append(out.exit_depth.cpu().numpy()[target])
        expected.append(out.expected_depth.float().cpu().numpy()[target])
        sq = record.get("removed_sq")
        removed.append(np.zeros(int(target.sum())) if sq is None else sq.float().cpu().numpy()[target])
        predicted = out.logits.argmax(-1).cpu().numpy()
        ok, tok = _accuracy(batch, predicted, task)
        correct.append(ok)
        tok_ok.append(tok)
    return Outcome(
        exit_depth=np.concatenate(depths).astype(np.int64),
        expected_depth=np.concatenate(expected).astype(np.float64),
        correct=np.concatenate(correct),
        token_correct=np.concatenate(tok_ok),
        removed_sq=np.concatenate(removed),
    )


def _recorder(record: dict[str, Tensor]) -> Callable:
    def keep(value: Tensor, hook: Any) -> Tensor:
        record["running"] = value.detach().clone()
        return value

    return keep


def _accuracy(batch: CausalBatch, predicted: np.ndarray, task: Any) -> tuple[np.ndarray, np.ndarray]:
    """Instance correctness (task.score when examples are given, else exact match on
    ``answer``) and per-answer-token correctness."""
    tokens = batch.tokens.cpu().numpy()
    nxt = np.zeros_like(tokens)
    nxt[:, :-1] = tokens[:, 1:]
    answer = np.asarray(batch.answer, dtype=bool).copy()
    answer[:, -1] = False  # the last column predicts nothing
    hit = predicted == nxt
    if task is not None and batch.examples is not None:
        correct = np.array([task.score(e, predicted[i, : len(e)]) for i, e in enumerate(batch.examples)])
    else:
        correct = np.array([bool(np.all(hit[i][answer[i]])) for i in range(tokens.shape[0])])
    return correct.astype(bool), hit[answer]


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


def compare_to_control(effect: float, controls: Sequence[float]) -> dict[str, Any]:
    """The effect against the random-direction controls: mean ± std, z-score, and
    a one-sided permutation-style p-value, P(control >= effect) with the +1
    correction (the smallest p with n controls is 1/(n+1))."""
    c = np.asarray(controls, dtype=float)
    mean = float(c.mean()) if c.size else float("nan")
    std = float(c.std(ddof=1)) if c.size > 1 else 0.0
    if std > 0:
        z: float | None = (effect - mean) / std
    else:
        z = None  # every control gave the same value: no scale to measure against
    p = (1 + int(np.sum(c >= effect - 1e-12))) / (c.size + 1)
    return {"effect": float(effect), "control_mean": mean, "control_std": std, "z": z, "p": p, "n_control": int(c.size)}


def outcome_metrics(clean: Outcome, ablated: Outcome) -> dict[str, float]:
    """How far an ablated pass moved from the clean one (larger = bigger effect)."""
    dd = ablated.exit_depth - clean.exit_depth
    de = ablated.expected_depth - clean.expected_depth
    return {
        "exit_depth_abs_change": float(np.abs(dd).mean()) if dd.size else 0.0,
        "exit_depth_change": float(dd.mean()) if dd.size else 0.0,
        "exit_depth_changed_share": float(np.mean(dd != 0)) if dd.size else 0.0,
        "expected_depth_abs_change": float(np.abs(de).mean()) if de.size else 0.0,
        "expected_depth_change": float(de.mean()) if de.size else 0.0,
        "accuracy_drop": float(clean.correct.mean() - ablated.correct.mean()) if clean.correct.size else 0.0,
        "token_accuracy_drop": (
            float(clean.token_correct.mean() - ablated.token_correct.mean()) if clean.token_correct.size else 0.0
        ),
        "removed_norm_sq": float(ablated.removed_sq.mean()) if ablated.removed_sq.size else 0.0,
    }


#: metrics compared with the control; larger means a bigger effect
TESTED = ("exit_depth_abs_change", "expected_depth_abs_change", "accuracy_drop", "token_accuracy_drop")


def depth_change_histogram(clean: Outcome, ablated: Outcome, max_iters: int) -> dict[str, int]:
    """Counts of per-token exit-depth changes, -(D-1)..D-1 (only non-empty bins)."""
    dd = ablated.exit_depth - clean.exit_depth
    values, counts = np.unique(dd, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts) if abs(v) < max_iters}


# ---------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CausalConfig:
    """Knobs of the causal check."""

    n_random: int = 8  # random-direction controls
    max_rank: int | None = 1  # directions taken from the probe (1: its main weight vector)
    seed: int = 0


def causal_check(
    model: Any,
    batches: Sequence[CausalBatch],
    t: int,
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    *,
    estimator: Any = None,
    task: Any = None,
    config: CausalConfig | None = None,
    clean: Outcome | None = None,
) -> dict[str, Any]:
    """Learn the probe direction(s) from ``X_fit`` (n, d) -> ``y_fit`` (n,) and
    compare ablating them at iteration ``t`` with ablating random directions.

    ``estimator``: the probe (default: standardised logistic regression; pass a
    standardised RidgeCV pipeline for a continuous or ordinal feature).
    ``clean``: a precomputed clean outcome for these batches (saves a pass when
    several features are checked at the same t).
    Returns a JSON-able dict.
    """
    config = config or CausalConfig()
    model_dim = int(model.cfg.d_model)
    if X_fit.ndim != 2 or X_fit.shape[1] != model_dim:
        raise ValueError(f"X_fit must be (n, {model_dim}), got {X_fit.shape}")
    probe = ProbeDirectionAblation(estimator=estimator, max_rank=config.max_rank).fit(X_fit, y_fit)
    k = probe.n_components_
    if k == 0:
        raise ValueError("the probe learned no direction (all weights zero)")
    fit_scores = probe.estimator_.score(X_fit, y_fit), probe.estimator_.score(probe.transform(X_fit), y_fit)
    clean = clean if clean is not None else run_outcome(model, batches, t, None, task)
    probe_out = run_outcome(model, batches, t, probe.components_, task)
    probe_metrics = outcome_metrics(clean, probe_out)
    controls: list[dict[str, float]] = []
    for i in range(config.n_random):
        rand = RandomDirectionAblation(n_components=k, random_state=config.seed * 1000 + i).fit(X_fit[:1])
        controls.append(outcome_metrics(clean, run_outcome(model, batches, t, rand.components_, task)))
    tests = {m: compare_to_control(probe_metrics[m], [c[m] for c in controls]) for m in TESTED}
    return {
        "t": t,
        "site": ablation_site(model, t),
        "rank": k,
        "n_target_tokens": int(clean.exit_depth.size),
        "n_instances": int(clean.correct.size),
        # the probe on its own fit data, before and after removing its direction
        "probe_fit_score": float(fit_scores[0]),
        "probe_fit_score_ablated": float(fit_scores[1]),
        "clean": {
            "mean_exit_depth": float(clean.exit_depth.mean()) if clean.exit_depth.size else None,
            "mean_expected_depth": float(clean.expected_depth.mean()) if clean.expected_depth.size else None,
            "accuracy": float(clean.correct.mean()) if clean.correct.size else None,
        },
        "probe": probe_metrics,
        "probe_depth_change_histogram": depth_change_histogram(clean, probe_out, int(model.cfg.max_iters)),
        "control": {m: [c[m] for c in controls] for m in probe_metrics},
        "tests": tests,
    }
