"""Time and memory of the probe suites against the number of instances.

``bench_probe`` collects N instances and runs the suites for each N, timing
collection and every suite separately and recording the peak memory traced
by ``tracemalloc`` (numpy buffers are traced; torch's allocator is not, so the
model's own activations are excluded — one batch, bounded by ``batch_size``)
and the process's peak RSS. It then scales the largest measured point
linearly to ``target_answer_tokens`` (the paper's ~200k BREVO answer tokens;
every stage is linear in the rows) and reports the measured log-log growth
exponent so the linearity can be checked; extrapolated numbers are marked. The library returns a dict; the CLI or docs print it.
"""

from __future__ import annotations

import resource
import time
import tracemalloc
from typing import Any, Sequence

import numpy as np

from anira.errors import AniraError

PAPER_ANSWER_TOKENS = 200_000


def _default_model(task_name: str = "brevo", policy: str = "anira-o") -> tuple[Any, Any, str]:
    import anira

    task = anira.default_registry().task(task_name)()
    hi = task.ranges.test_id[1]
    cfg = anira.preset_config("tiny", vocab_size=task.vocab_size, max_len=task.max_len(hi),
                              max_iters=task.default_max_iters)
    return anira.build_model(cfg, policy, seed=0).eval(), task, f"untrained tiny {task_name} {policy}"


def bench_probe(
    checkpoint: str | None = None,
    *,
    ns: Sequence[int] = (250, 500, 1000, 2000),
    suites: Sequence[str] = ("attribution", "decision"),
    seed: int = 0,
    batch_size: int = 64,
    target_answer_tokens: int = PAPER_ANSWER_TOKENS,
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Measure the probe pipeline for each N in ``ns`` on one checkpoint (default:
    an untrained tiny BREVO ANIRA-O model) and extrapolate to the paper's scale."""
    import torch

    from anira.probes.collect import collect
    from anira.probes.run import probe_table

    if not ns or any(int(n) < 1 for n in ns):
        raise AniraError("ns must be positive instance counts")
    if checkpoint is None:
        model, task, what = _default_model()
    else:
        from anira.checkpoint import load_checkpoint

        ck = load_checkpoint(checkpoint)
        model, task, what = ck.model, ck.task, str(ck.path)
    options = options or {name: {"correct_only": False} for name in suites}  # untrained models solve nothing
    with torch.no_grad():  # warm-up (imports, allocator, first-call costs): not recorded
        probe_table(collect(model, task, n=min(int(n) for n in ns), seed=seed + 1, batch_size=batch_size),
                    suites=list(suites), options=options, seed=seed)
    rows = []
    for n in sorted(int(n) for n in ns):
        tracemalloc.start()
        t0 = time.perf_counter()
        with torch.no_grad():
            table = collect(model, task, n=n, seed=seed, batch_size=batch_size)
        t1 = time.perf_counter()
        result = probe_table(table, suites=list(suites), options=options, seed=seed)
        t2 = time.perf_counter()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        answer_tokens = int(table["is_answer"].sum())
        rows.append({
            "n_instances": n,
            "answer_tokens": answer_tokens,
            "table_rows": table.n_rows,
            "collect_s": t1 - t0,
            "suites_s": {s.name: s.seconds for s in result.suites},
            "status": {s.name: s.status for s in result.suites},
            "total_s": t2 - t0,
            "peak_traced_mb": peak / 2**20,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        })
    out: dict[str, Any] = {
        "model": what,
        "task": task.name,
        "suites": list(suites),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    last = rows[-1]
    scale = target_answer_tokens / max(last["answer_tokens"], 1)
    out["extrapolated"] = {
        "answer_tokens": target_answer_tokens,
        "n_instances": int(round(last["n_instances"] * scale)),
        # every stage is linear in the rows (collection, Gram matrices, Newton steps of the
        # probes), so the largest measured point scaled linearly is the estimate
        "total_s": last["total_s"] * scale,
        "collect_s": last["collect_s"] * scale,
        "peak_traced_mb": last["peak_traced_mb"] * scale,
        "note": "linear extrapolation from the largest measured N; not measured",
    }
    if len(rows) >= 3:  # the measured growth, to check the linear assumption
        tokens = np.array([r["answer_tokens"] for r in rows], dtype=float)
        total = np.array([r["total_s"] for r in rows])
        out["extrapolated"]["measured_time_exponent"] = float(np.polyfit(np.log(tokens), np.log(total), 1)[0])
    return out
