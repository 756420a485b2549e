"""Compare halting policies on the same runs: train, ``anira eval``, ``anira probe``.

``compare_policies`` trains one run per (task, policy) with the same code path
as ``anira train`` (:func:`anira.commands.train.build_spec` and
:class:`anira.training.loop.Trainer`), evaluates it with
:func:`anira.evaluate.evaluate_checkpoint` and probes it with
:func:`anira.probes.run.probe_checkpoint`. Training-free policies (timing
``"training-free"``) are not trained: they are swapped onto the task's
``fixed`` run with :func:`anira.plugins.policies.exit_criteria.with_policy`
(``fixed`` is trained for that even when not asked for, and gets its own row).

Every row is JSON-able. A policy that fails (training or evaluation raises, or
the decision probe gives no verdict, e.g. at accuracy 0) gets a row with
``status`` and ``reason`` instead of stopping the comparison. ``compare.json``
and ``compare.md`` in ``out_dir`` are rewritten atomically after every row.
:func:`markdown_table` renders the rows next to the static description of each
policy (:data:`POLICY_TABLE`, the table of docs/policies.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from anira.errors import AniraError
from anira.fileio import atomic_write_bytes

SCHEMA_VERSION = 1
DEFAULT_TASKS = ("mano", "brevo")
TRAINING_FREE = "training-free"
BASE_POLICY = "fixed"  # what training-free policies are applied to

#: decision time, training signal, inference rule, extra parameters: copied from the
#: table at the top of docs/policies.md (tests/test_compare.py checks they match).
POLICY_TABLE: dict[str, tuple[str, str, str, str]] = {
    "oracle": ('early: once, from h0 (a supervised upper bound, not a method)',
               "CE with exits teacher-forced to the target depth + `weight`·(−log q(target)), target = the task's per-token complexity rescaled to 1..D",
               'mode of q (complexity is not read)',
               "decider FFN, D outputs; `weight` (1.0), `c_min`/`c_max` (None: the batch's range)"),
    "fixed": ("none (always D)", "CE only", "every token runs D", "none"),
    "pattern": ("fixed per position", "CE only", "depth given per position (`depths=[...]`, cycled)", "none"),
    "anira-e": ("early: once, from the Prelude output h0",
                "CE through a straight-through Gumbel-softmax sample + γ·KL(q‖p)",
                "mode of q (`rule=\"mode\"`; `median`/`mean` selectable)", "decider FFN, D outputs"),
    "anira-o": ("online: after every iteration",
                "CE through a straight-through inverse-CDF sample + γ·KL(q‖p)",
                "median: first d with F(d) ≥ 0.5 (`threshold` configurable; `mode`, `mean` selectable)",
                "decider FFN, 1 output"),
    "mor-token": ("early: once, from h0",
                  "CE through the router weight gating the last state update (straight-through) + "
                  "`balance_weight`·D·Σ_d f_d·P_d",
                  "top-1 depth argmax q (same as training)", "router FFN, D outputs"),
    "mor-expert": ("online: after every iteration",
                   "CE through the router score gating the admitted update (straight-through) + "
                   "`aux_weight`·BCE(auxiliary router, top-k selection)",
                   "causal: continue while the auxiliary router's P(selected) > `threshold` (0.5)",
                   "router FFN, 1 output; auxiliary router FFN, 1 output"),
    "act": ("online: after every iteration",
            "CE on the Coda reading the mixture Σ w_n h_n + τ·(N + R) ponder cost (gradient through the weights and R)",
            "deterministic, the same as in training: halt once Σ p_n ≥ 1 − ε (else at D)",
            "decider FFN, 1 output; `epsilon` (0.01), `tau` (0.01)"),
    "pondernet": ("online: after every iteration",
                  "all D iterations run; Σ_n p_n·CE(y, ŷ_n) over per-step Coda predictions + β·KL(p ‖ geometric(λ_p))",
                  "median: first n with Σ_{m≤n} p_m ≥ 0.5",
                  "decider FFN, 1 output; `beta` (0.01), `lambda_p` (0.2)"),
    "exit-kl": ("training-free: after every iteration",
                "none (apply to a `fixed`-trained model; training = `fixed`)",
                "stop when KL(p_t ‖ p_{t−1}) < `threshold` (5e-4), p_t = softmax of the Coda's logits from h_t",
                "none; `threshold`, `min_iters` (1)"),
    "exit-latent": ("training-free: after every iteration", "none (as `exit-kl`)",
                    "stop when ‖h_t − h_{t−1}‖ / ‖h_{t−1}‖ < `threshold` (0.03)",
                    "none; `threshold`, `min_iters` (1)"),
    "exit-entropy": ("training-free: after every iteration", "none (as `exit-kl`)",
                     "stop when abs(H(p_t) − H(p_{t−1})) < `threshold` (1e-3)",
                     "none; `threshold`, `min_iters` (1)"),
}

#: measured columns of a row (None where not measured)
MEASURED = ("id_accuracy", "ood_accuracy", "mean_exit_depth", "cost_ratio",
            "spearman_exit_depth", "spearman_expected_depth", "verdict")

Progress = Callable[[str], None]


def _clean(value: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, AniraError) else text


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _preset_name(preset_for_task: Callable[[str], str] | Mapping[str, str] | str | None, task: str) -> str:
    if preset_for_task is None:
        return f"tiny-{task}"
    if isinstance(preset_for_task, str):
        return preset_for_task
    if isinstance(preset_for_task, Mapping):
        return preset_for_task.get(task, f"tiny-{task}")
    return preset_for_task(task)


def policy_timing(registry: Any, name: str) -> str:
    """The policy class's ``timing`` attribute (``type(model.policy).timing``)."""
    return str(getattr(registry.policy(name), "timing", "unknown"))


