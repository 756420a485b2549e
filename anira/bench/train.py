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

#: the paper's configurations (PAPER.md §3; issue 4's benchmark sizes)
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


def _batches(task: Any, batch: int, seq: int, n: int, seed: int) -> list[Any]:
    from anira.task import collate
    from anira.training.data import to_torch, train_example

    out = []
    for s in range(n):
        examples = [train_example(task, seed, s, j) for j in range(batch)]
        out.append(to_torch(collate(examples, length=seq)))
    return out


def bench_train(config_name: str = "mano", device: str = "cuda", steps: int = 30, warmup: int = 5, *,
                policy: str = "anira-o", amp: bool = True, compile: bool = False,
                batch_size: int | None = None, seq_len: int | None = None, pool: int = 4,
                seed: int = 0) -> dict[str, Any]:
    """Training throughput of the paper's ``mano`` or ``brevo`` configuration.

    Runs full training steps (forward, loss, backward, clipping, AdamW) on a
    pool of real task batches padded to ``seq_len``; data generation is measured
    separately (``data_examples_per_s``, one CPU process) because the trainer
    generates batches ahead in DataLoader workers.
    """
    from anira.model import build_model
    from anira.objective import compute_loss
    from anira.presets import get_preset
    from anira.registry import default_registry
    from anira.training.loop import make_optimizer
    from anira.training.periodic_eval import autocast_for

    if config_name not in BENCH_CONFIGS:
        raise AniraError(f"unknown benchmark config {config_name!r}; known: {', '.join(BENCH_CONFIGS)}")
    bc = BENCH_CONFIGS[config_name]
    batch = batch_size or bc["batch"]
    seq = seq_len or bc["seq"]
    registry = default_registry()
    spec = get_preset(bc["preset"]).spec(policy)
    task = spec.build_task(registry)
    cfg = spec.model_config(task)
    if seq > cfg.max_len:
        cfg = cfg.replace(max_len=seq)
    if task.max_len(task.ranges.train[1]) > seq:
        raise AniraError(f"seq_len {seq} is shorter than the task's longest training example")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AniraError("CUDA is not available")
    t0 = time.perf_counter()
    batches = _batches(task, batch, seq, pool, seed)
    data_rate = batch * pool / (time.perf_counter() - t0)
    batches = [b.to(dev) for b in batches]
    model = build_model(cfg, policy, registry=registry, seed=seed, **spec.effective_policy_options(registry)).to(dev)
    model.train()
    optimizer = make_optimizer(model, spec)
    forward = torch.compile(model) if (compile and dev.type == "cuda") else model
    use_amp = amp and dev.type == "cuda"

    def step(b: Any) -> None:
        with autocast_for(dev, use_amp):
            out = forward(b.tokens)
            terms = compute_loss(model, out, b.tokens, b.loss_mask, b.token_mask)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.grad_clip or 1.0)
        optimizer.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for i in range(warmup):
        step(batches[i % pool])
    sync()
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(batches[i % pool])
        sync()
        times.append(time.perf_counter() - t)
    step_time = statistics.median(times)
    tokens = batch * seq
    real = float(sum(int(b.token_mask.sum()) for b in batches)) / pool
    fl = flops_per_token(cfg, seq, policy)
    achieved = fl["train"] * tokens / step_time
    peak = peak_flops(dev)
    return {
        "config": config_name, "policy": policy, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "batch": batch, "seq": seq, "d_model": cfg.d_model, "d_ff": cfg.d_ff, "max_iters": cfg.max_iters,
        "params": sum(p.numel() for p in model.parameters()),
        "amp_bf16": use_amp, "compile": bool(compile and dev.type == "cuda"),
        "steps_timed": steps, "step_time_s": step_time, "step_time_mean_s": statistics.mean(times),
        "tokens_per_s": tokens / step_time,
        "real_tokens_per_s": real / step_time,  # non-padding tokens
        "flops_per_token_train": fl["train"],
        "model_flops_per_s": achieved,
        "peak_flops": peak,
        "mfu": None if peak is None else achieved / peak,
        "data_examples_per_s": data_rate,  # one CPU process generating examples
        "paper_tokens_per_s": PAPER_MANO_TOKENS_PER_S if config_name == "mano" else None,
        "flop_formula": "3 * [(n_prelude + D*n_core + n_coda) * (2*(4d^2 + 3*d*d_ff) + 4*seq*d) + 2*d*V + decider]",
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
