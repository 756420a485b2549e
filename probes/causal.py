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
from threadpoolctl import threadpool_limits
from torch import Tensor

from anira.probes.estimators import ProbeDirectionAblation, RandomDirectionAblation

H0 = -1


@dataclass
class CausalBatch:
    """Inputs of one forward pass of the intervention.

    tokens: (b, p) token ids; ``answer`` (b, p) bool: positions whose
    prediction of token i+1 is scored; ``examples``: the task's examples, when
    instance accuracy should use ``task.score`` instead of exact match on
    ``answer``. Which positions are ablated is given separately (``where``),
    so one set of batches serves every feature.
    """

    tokens: Tensor
    answer: np.ndarray
    examples: Sequence[Any] | None = None
    #: (b, p) forced exit depths (a planted rule, ``depth_fn``): every pass, clean or
    #: ablated, runs exactly these depths; None: the policy decides
    exit_depths: Tensor | None = None
    #: the examples' per-token task features (name -> (b, p)), handed to the model as
    #: ``features=`` so a policy that reads them (``ctx.features``) halts as in collection
    features: dict[str, Tensor] | None = None


@dataclass
class Outcome:
    """One (clean or ablated) pass over all batches; per-position arrays are the
    batches' (b, p) grids flattened and concatenated."""

    exit_depth: np.ndarray  # (n_pos,) int
    expected_depth: np.ndarray  # (n_pos,)
    running: np.ndarray  # (n_pos,) bool: computed at iteration t (all True for h0)
    answer: np.ndarray  # (n_pos,) bool: scored positions
    token_correct: np.ndarray  # (n_pos,) bool: prediction at i == token i+1
    removed_sq: np.ndarray  # (n_pos,) squared norm of the removed component (0 if not ablated)
    correct: np.ndarray  # (n_instances,) bool


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
    model: Any,
    batches: Sequence[CausalBatch],
    t: int,
    components: np.ndarray | None = None,
    where: Sequence[np.ndarray] | None = None,
    task: Any = None,
) -> Outcome:
    """Run every batch clean (``components=None``) or with ``components`` (k, d)
    projected out of the running tokens at positions ``where`` (one (b, p)
    bool array per batch) at iteration t."""
    if components is not None and (where is None or len(where) != len(batches)):
        raise ValueError("an ablated pass needs one `where` mask per batch")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("depth", "exp", "run", "ans", "tok", "rem", "ok")}
    for i, batch in enumerate(batches):
        record: dict[str, Tensor] = {}
        if components is None:
            hooks = [(f"loop.{t}.hook_running", _recorder(record))] if t != H0 else []
        else:
            mask = torch.as_tensor(np.asarray(where[i], dtype=bool), device=model.device)
            U = torch.as_tensor(components, dtype=torch.float32, device=model.device)
            hooks = ablation_hooks(model, t, U, mask, record)
        kwargs: dict[str, Any] = {}
        if batch.exit_depths is not None:
            kwargs["exit_depths"] = batch.exit_depths.to(model.device)
        if batch.features:
            kwargs["features"] = {k: v.to(model.device) for k, v in batch.features.items()}
        out = model.run_with_hooks(batch.tokens.to(model.device), fwd_hooks=hooks, **kwargs)
        shape = tuple(out.exit_depth.shape)
        running = record.get("running")
        parts["run"].append(np.ones(shape, bool).ravel() if running is None else running.bool().cpu().numpy().ravel())
        parts["depth"].append(out.exit_depth.cpu().numpy().ravel())
        parts["exp"].append(out.expected_depth.float().cpu().numpy().ravel())
        sq = record.get("removed_sq")
        parts["rem"].append(np.zeros(int(np.prod(shape))) if sq is None else sq.float().cpu().numpy().ravel())
        predicted = out.logits.argmax(-1).cpu().numpy()
        ok, answer, tok = _accuracy(batch, predicted, task)
        parts["ok"].append(ok)
        parts["ans"].append(answer.ravel())
        parts["tok"].append(tok.ravel())
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Outcome(
        exit_depth=cat["depth"].astype(np.int64),
        expected_depth=cat["exp"].astype(np.float64),
        running=cat["run"].astype(bool),
        answer=cat["ans"].astype(bool),
        token_correct=cat["tok"].astype(bool),
        removed_sq=cat["rem"].astype(np.float64),
        correct=cat["ok"].astype(bool),
    )