def _empty_row(task: str, policy: str, timing: str, preset: str) -> dict[str, Any]:
    row: dict[str, Any] = {"task": task, "policy": policy, "timing": timing, "preset": preset,
                           "status": "ok", "reason": None, "trained": timing != TRAINING_FREE,
                           "base_run": None, "run_dir": None, "steps": None,
                           "train_s": 0.0, "eval_s": 0.0, "probe_s": 0.0, "wall_s": 0.0,
                           "mean_expected_depth": None, "probe_suites": {}}
    row.update({k: None for k in MEASURED})
    return row


def _fill_eval(row: dict[str, Any], result: Any) -> None:
    id_m = result.in_distribution.metrics if result.in_distribution else None
    ood_m = result.ood.metrics if result.ood else None
    if id_m is not None:
        row.update(id_accuracy=id_m.accuracy, mean_exit_depth=id_m.mean_exit_depth,
                   mean_expected_depth=id_m.mean_expected_depth, cost_ratio=id_m.cost_ratio,
                   spearman_exit_depth=id_m.spearman_exit_depth,
                   spearman_expected_depth=id_m.spearman_expected_depth)
    if ood_m is not None:
        row["ood_accuracy"] = ood_m.accuracy


def _fill_probe(row: dict[str, Any], probe: Any) -> None:
    row["probe_suites"] = {s.name: {"status": s.status, "reason": s.reason or None} for s in probe.suites}
    row["verdict"] = probe.verdict
    decision = probe.suite("decision")
    if probe.verdict is None:
        why = "decision suite not run" if decision is None else (decision.reason or decision.status)
        row["status"] = "incomplete"
        row["reason"] = f"no decision verdict: {why}"


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_clean(data), indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def _spec(task: str, policy: str, preset: str, run_dir: Path, *, steps: int | None, device: str, seed: int,
          overrides: Sequence[str], registry: Any) -> Any:
    """The RunSpec ``anira train --task --policy --preset --set ... --steps --device`` builds."""
    from anira.commands.train import build_spec

    args = argparse.Namespace(resume=False, task=task, policy=policy, preset=preset, out=str(run_dir),
                              sets=[f"train.seed={seed}", *overrides],
                              steps=None if steps is None else str(steps), device=device)
    return build_spec(args, registry)


def _train(spec: Any, run_dir: Path, registry: Any) -> Any:
    """Train (or finish) one run with the trainer ``anira train`` uses."""
    from anira.checkpoint import latest_checkpoint
    from anira.training.loop import Trainer

    resume = run_dir.is_dir() and latest_checkpoint(run_dir) is not None  # finish an interrupted comparison
    return Trainer(spec, run_dir, resume=resume, registry=registry).run()


