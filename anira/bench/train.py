"""Training benchmarks: throughput / model-FLOPs utilisation at the paper's sizes,
and the CPU time a tiny preset needs to reach a target accuracy.

FLOP count (stated so the numbers can be checked). Per token, one forward pass:

    layer(n) = 2·(4·d² + 3·d·d_ff) + 4·n·d

for every Transformer layer application (q, k, v, o projections; the three SwiGLU
matrices; QKᵀ and A·V over a context of n tokens, counted in full as in the
PaLM MFU convention). Training unrolls all D iterations for every token (the
static graph), so a token pays ``n_prelude + D·n_core + n_coda`` layer
applications, plus the unembedding ``2·d·V`` and the decider (ANIRA-E once:
``2·(d·I + I·D)``; ANIRA-O every iteration: ``D·2·(d·I + I)``). Training costs
3× the forward (backward = 2× forward). Tokens are batch × padded length: the
positions the hardware computes. MFU = achieved model FLOP/s ÷ the device's
dense bf16 peak.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.training.config import COMPILE_MODES, uses_cudagraphs

#: the paper's configurations (docs/paper.md §3)
BENCH_CONFIGS: dict[str, dict[str, Any]] = {
    "mano": {"preset": "paper-mano", "task": "mano", "batch": 512, "seq": 64},
    "brevo": {"preset": "paper-brevo", "task": "brevo", "batch": 64, "seq": 256},
}

#: dense bf16 peak FLOP/s by device-name fragment
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}

#: the paper's reference: 250k MANO steps × 512 × 64 tokens in about 7 hours on one A100
PAPER_MANO_TOKENS_PER_S = 250_000 * 512 * 64 / (7 * 3600)


def flops_per_token(cfg: ModelConfig, seq: int, policy: str) -> dict[str, float]:
    """Training FLOPs per token (see the module docstring for the formula)."""
    d, ff = cfg.d_model, cfg.d_ff
    layer = 2 * (4 * d * d + 3 * d * ff) + 4 * seq * d
    layers = cfg.n_prelude + cfg.max_iters * cfg.n_core + cfg.n_coda
    unembed = 2 * d * cfg.vocab_size
    inner = cfg.d_decider
    if policy == "anira-e":
        decider = 2 * (d * inner + inner * cfg.max_iters)
    elif policy == "anira-o":
        decider = cfg.max_iters * 2 * (d * inner + inner)
    else:
        decider = 0
    forward = layers * layer + unembed + decider
    return {"forward": float(forward), "train": float(3 * forward), "layer_applications": float(layers)}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def _padded_batches(task: Any, batch: int, seq: int, n: int, seed: int) -> list[Any]:
    """``n`` training batches (numpy) of ``batch`` examples padded to ``seq``."""
    from anira.task import collate
    from anira.training.data import train_example

    return [collate([train_example(task, seed, s, j) for j in range(batch)], length=seq) for s in range(n)]


def _batches(task: Any, batch: int, seq: int, n: int, seed: int, *, pack: bool = False) -> list[Any]:
    """``n`` training batches of ``batch`` examples padded to ``seq``, or packed into rows of ``seq``."""
    from anira.packing import pack_batch
    from anira.training.data import to_torch

    return [to_torch(pack_batch(b, seq) if pack else b) for b in _padded_batches(task, batch, seq, n, seed)]


#: execution modes ``bench_train`` can compare: eager, or a ``torch.compile`` mode
MODES = ("eager", *COMPILE_MODES)

#: matrix products ``bench_train`` can compare (anira/aligned.py): every dimension a
#: multiple of 8 (the model as built), or the plain nn.Linear products (the baseline)
GEMMS = ("aligned", "unaligned")

#: batch layouts ``bench_train`` can compare: a row per example padded to the length
#: (the paper's), or the same examples packed several to a row (anira/packing.py)
LAYOUTS = ("padded", "packed")


def _bench_spec(config_name: str, policy: str, sets: list[str] | tuple[str, ...], registry: Any) -> tuple[Any, int | None, int | None]:
    """The RunSpec for a benchmark config (paper sizes) or any training preset, with overrides."""
    from anira.presets import PRESETS, get_preset
    from anira.training.config import apply_overrides

    if config_name in BENCH_CONFIGS:
        bc = BENCH_CONFIGS[config_name]
        spec, batch, seq = get_preset(bc["preset"]).spec(policy), bc["batch"], bc["seq"]
    elif config_name in PRESETS:
        spec, batch, seq = get_preset(config_name).spec(policy), None, None
    else:
        raise AniraError(f"unknown benchmark config {config_name!r}; known: "
                         f"{', '.join(BENCH_CONFIGS)} or a training preset ({', '.join(sorted(PRESETS))})")
    return apply_overrides(spec, list(sets), registry), batch, seq


def bench_train(config_name: str = "mano", device: str = "cuda", steps: int = 30, warmup: int = 5, *,
                policy: str = "anira-o", amp: bool = True, modes: tuple[str, ...] | list[str] = ("eager",),
                gemms: tuple[str, ...] | list[str] = ("aligned",),
                layouts: tuple[str, ...] | list[str] = ("padded",),
                batch_size: int | None = None, seq_len: int | None = None, sets: tuple[str, ...] | list[str] = (),
                pool: int = 4, seed: int = 0) -> dict[str, Any]:
    """Training throughput of one configuration under one or more execution ``modes``.

    ``config_name`` is ``mano`` / ``brevo`` (the paper's sizes) or any
    training preset (e.g. ``tiny-brevo``), with ``sets`` (``--set`` overrides)
    applied. Each mode (``eager`` or a ``torch.compile`` mode) gets its own model
    with the same initial weights, once per entry of ``gemms``: ``aligned`` (the
    model as built: the unembedding and deciders' output layers keep every matrix
    dimension a multiple of 8, anira/aligned.py) or ``unaligned`` (the same model
    with those layers' plain ``nn.Linear`` products, the baseline; the aligned forms
    apply under ``torch.compile`` only, so in ``eager`` mode the two compute the same
    products), and once per entry of ``layouts``: ``padded`` (a row per example, padded
    to ``seq_len``) or ``packed`` (the same examples several to a row of ``seq_len``
    tokens, anira/packing.py). After warm-up
    (which includes compilation) the runs' timed steps alternate, in the order
    (mode, gemms, layout) for mode in ``modes`` for gemms in ``gemms`` for layout in
    ``layouts``, so drift hits them alike; ``speedup_vs_first`` is relative to the first run.
    ``tokens_per_s`` is examples × ``seq_len`` per second in every layout (the paper's
    count: its steps of 512 padded rows), ``computed_tokens_per_s`` the positions the
    hardware computes (rows × ``seq_len``), and MFU counts the computed positions. A step is a full
    training step (forward, loss, backward, clipping, AdamW as the trainer builds
    it) on a pool of real task batches padded to ``seq_len``. Data generation is
    measured separately (``data_examples_per_s``, one CPU process) because the
    trainer generates batches ahead in DataLoader workers.
    """
    from anira.aligned import set_aligned_gemms
    from anira.model import build_model
    from anira.objective import compute_loss
    from anira.packing import pack_batch
    from anira.registry import default_registry
    from anira.training.data import to_torch
    from anira.training.loop import make_optimizer
    from anira.training.periodic_eval import autocast_for

    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise AniraError(f"unknown benchmark mode(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(MODES)}")
    unknown = [g for g in gemms if g not in GEMMS]
    if unknown or not gemms:
        raise AniraError(f"unknown GEMM layout(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(GEMMS)}")
    unknown = [x for x in layouts if x not in LAYOUTS]
    if unknown or not layouts:
        raise AniraError(f"unknown batch layout(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(LAYOUTS)}")
    runs_wanted = [(mode, g, x) for mode in modes for g in gemms for x in layouts]
    if len(set(runs_wanted)) < len(runs_wanted):
        raise AniraError("each benchmark mode, GEMM layout and batch layout may be named only once")
    registry = default_registry()
    spec, batch, seq = _bench_spec(config_name, policy, sets, registry)
    task = spec.build_task(registry)
    cfg = spec.model_config(task)
    batch = batch_size or batch or spec.train.batch_size
    longest = task.max_len(task.ranges.train[1])
    seq = seq_len or seq or longest
    if seq > cfg.max_len:
        cfg = cfg.replace(max_len=seq)
    if longest > seq:
        raise AniraError(f"seq_len {seq} is shorter than the task's longest training example ({longest})")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AniraError("CUDA is not available")
    t0 = time.perf_counter()
    padded = _padded_batches(task, batch, seq, pool, seed)
    data_rate = batch * pool / (time.perf_counter() - t0)
    by_layout = {"padded": [to_torch(b).to(dev) for b in padded]}
    if "packed" in layouts:  # the same examples
        by_layout["packed"] = [to_torch(pack_batch(b, seq)).to(dev) for b in padded]
    use_amp = amp and dev.type == "cuda"
    options = spec.effective_policy_options(registry)

    def make_step(mode: str, gemm_layout: str, rows: str):
        model = build_model(cfg, spec.policy, registry=registry, seed=seed, **options).to(dev).train()
        set_aligned_gemms(model, gemm_layout == "aligned")
        optimizer = make_optimizer(model, spec)
        forward = model if mode == "eager" else torch.compile(model, mode=mode)
        cudagraphs = mode != "eager" and uses_cudagraphs(mode)

        def step(b: Any) -> None:
            targets = None if b.complexity is None else {"complexity": b.complexity}
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            with autocast_for(dev, use_amp):
                forced = model.policy.teacher_exit_depths(model, b.tokens, targets)
                out = forward(b.tokens, **b.layout) if forced is None else forward(b.tokens, exit_depths=forced, **b.layout)
                terms = compute_loss(model, out, b.tokens, b.loss_mask, b.token_mask, targets=targets)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.grad_clip or 1.0)
            optimizer.step()

        return model, step

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    runs: dict[tuple[str, str, str], Any] = {}
    for key in runs_wanted:
        model, step = make_step(*key)
        batches = by_layout[key[2]]
        t = time.perf_counter()
        for i in range(max(warmup, len(batches) if key[2] == "packed" else 0)):  # every packed shape compiles here
            step(batches[i % pool])
        sync()
        runs[key] = {"model": model, "step": step, "warmup_s": time.perf_counter() - t, "times": []}
    for i in range(steps):  # alternate the runs step by step
        for key in runs_wanted:
            t = time.perf_counter()
            runs[key]["step"](by_layout[key[2]][i % pool])
            sync()
            runs[key]["times"].append(time.perf_counter() - t)
    tokens = batch * seq
    real = float(sum(int(b.token_mask.sum()) for b in by_layout["padded"])) / pool
    fl = flops_per_token(cfg, seq, spec.policy)
    peak = peak_flops(dev)
    results = []
    for mode, gemm_layout, rows in runs_wanted:
        times = runs[mode, gemm_layout, rows]["times"]
        step_time = statistics.median(times)
        computed = float(sum(b.tokens.numel() for b in by_layout[rows])) / pool
        achieved = fl["train"] * computed / step_time
        results.append({
            "mode": mode, "gemms": gemm_layout, "layout": rows, "warmup_s": runs[mode, gemm_layout, rows]["warmup_s"],
            "step_time_s": step_time, "step_time_mean_s": statistics.mean(times),
            "steps_per_s": 1.0 / step_time, "tokens_per_s": tokens / step_time,  # examples x seq
            "computed_tokens_per_s": computed / step_time, "rows": computed / seq,
            "real_tokens_per_s": real / step_time,  # non-padding tokens
            "model_flops_per_s": achieved, "mfu": None if peak is None else achieved / peak,
        })
    base = results[0]["step_time_s"]
    for r in results:
        r["speedup_vs_first"] = base / r["step_time_s"]
    first_model = runs[runs_wanted[0]]["model"]
    return {
        "config": config_name, "policy": spec.policy, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "batch": batch, "seq": seq, "d_model": cfg.d_model, "d_ff": cfg.d_ff, "max_iters": cfg.max_iters,
        "params": sum(p.numel() for p in first_model.parameters()), "sets": list(sets),
        "amp_bf16": use_amp, "gemms": list(gemms), "layouts": list(layouts), "steps_timed": steps, "warmup_steps": warmup,
        "flops_per_token_train": fl["train"], "peak_flops": peak,
        "data_examples_per_s": data_rate,  # one CPU process generating examples
        "paper_tokens_per_s": PAPER_MANO_TOKENS_PER_S if config_name == "mano" else None,
        "flop_formula": "3 * [(n_prelude + D*n_core + n_coda) * (2*(4d^2 + 3*d*d_ff) + 4*seq*d) + 2*d*V + decider]",
        "modes": results,
    }


def time_to_accuracy(preset: str = "tiny-brevo", policy: str = "fixed", target: float = 0.9, *,
                     max_steps: int | None = None, eval_every: int = 100, eval_examples: int = 64,
                     device: str = "cpu", threads: int | None = None, seed: int = 0,
                     out: str | Path | None = None) -> dict[str, Any]:
    """Wall time for ``preset`` to reach ``target`` in-distribution exact-match accuracy.

    Trains with the preset's settings (evaluating every ``eval_every`` steps on
    ``eval_examples`` per difficulty), stopping at the first evaluation whose mean
    in-distribution accuracy reaches ``target``. ``reached`` is False if
    ``max_steps`` (default: the preset's steps) ran out first.
    """
    from anira.presets import get_preset
    from anira.registry import default_registry
    from anira.training.config import apply_overrides
    from anira.training.loop import Callback, Trainer

    registry = default_registry()
    spec = get_preset(preset).spec(policy)
    sets = [f"train.eval_every={eval_every}", f"train.eval_examples={eval_examples}", "train.eval_ood=false",
            "train.checkpoint_every=0", f"train.device={device}", f"train.seed={seed}"]
    if max_steps is not None:
        sets.append(f"train.steps={max_steps}")
    spec = apply_overrides(spec, sets, registry)
    if threads:
        torch.set_num_threads(threads)
    history: list[dict[str, Any]] = []

    class Stop(Callback):
        def on_start(self, trainer, start_step, total):
            self.trainer = trainer
            self.t0 = time.perf_counter()

        def on_eval(self, step, records):
            rec = records[0]
            history.append({"step": step, "acc": rec["acc"], "mean_depth": rec["mean_depth"],
                            "wall_s": time.perf_counter() - self.t0})
            if rec["acc"] >= target:
                self.trainer.request_stop("target reached")

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(out) if out else Path(tmp) / "run"
        stop = Stop()
        result = Trainer(spec, run_dir, registry=registry, callbacks=[stop]).run()
    hit = next((h for h in history if h["acc"] >= target), None)
    return {
        "preset": preset, "policy": policy, "target": target, "device": device,
        "threads": torch.get_num_threads(), "reached": hit is not None,
        "steps": hit["step"] if hit else result.step,
        "wall_s": hit["wall_s"] if hit else result.wall_s,  # includes the evaluations along the way
        "acc": hit["acc"] if hit else (history[-1]["acc"] if history else None),
        "history": history,
    }