def _recorder(record: dict[str, Tensor]) -> Callable:
    def keep(value: Tensor, hook: Any) -> Tensor:
        record["running"] = value.detach().clone()
        return value

    return keep


def _accuracy(batch: CausalBatch, predicted: np.ndarray, task: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instance correctness (task.score when examples are given, else exact match on
    ``answer``), the scored-position mask and per-position correctness."""
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
    return correct.astype(bool), answer, hit


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


def outcome_metrics(clean: Outcome, ablated: Outcome, target: np.ndarray) -> dict[str, float]:
    """How far an ablated pass moved from the clean one (larger = bigger effect);
    depth metrics over the ``target`` positions (the ablated tokens)."""
    dd = (ablated.exit_depth - clean.exit_depth)[target]
    de = (ablated.expected_depth - clean.expected_depth)[target]
    ans = clean.answer

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else 0.0

    return {
        "exit_depth_abs_change": mean(np.abs(dd)),
        "exit_depth_change": mean(dd),
        "exit_depth_changed_share": mean(dd != 0),
        "expected_depth_abs_change": mean(np.abs(de)),
        "expected_depth_change": mean(de),
        "accuracy_drop": mean(clean.correct.astype(float)) - mean(ablated.correct.astype(float)),
        "token_accuracy_drop": mean(clean.token_correct[ans].astype(float)) - mean(ablated.token_correct[ans].astype(float)),
        "removed_norm_sq": mean(ablated.removed_sq[target]),
    }


#: metrics compared with the control; larger means a bigger effect
TESTED = ("exit_depth_abs_change", "expected_depth_abs_change", "accuracy_drop", "token_accuracy_drop")


def depth_change_histogram(clean: Outcome, ablated: Outcome, target: np.ndarray) -> dict[str, int]:
    """Counts of per-token exit-depth changes on the ablated tokens (non-empty bins)."""
    values, counts = np.unique((ablated.exit_depth - clean.exit_depth)[target], return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


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
    where: Sequence[np.ndarray],
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

    ``where``: one (b, p) bool array per batch, the positions to ablate (where
    the feature is defined); only those still running at t are touched.
    ``estimator``: the probe (default: standardised logistic regression; pass a
    standardised RidgeCV pipeline for a continuous or ordinal feature).
    ``clean``: the clean outcome of these batches at this t (saves a pass when
    several features are checked). Returns a JSON-able dict.
    """
    config = config or CausalConfig()
    model_dim = int(model.cfg.d_model)
    if X_fit.ndim != 2 or X_fit.shape[1] != model_dim:
        raise ValueError(f"X_fit must be (n, {model_dim}), got {X_fit.shape}")
    with threadpool_limits(limits=1, user_api="blas"):  # one small fit: BLAS threads only spin
        probe = ProbeDirectionAblation(estimator=estimator, max_rank=config.max_rank).fit(X_fit, y_fit)
    k = probe.n_components_
    if k == 0:
        raise ValueError("the probe learned no direction (all weights zero)")
    fit_scores = probe.estimator_.score(X_fit, y_fit), probe.estimator_.score(probe.transform(X_fit), y_fit)
    clean = clean if clean is not None else run_outcome(model, batches, t, task=task)
    target = np.concatenate([np.asarray(w, dtype=bool).ravel() for w in where]) & clean.running

    def ablate(components: np.ndarray) -> Outcome:
        return run_outcome(model, batches, t, components, where, task)

    probe_out = ablate(probe.components_)
    probe_metrics = outcome_metrics(clean, probe_out, target)
    controls: list[dict[str, float]] = []
    for i in range(config.n_random):
        rand = RandomDirectionAblation(n_components=k, random_state=config.seed * 1000 + i).fit(X_fit[:1])
        controls.append(outcome_metrics(clean, ablate(rand.components_), target))
    tests = {m: compare_to_control(probe_metrics[m], [c[m] for c in controls]) for m in TESTED}
    return {
        "t": t,
        "site": ablation_site(model, t),
        "rank": k,
        "n_target_tokens": int(target.sum()),
        "n_instances": int(clean.correct.size),
        # the probe on its own fit data, before and after removing its direction
        "probe_fit_score": float(fit_scores[0]),
        "probe_fit_score_ablated": float(fit_scores[1]),
        "clean": {
            "mean_exit_depth": float(clean.exit_depth[target].mean()) if target.any() else None,
            "mean_expected_depth": float(clean.expected_depth[target].mean()) if target.any() else None,
            "accuracy": float(clean.correct.mean()) if clean.correct.size else None,
        },
        "probe": probe_metrics,
        "probe_depth_change_histogram": depth_change_histogram(clean, probe_out, target),
        "control": {m: [c[m] for c in controls] for m in probe_metrics},
        "tests": tests,
    }


# ---------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------


def intervention_batches(
    task: Any, model: Any, n: int, seed: int, batch_size: int, depth_fn: Any = None
) -> tuple[list[CausalBatch], list[Any], list[dict[str, Any]]]:
    """``n`` fresh test-split instances spread over the task's in-distribution
    difficulties (a seed stream apart from collection's, so the intervention is
    measured on instances the probe direction was not fitted on). With a planted
    rule ``depth_fn`` each batch carries the rule's depths.
    Returns the batches, their examples (batch-major) and skipped difficulties."""
    from anira.probes.collect import _forced_depths, feature_tensors, spread
    from anira.task import collate

    ks = list(task.ranges.values("test_id"))
    max_len = int(model.cfg.max_len)
    examples: list[Any] = []
    skipped: list[dict[str, Any]] = []
    for k, n_k in spread(int(n), ks).items():
        rng = np.random.default_rng([int(seed), 0xCA05A1, int(k)])
        drawn = [task.sample(k, rng, split="test") for _ in range(n_k)]
        too_long = [e for e in drawn if len(e) > max_len]
        if too_long:
            skipped.append({"difficulty": k, "reason": f"instances exceed max_len {max_len}"})
            continue
        examples.extend(drawn)
    batches = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = collate(chunk)
        forced = None
        if depth_fn is not None:
            forced = torch.as_tensor(_forced_depths(depth_fn, chunk, batch.tokens.shape, int(model.cfg.max_iters)))
        batches.append(CausalBatch(tokens=torch.as_tensor(batch.tokens), answer=batch.answer_mask, examples=chunk,
                                   exit_depths=forced, features=feature_tensors(chunk, batch.tokens.shape[1])))
    return batches, examples, skipped


def feature_where(batches: Sequence[CausalBatch], name: str, keep: str) -> list[np.ndarray]:
    """Per batch, the positions where feature ``name`` is defined and that the
    table keeps as rows (the probe was fitted on those rows only)."""
    out = []
    for batch in batches:
        b, p = tuple(batch.tokens.shape)
        mask = np.zeros((b, p), dtype=bool)
        for i, e in enumerate(batch.examples or []):
            values = e.features.get(name)
            if values is None:
                continue
            row = np.isfinite(np.asarray(values, dtype=float))
            if keep == "answer":
                row &= e.answer_mask
            elif keep == "question":
                row &= e.question_mask
            elif keep == "answer|question":
                row &= e.answer_mask | e.question_mask
            mask[i, : len(e)] = row
        out.append(mask)
    return out


class CausalSuite:
    """Remove a feature's probe direction at iteration t (and, as control, as many
    random directions) and measure exit depth and accuracy.

    Options: ``iterations`` ("0"; comma-separated, -1 or h0 for the Prelude
    output), ``features`` ("auto": the ``per_kind`` (1) most linearly decodable
    execution and static features at t, by ridge R²; "all"; or comma-separated
    names), ``n_random`` (8), ``n_instances`` (64 fresh test instances),
    ``batch_size`` (64), ``probe``
    ("auto": logistic for binary features, ridge for the rest, read as
    ordinal; or "logistic" / "ridge"), ``max_fit_tokens`` (20000), ``max_rank`` (1).
    """

    name = "causal"
    description = (
        "project a feature's probe direction out of running tokens' states at iteration t; "
        "change in exit depth and accuracy vs random directions"
    )

    @property
    def options(self) -> dict[str, Any]:
        from anira.probes.options import Option, iteration_list

        return {
            "iterations": Option("0", "where to ablate: comma list of iterations (h0 or -1: the Prelude output)",
                                 parse=iteration_list),
            "features": Option("auto", "auto (the most decodable feature of each kind), all, or a comma list"),
            "per_kind": Option(1, "features per kind when features=auto", minimum=1),
            "n_random": Option(8, "random-direction controls", minimum=1),
            "n_instances": Option(64, "fresh test instances for the intervention", minimum=1),
            "batch_size": Option(64, "instances per forward pass", minimum=1),
            "probe": Option("auto", "probe family", choices=("auto", "logistic", "ridge")),
            "max_fit_tokens": Option(20_000, "tokens to fit the probe direction on", minimum=20),
            "max_rank": Option(1, "directions kept from the probe", minimum=1),
        }

    def _sites(self, context: Any) -> dict[int, str]:
        from anira.probes.representation import h0_site, parse_iterations

        model = context.model
        h0 = h0_site(int(model.cfg.n_prelude)) if model is not None else h0_site(1)
        its = parse_iterations(str(context.option("iterations", "0")), int(context.max_iters))
        return {t: (h0 if t == H0 else f"loop.{t}.hook_resid_post") for t in its}

    def requires(self, context: Any) -> Any:
        from anira.probes.suites import Requirements

        return Requirements(hidden_sites=tuple(self._sites(context).values()), needs_model=True, min_instances=2)

    def run(self, table: Any, context: Any) -> Any:
        from anira.errors import AniraError
        from anira.probes.suites import SuiteResult

        model, task = context.model, context.task
        if task is None:
            raise AniraError("needs the task to draw fresh instances")
        if not model.hook_points_enabled:
            raise AniraError("the model's hook points are disabled (model.hook_points_enabled = False)")
        sites = self._sites(context)
        spec = str(context.option("features", "auto"))
        names = _feature_names(table, spec)
        auto = spec.strip() == "auto"
        per_kind = int(context.option("per_kind", 1))
        selection: dict[str, Any] = {}
        config = CausalConfig(
            n_random=int(context.option("n_random", 8)),
            max_rank=int(context.option("max_rank", 1)),
            seed=int(context.seed),
        )
        family = str(context.option("probe", "auto"))
        if family not in ("auto", "logistic", "ridge"):
            raise AniraError(f"probe must be auto, logistic or ridge; got {family!r}")
        max_fit = int(context.option("max_fit_tokens", 20_000))
        batches, examples, skipped = intervention_batches(
            task, model, int(context.option("n_instances", 64)), int(context.seed),
            int(context.option("batch_size", 64)), depth_fn=context.depth_fn,
        )
        if not batches:
            raise AniraError("no intervention instance fits the model's max_len")
        keep = str(table.meta.get("keep", "answer|question"))
        notes = [f"difficulty {s['difficulty']}: {s['reason']}" for s in skipped]
        notes += _policy_notes(model, sites, planted=context.depth_fn is not None)
        was_training = model.training
        model.eval()
        checks: list[dict[str, Any]] = []
        total, done = len(sites) * (2 * per_kind if auto else len(names)), 0
        try:
            for t, site in sites.items():
                clean = run_outcome(model, batches, t, task=task)
                chosen = names
                if auto:
                    chosen, scores = pick_features(table, names, site, t, per_kind, max_fit, config.seed)
                    selection[site] = {"picked": chosen, "ridge_r2": scores}
                for name in chosen:
                    check, note = self._check_one(table, model, task, batches, keep, t, site, name, family,
                                                  max_fit, config, clean)
                    if note:
                        notes.append(note)
                    if check is not None:
                        checks.append(check)
                    done += 1
                    if context.progress is not None:
                        context.progress(done, total)
        finally:
            model.train(was_training)
        if not checks:
            raise AniraError("no feature could be checked: " + "; ".join(notes[-3:]))
        data = {"checks": checks, "n_instances": len(examples), "n_random": config.n_random, "probe": family,
                "selection": selection, "depths": "planted" if context.depth_fn is not None else "policy"}
        headline = _headline(checks)
        headline["depths"] = data["depths"]
        return SuiteResult(
            name=self.name, data=data, headline=headline, notes=notes,
            figures={"effects": plot_causal(checks)},
        )

    def _check_one(
        self, table: Any, model: Any, task: Any, batches: list[CausalBatch], keep: str, t: int, site: str,
        name: str, family: str, max_fit: int, config: CausalConfig, clean: Outcome,
    ) -> tuple[dict[str, Any] | None, str | None]:
        """One feature at one iteration: (the check, None) or (None, why it was not checked)."""
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        rows = _fit_rows(table, name, t, max_fit, config.seed)
        y = table.feature(name, rows)
        label = "h0" if t == H0 else f"t{t}"
        if rows.size < 20 or np.unique(y).size < 2:
            return None, f"{name} @ {label}: too few running tokens or a constant feature; not checked"
        binary = np.unique(y).size == 2
        use_logistic = family == "logistic" or (family == "auto" and binary)
        estimator = None if use_logistic else make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        where = feature_where(batches, name, keep)
        check = causal_check(model, batches, where, t, table.hidden(site, rows=rows), y,
                             estimator=estimator, task=task, config=config, clean=clean)
        spec = table.specs[name]
        check.update(feature=name, kind=spec.kind, probe_family="logistic" if use_logistic else "ridge", label=label)
        return check, None


def _feature_names(table: Any, spec: str) -> list[str]:
    from anira.errors import AniraError

    if spec.strip() in ("all", "auto"):
        return list(table.specs)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in table.specs]
    if unknown:
        raise AniraError(f"unknown feature {unknown[0]!r}; features: {', '.join(table.specs)}")
    return names