def compare_policies(
    policies: Sequence[str],
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    preset_for_task: Callable[[str], str] | Mapping[str, str] | str | None = None,
    steps: int | None = None,
    out_dir: str | Path,
    device: str | None = None,
    seed: int = 0,
    train_overrides: Sequence[str] = (),
    eval_n: int = 256,
    probe_n: int = 2000,
    suites: Sequence[str] | None = ("decision",),
    progress: Progress | None = None,
    probe_options: Mapping[str, Mapping[str, Any]] | None = None,
    registry: Any = None,
    trained: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Train, evaluate and probe every policy on every task; return one row each.

    ``preset_for_task``: a preset name for every task, a mapping or a function
    task -> preset (default ``tiny-<task>``). ``steps`` overrides the preset's
    steps; ``train_overrides`` are ``anira train --set`` items applied to every
    run. ``suites``: probe suites (None: every registered suite);
    ``probe_options``: per-suite options as ``anira probe --option`` gives them,
    e.g. ``{"decision": {"correct_only": False}}``. ``trained``: a directory of
    runs already trained elsewhere (e.g. on a GPU machine), one per task and
    policy named ``<task>-<policy>`` (a run or checkpoint directory); they are
    evaluated and probed instead of trained, and training-free policies go onto
    ``<task>-fixed``. Rows follow
    the order of ``tasks``, then ``policies`` (``fixed`` first when a
    training-free policy needs it and it was not asked for). Unknown policies,
    tasks or presets raise :class:`AniraError` before any work.
    """
    from anira.evaluate import evaluate, evaluate_checkpoint
    from anira.presets import get_preset
    from anira.probes.run import probe_checkpoint, probe_model
    from anira.registry import default_registry

    registry = registry or default_registry()
    policies = list(dict.fromkeys(policies))
    tasks = list(dict.fromkeys(tasks))
    if not policies:
        raise AniraError("no policy to compare")
    if not tasks:
        raise AniraError("no task to compare on")
    timings = {p: policy_timing(registry, p) for p in policies}  # unknown policy: AniraError
    for task in tasks:
        registry.task(task)
        if trained is None:
            get_preset(_preset_name(preset_for_task, task))
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise AniraError(f"steps must be a positive integer, got {steps!r}")
    if any(t == TRAINING_FREE for t in timings.values()) and BASE_POLICY not in policies:
        policies.insert(0, BASE_POLICY)
        timings[BASE_POLICY] = policy_timing(registry, BASE_POLICY)
    # trained policies first so that the base run exists before the exits use it
    order = [p for p in policies if timings[p] != TRAINING_FREE] + [p for p in policies if timings[p] == TRAINING_FREE]
    out_dir = Path(out_dir)
    device = resolve_device(device)
    # every run's spec before any work: a bad preset or --set item fails here, once
    specs = {} if trained is not None else {
        (t, p): _spec(t, p, _preset_name(preset_for_task, t), out_dir / t / p, steps=steps, device=device,
                      seed=seed, overrides=train_overrides, registry=registry)
        for t in tasks for p in order if timings[p] != TRAINING_FREE}
    # runs trained elsewhere: every one must exist (resolved once) before any work
    sources: dict[tuple[str, str], Path] = {}
    if trained is not None:
        from anira.checkpoint import resolve

        sources = {(t, p): resolve(Path(trained) / f"{t}-{p}")
                   for t in tasks for p in order if timings[p] != TRAINING_FREE}
    say = progress or (lambda message: None)
    config = {"policies": policies, "tasks": tasks, "steps": steps, "device": device, "seed": seed,
              "train_overrides": list(train_overrides), "eval_n": eval_n, "probe_n": probe_n,
              "suites": None if suites is None else list(suites),
              "probe_options": {k: dict(v) for k, v in (probe_options or {}).items()},
              "presets": {t: _preset_name(preset_for_task, t) for t in tasks},
              "trained": None if trained is None else str(trained)}
    rows: list[dict[str, Any]] = []
    probe_opts = {"suites": None if suites is None else list(suites), "n": probe_n, "seed": seed, "device": device,
                  "options": {k: dict(v) for k, v in (probe_options or {}).items()}}

    for task in tasks:
        preset = _preset_name(preset_for_task, task) if trained is None else "trained elsewhere"
        base_dir = out_dir / task / BASE_POLICY if trained is None else Path(trained) / f"{task}-{BASE_POLICY}"
        base_steps: int | None = None
        base_error: str | None = None
        task_rows: dict[str, dict[str, Any]] = {}
        for policy in order:
            row = _empty_row(task, policy, timings[policy], preset)
            run_dir = out_dir / task / policy
            row["run_dir"] = str(run_dir)
            start = time.perf_counter()
            try:
                if timings[policy] != TRAINING_FREE:
                    if trained is None:
                        say(f"{task}/{policy}: training ({preset})")
                        t0 = time.perf_counter()
                        result = _train(specs[(task, policy)], run_dir, registry)
                        row["train_s"] = time.perf_counter() - t0
                        row["steps"] = result.step
                        if result.status == "interrupted" or result.checkpoint is None:
                            raise AniraError(f"training stopped at step {result.step} ({result.status})")
                        source = run_dir
                    else:
                        from anira.checkpoint import read_config

                        source = sources[(task, policy)]
                        row["steps"] = int(read_config(source)["step"])
                        row["base_run"] = str(source)
                    if policy == BASE_POLICY:
                        base_steps = row["steps"]
                    say(f"{task}/{policy}: evaluating")
                    t0 = time.perf_counter()
                    evaluated = evaluate_checkpoint(source, device=device, n_per_difficulty=eval_n, seed=seed)
                    row["eval_s"] = time.perf_counter() - t0
                    _fill_eval(row, evaluated)
                    _write_json(run_dir / "eval.json", evaluated.to_dict())
                    say(f"{task}/{policy}: probing")
                    t0 = time.perf_counter()
                    probed = probe_checkpoint(source, label=f"{task}-{policy}", **probe_opts)
                else:
                    from anira.checkpoint import load_checkpoint
                    from anira.plugins.policies.exit_criteria import with_policy

                    if base_error is not None or base_steps is None:
                        raise AniraError(f"the {BASE_POLICY} run it applies to failed: {base_error or 'not trained'}")
                    row["base_run"] = str(base_dir)
                    row["steps"] = base_steps
                    ck = load_checkpoint(base_dir, device=device)
                    model = with_policy(ck.model, policy, registry=registry)
                    row["timing"] = str(getattr(type(model.policy), "timing", row["timing"]))
                    say(f"{task}/{policy}: evaluating on the {BASE_POLICY} run")
                    t0 = time.perf_counter()
                    evaluated = evaluate(model, ck.task, n_per_difficulty=eval_n, seed=seed, device=device,
                                         label=f"{task}-{policy}", checkpoint=str(ck.path))
                    row["eval_s"] = time.perf_counter() - t0
                    _fill_eval(row, evaluated)
                    _write_json(run_dir / "eval.json", evaluated.to_dict())
                    say(f"{task}/{policy}: probing")
                    t0 = time.perf_counter()
                    probed = probe_model(model, ck.task, label=f"{task}-{policy}", checkpoint=str(ck.path),
                                         registry=registry, **probe_opts)
                row["probe_s"] = time.perf_counter() - t0
                _fill_probe(row, probed)
                _write_json(run_dir / "probe.json", probed.to_dict())
            except Exception as exc:  # noqa: BLE001 - one failing policy must not stop the comparison
                row["status"] = "failed"
                row["reason"] = _one_line(exc)
                if policy == BASE_POLICY and base_steps is None:
                    base_error = row["reason"]
            row["wall_s"] = time.perf_counter() - start
            task_rows[policy] = row
            rows.append(row)
            _save(out_dir, config, rows)
            say(f"{task}/{policy}: {row['status']}" + (f" ({row['reason']})" if row["reason"] else ""))
        # report rows in the order asked (fixed first when added)
        ordered = [task_rows[p] for p in policies]
        del rows[len(rows) - len(ordered):]
        rows.extend(ordered)
        _save(out_dir, config, rows)
    return [_clean(r) for r in rows]


def _save(out_dir: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    _write_json(out_dir / "compare.json", {"schema": SCHEMA_VERSION, "config": config, "rows": rows})
    atomic_write_bytes(out_dir / "compare.md", (markdown_table(rows) + "\n").encode())


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def static_columns(policy: str, timing: str | None = None) -> tuple[str, str, str, str]:
    """(decision time, training signal, inference rule, extra parameters) of a policy;
    for a policy missing from :data:`POLICY_TABLE`, its timing and "see docs"."""
    if policy in POLICY_TABLE:
        return POLICY_TABLE[policy]
    unknown = "not in docs/policies.md's table"
    return (timing or "unknown", unknown, unknown, unknown)


HEADER = ("task", "policy", "decision time", "training signal", "inference rule", "extra parameters",
          "steps", "ID acc", "OOD acc", "mean depth (ID)", "cost ratio", "ρ(exit depth, cx)",
          "ρ(E[depth], cx)", "decision verdict", "status")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as a Markdown table: static description, then measured columns."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for r in rows:
        status = r.get("status", "ok")
        if r.get("reason"):
            status = f"{status}: {r['reason']}"
        cells = [
            r.get("task"), f"`{r.get('policy')}`", *static_columns(str(r.get("policy")), r.get("timing")),
            r.get("steps"), _cell(r.get("id_accuracy")), _cell(r.get("ood_accuracy")),
            _cell(r.get("mean_exit_depth"), 2), _cell(r.get("cost_ratio"), 2),
            _cell(r.get("spearman_exit_depth"), 2), _cell(r.get("spearman_expected_depth"), 2),
            r.get("verdict"), status,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)