def decodability(table: Any, name: str, site: str, t: int, max_rows: int, seed: int) -> float | None:
    """In-sample R² of a standardised ridge probe from the states at ``site`` to the
    feature (running tokens): one number comparable across discrete and continuous
    features, to pick which features get the (costly) intervention."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = _fit_rows(table, name, t, max_rows, seed)
    y = table.feature(name, rows)
    if rows.size < 20 or np.ptp(y) == 0:
        return None
    with threadpool_limits(limits=1, user_api="blas"):
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        X = table.hidden(site, rows=rows)
        return float(probe.fit(X, y).score(X, y))


def _fit_rows(table: Any, name: str, t: int, max_rows: int, seed: int) -> np.ndarray:
    """Rows where the feature is defined and the token runs at t (subsampled, seeded)."""
    rows = np.isfinite(table.feature(name))
    if t != H0:
        rows &= table.running[:, t]
    rows = np.flatnonzero(rows)
    if rows.size > max_rows:
        rows = np.sort(np.random.default_rng([seed, t + 1]).choice(rows, max_rows, replace=False))
    return rows


def pick_features(table: Any, names: list[str], site: str, t: int, per_kind: int, max_rows: int,
                  seed: int) -> tuple[list[str], dict[str, float | None]]:
    """The ``per_kind`` most decodable features of each kind at t (see :func:`decodability`)."""
    scores = {n: decodability(table, n, site, t, max_rows, seed) for n in names}
    picked: list[str] = []
    for kind in ("execution", "static"):
        ranked = sorted((n for n in names if table.specs[n].kind == kind and scores[n] is not None),
                        key=lambda n: -scores[n])
        picked.extend(ranked[:per_kind])
    return picked, scores


def _policy_notes(model: Any, sites: dict[int, str], planted: bool = False) -> list[str]:
    if planted:  # the policy is not deciding: the rule's depths are forced in every pass
        return ["planted halting rule (depth_fn): every pass, clean and ablated, runs the rule's depths, which "
                "read the task's features, not the hidden state — exit depth cannot move by construction "
                "(a |Δdepth| of 0 is the expected outcome); the accuracy changes are what this suite measures here"]
    policy = getattr(model, "policy", None)
    notes = []
    if policy is not None and policy.needs_full_distribution():
        notes.append("the policy picks depths from a scouting pass with hooks off: exit depths cannot move; "
                     "read the expected-depth change")
    if getattr(policy, "timing", None) in ("early", "fixed") and any(t != H0 for t in sites):
        notes.append(f"{getattr(policy, 'timing')} policy: depths are fixed before the loop, so ablating at t >= 0 "
                     "cannot change exit depth (use iterations=h0 for the decision's input)")
    return notes


def _headline(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind, the feature whose removal moved exit depth most, with its control."""
    out: dict[str, Any] = {}
    for kind in ("execution", "static"):
        rows = [c for c in checks if c["kind"] == kind]
        if not rows:
            continue
        best = max(rows, key=lambda c: c["tests"]["exit_depth_abs_change"]["effect"])
        test = best["tests"]["exit_depth_abs_change"]
        out[f"{kind}: feature"] = f"{best['feature']} @ {best['label']}"
        out[f"{kind}: |Δdepth|"] = test["effect"]
        out[f"{kind}: random |Δdepth|"] = f"{test['control_mean']:.3f} ± {test['control_std']:.3f}"
        out[f"{kind}: p"] = test["p"]
    return out


def plot_causal(checks: list[dict[str, Any]]):
    """Effect of removing each feature's probe direction (coloured by kind) next to
    random directions (grey: each draw; bar: mean ± std), for |Δ exit depth| and accuracy drop."""
    from matplotlib.figure import Figure

    colors = {"static": "#4c72b0", "execution": "#dd8452"}
    panels = (("exit_depth_abs_change", "mean |Δ exit depth| (ablated tokens)"),
              ("accuracy_drop", "instance accuracy drop"))
    fig = Figure(figsize=(max(6.0, 0.7 * len(checks) + 3), 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    x = np.arange(len(checks))
    for ax, (metric, title) in zip(axes, panels):
        for i, c in enumerate(checks):
            ctrl = np.asarray(c["control"][metric], dtype=float)
            ax.scatter(np.full(ctrl.size, i + 0.15), ctrl, s=8, color="grey", alpha=0.6)
            if ctrl.size:
                ax.errorbar(i + 0.15, ctrl.mean(), yerr=ctrl.std(ddof=1) if ctrl.size > 1 else 0, fmt="_",
                            color="black", capsize=3)
            ax.bar(i - 0.15, c["probe"][metric], width=0.3, color=colors.get(c["kind"], "grey"))
        ax.set_xticks(x, [f"{c['feature']}\n{c['label']}" for c in checks], fontsize=7, rotation=30, ha="right")
        ax.set_title(title, fontsize=9)
        ax.axhline(0, color="black", lw=0.6)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[k], label=f"probe direction ({k})") for k in ("execution", "static")]
    handles.append(Line2D([], [], marker="o", ls="", color="grey", label="random directions (mean ± std)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    return fig
