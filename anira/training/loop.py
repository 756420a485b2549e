"""The training loop.

AdamW, linear warm-up then constant LR, gradient clipping, seeded on-the-fly
data (see :mod:`anira.training.data`), periodic evaluation, metrics.jsonl,
atomic checkpoints, exact resume and DDP. The library never prints: progress
goes to :class:`Callback` objects (the CLI's progress bar is one).

Exactness of resume: a batch depends only on (seed, step); the torch RNG that
samples exits is re-seeded from (seed, step, rank) before every step; the LR is
a function of the step; AdamW state is restored from the checkpoint. So N steps
+ resume + N steps equals 2N steps bitwise on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from anira import checkpoint as ckpt
from anira import distributed
from anira.errors import AniraError
from anira.model import build_model
from anira.objective import compute_loss
from anira.training.config import RunSpec, uses_cudagraphs
from anira.training.data import StepBatches, TorchBatch, step_loader
from anira.training.pool import load_or_build_pool
from anira.training.periodic_eval import EvalSets, autocast_for, evaluate_range
from anira.training.rundir import check_run_dir, write_run_file


class Callback:
    """Receives progress; every method is optional."""

    def on_start(self, trainer: Trainer, start_step: int, total_steps: int) -> None: ...

    def on_step(self, step: int, record: dict[str, Any] | None) -> None:
        """After every step; ``record`` is the train record on logging steps, else None."""

    def on_eval(self, step: int, records: list[dict[str, Any]]) -> None: ...

    def on_checkpoint(self, step: int, path: Path) -> None: ...


@dataclass
class TrainResult:
    out: Path
    step: int  # last completed step
    status: str  # "completed" | "interrupted" | "target reached" (train.stop_at_acc)
    checkpoint: Path | None
    last_eval: list[dict[str, Any]] = field(default_factory=list)
    last_train: dict[str, Any] | None = None
    wall_s: float = 0.0  # this invocation
    total_wall_s: float = 0.0  # all invocations of the run

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "step": self.step, "status": self.status,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "last_eval": self.last_eval, "last_train": self.last_train,
            "wall_s": self.wall_s, "total_wall_s": self.total_wall_s,
        }


def _step_seed(seed: int, step: int, rank: int) -> int:
    # a 63-bit seed derived from (seed, step, rank), independent of the data streams
    return int(np.random.SeedSequence([seed, 2, step, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def network_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` but its policy's (what ``train.freeze_network`` freezes)."""
    policy = {id(p) for p in model.policy.parameters()}
    return [p for p in model.parameters() if id(p) not in policy]


def make_optimizer(model: nn.Module, spec: RunSpec) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (norm gains and biases are not decayed); the
    policy's parameters in groups of their own, at lr · ``train.decider_lr_mult``."""
    cfg = spec.train
    policy = {id(p) for p in model.policy.parameters()}
    groups = []
    for is_policy in (False, True):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in policy) == is_policy]
        for decayed in (True, False):
            group = [p for p in params if (p.dim() >= 2) == decayed]
            if group:
                groups.append({"params": group, "weight_decay": cfg.weight_decay if decayed else 0.0,
                               "lr_mult": cfg.decider_lr_mult if is_policy else 1.0, "policy": is_policy})
    # on CUDA the fused kernel updates every parameter in a few launches (the small
    # models trained here are launch-bound); on CPU the default path stays bitwise as before
    fused = True if all(p.is_cuda for g in groups for p in g["params"]) else None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


class Trainer:
    """Train the model a :class:`RunSpec` describes into the run directory ``out``."""

    def __init__(self, spec: RunSpec, out: str | Path, *, resume: bool = False, registry: Any = None,
                 callbacks: tuple[Callback, ...] | list[Callback] = ()) -> None:
        from anira.registry import default_registry

        self.spec = spec
        self.out = Path(out)
        self.resume = resume
        self.registry = registry or default_registry()
        self.callbacks = list(callbacks)
        self._stop_reason: str | None = None
        self._started_new = False  # this process wrote the run file of a new run

    # -- control ---------------------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to save a checkpoint and return at the next step boundary
        (safe to call from a signal handler)."""
        self._stop_reason = reason

    def _emit(self, method: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, method)(*args)

    # -- setup -----------------------------------------------------------------------------
    def _setup(self) -> None:
        spec = self.spec
        self.info, self.device = distributed.init(spec.train.device)
        self.task = spec.build_task(self.registry)
        self.model_config = spec.model_config(self.task)
        longest = self.task.max_len(self.task.ranges.train[1])
        if 0 < spec.train.pack_length < longest:
            raise AniraError(f"train.pack_length {spec.train.pack_length} is shorter than the task's longest "
                             f"training example ({longest} tokens)")
        self.policy_options = spec.effective_policy_options(self.registry)
        # every rank validates the directory (read-only); only rank 0 writes
        self.resume_from = check_run_dir(self.out, spec, self.resume)
        # rank 0 writes run.json below: a slower rank checking after it would take the
        # new run for an existing one, so every rank finishes its check first
        distributed.barrier()
        model = build_model(self.model_config, spec.policy, registry=self.registry, seed=spec.train.seed,
                            **self.policy_options)
        model.straight_through = spec.train.straight_through
        if spec.train.init_network_from and self.resume_from is None:  # a resume reads its own weights
            ckpt.load_network(model, spec.train.init_network_from, task=spec.task)
        if spec.train.freeze_network:  # no gradient, so no optimizer state and no update
            for p in network_parameters(model):
                p.requires_grad_(False)
        self.model = model.to(self.device)
        self.model.train()
        self.optimizer = make_optimizer(self.model, spec)
        self.start_step = 0
        self.prior_wall = 0.0
        if self.resume_from is not None:
            files = ckpt.read_config(self.resume_from).get("files", {})
            tensors, _ = ckpt._load_tensors(self.resume_from / ckpt.MODEL_FILE, files.get(ckpt.MODEL_FILE))
            ckpt.load_model_tensors(self.model, tensors, self.resume_from / ckpt.MODEL_FILE)
            state_path = self.resume_from / ckpt.STATE_FILE
            if not state_path.is_file():
                raise AniraError(f"{state_path}: file is missing; this checkpoint cannot be resumed")
            self.start_step, meta = ckpt.restore_train_state(self.optimizer, state_path, files.get(ckpt.STATE_FILE))
            self.prior_wall = float(json.loads(meta.get("wall_s", "0")))
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_run_file(self.out, spec)
            self._started_new = not self.resume
            metrics = self.out / ckpt.METRICS_FILE
            # the run's log restarts from the checkpoint's copy: records written after
            # the checkpoint (by a run that then died) would otherwise be duplicated
            text = ""
            if self.resume_from is not None and (self.resume_from / ckpt.METRICS_FILE).is_file():
                text = (self.resume_from / ckpt.METRICS_FILE).read_text(encoding="utf-8")
            ckpt.write_text_atomic(metrics, text)
        distributed.barrier()
        self.ddp = None
        forward_module: nn.Module = self.model
        if self.info.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=spec.train.find_unused_parameters,
            )
            forward_module = self.ddp
        self.cudagraphs = False
        if spec.train.compile and self.device.type == "cuda":
            forward_module = torch.compile(forward_module, mode=spec.train.compile_mode)
            self.cudagraphs = uses_cudagraphs(spec.train.compile_mode)
        self.forward_module = forward_module
        self.eval_sets = EvalSets(self.task, spec.train.eval_examples, spec.train.seed)

    # -- records -----------------------------------------------------------------------------
    def _write(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            with open(self.out / ckpt.METRICS_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")

    def _evaluate(self, step: int, elapsed: float) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        if self.info.is_main:
            cfg = self.spec.train
            splits = ["test_id"] + (["test_ood"] if cfg.eval_ood else [])
            for which in splits:
                rec = evaluate_range(self.model, self.task, which, self.eval_sets, cfg.eval_batch_size,
                                     amp=cfg.amp)
                rec = {"kind": "eval", "step": step, "elapsed_s": elapsed, **rec}
                self._write(rec)
                records.append(rec)
            self._emit("on_eval", step, records)
        distributed.barrier()
        return records

    def _checkpoint(self, step: int, elapsed: float) -> Path | None:
        path = None
        if self.info.is_main:
            dest = self.out / ckpt.CHECKPOINTS_DIR / ckpt.checkpoint_name(step)
            if dest.exists():  # already saved at this step (e.g. resumed, then stopped at once)
                path = dest
            else:
                cfg = self.spec
                config = ckpt.checkpoint_config(
                    step=step, model_config=self.model_config, policy=cfg.policy,
                    policy_options=self.policy_options, task=cfg.task, task_options=cfg.task_options,
                    train=cfg.train.to_dict(), run=cfg.to_dict(),
                )
                state = ckpt.train_state_tensors(self.optimizer, step,
                                                 {"wall_s": elapsed, "world_size": self.info.world_size})
                path = ckpt.write_checkpoint(dest, config, self.model, self.out / ckpt.METRICS_FILE, state)
            ckpt.commit_checkpoint(self.out, path, self.spec.train.keep_checkpoints)
            self._emit("on_checkpoint", step, path)
        distributed.barrier()
        return path

    # -- one step ----------------------------------------------------------------------------
    def _train_step(self, batch: TorchBatch, step: int, keep: bool = True) -> dict[str, float]:
        cfg = self.spec.train
        lr = cfg.lr_at(step)
        full_depth = cfg.full_depth_at(step)  # warm-up: every token at depth D, the policy frozen
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0 if (full_depth and group["policy"]) else lr * group["lr_mult"]
        torch.manual_seed(_step_seed(cfg.seed, step, self.info.rank))
        # per-token supervision from the task; only policies that ask for it use it (oracle)
        targets = None if batch.complexity is None else {"complexity": batch.complexity}
        if self.cudagraphs:
            # a new training iteration: CUDA-graph outputs of the previous one may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with autocast_for(self.device, cfg.amp):
            if full_depth:  # warm-up: every token at depth D, whatever the policy would choose
                forced = torch.full_like(batch.tokens, self.model.cfg.max_iters)
            else:
                forced = self.model.policy.teacher_exit_depths(self.model, batch.tokens, targets)
            if forced is None:
                out = self.forward_module(batch.tokens, **batch.layout)
            else:  # teacher forcing: the policy's own depths are replaced by its targets
                out = self.forward_module(batch.tokens, exit_depths=forced, **batch.layout)
            terms = compute_loss(self.model, out, batch.tokens, batch.loss_mask, batch.token_mask,
                                 targets=targets)
        n_loss = batch.loss_mask[:, :-1].sum()
        n_tok = batch.token_mask.sum()
        reg_weight = cfg.reg_weight_at(step)
        if reg_weight != 1.0:
            terms = dataclasses.replace(terms, total=terms.total - (1.0 - reg_weight) * terms.regularizer,
                                        regularizer=reg_weight * terms.regularizer)
        loss = terms.total
        if self.info.enabled:
            # DDP averages gradients over ranks; weight each rank's means by its share of
            # the global token counts so the result is the global batch's mean (exactly
            # what one process with the whole batch computes)
            counts = torch.stack([n_loss, n_tok]).to(torch.float64 if self.device.type == "cpu" else torch.float32)
            torch.distributed.all_reduce(counts)
            world = self.info.world_size
            w_ce = n_loss.to(counts.dtype) * world / counts[0]
            w_reg = n_tok.to(counts.dtype) * world / counts[1].clamp_min(1)
            w_ce, w_reg = w_ce.to(loss.dtype), w_reg.to(loss.dtype)
            loss = w_ce * terms.ce + w_reg * terms.regularizer + w_ce * (terms.total - terms.ce - terms.regularizer)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        split_norms = self._grad_norms() if keep else None
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        # kept only until the step's record is written (holding CUDA-graph outputs into the
        # next step would force the graphs to copy them)
        self._last = (out, terms, batch, grad_norm, lr, n_loss, n_tok, split_norms) if keep else None
        return {}

    @staticmethod
    def _expected_depth_by_difficulty(out: Any, batch: TorchBatch) -> dict[str, float]:
        """Mean expected depth over answer tokens per difficulty value of this rank's batch."""
        ans = batch.answer_mask
        depth = out.expected_depth.float() * ans
        if batch.example_index is None:  # a row per example
            sums, counts = depth.sum(1), ans.sum(1)
        else:  # packed rows: sum each example's tokens wherever they sit
            index = batch.example_index.clamp_min(0).reshape(-1)
            sums = depth.new_zeros(batch.n_examples).index_add_(0, index, depth.reshape(-1))
            counts = depth.new_zeros(batch.n_examples).index_add_(0, index, ans.reshape(-1).float())
        per_example = sums / counts.clamp_min(1)
        values = torch.stack([per_example, batch.difficulty.to(per_example)]).tolist()
        table: dict[int, list[float]] = {}
        for depth, difficulty, has in zip(values[0], values[1], (counts > 0).tolist()):
            if has:
                table.setdefault(int(difficulty), []).append(depth)
        return {str(d): sum(v) / len(v) for d, v in sorted(table.items())}

    def _grad_norms(self) -> Tensor:
        """(policy, network): gradient norms before clipping of the policy's parameters
        and of all the others, for the train record (the deciders' share of the signal)."""
        groups = [[], []]
        for group in self.optimizer.param_groups:
            groups[0 if group["policy"] else 1].extend(p.grad for p in group["params"] if p.grad is not None)
        return torch.stack([torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))
                            if grads else torch.zeros((), device=self.device) for grads in groups])

    def _train_record(self, step: int, interval_tokens: float, interval_examples: float, interval_s: float,
                      elapsed: float) -> dict[str, Any]:
        out, terms, batch, grad_norm, lr, n_loss, n_tok, split_norms = self._last
        with torch.no_grad():
            mask = batch.loss_mask[:, :-1]
            pred = out.logits[:, :-1].argmax(-1)
            correct = ((pred == batch.tokens[:, 1:]) & mask).sum()
            ans = batch.answer_mask
            by_difficulty = self._expected_depth_by_difficulty(out, batch)
            sums = [
                float(terms.ce) * float(n_loss), float(terms.regularizer) * float(n_tok),
                float(terms.total - terms.ce - terms.regularizer) * float(n_loss),
                float(correct), float(n_loss),
                float(out.exit_depth[ans].float().sum()), float(out.expected_depth[ans].float().sum()),
                float(ans.sum()), float(n_tok), interval_tokens, interval_examples,
            ]
        (ce, reg, extra, correct, n_l, depth, exp_depth, n_ans, n_t, tokens, examples) = distributed.all_reduce_sum(
            sums, self.device)
        ce, reg, extra = ce / max(n_l, 1), reg / max(n_t, 1), extra / max(n_l, 1)
        return {
            "kind": "train", "split": "train", "step": step,
            "loss": ce + reg + extra, "ce": ce, "reg": reg,
            "lr": lr, "reg_weight": self.spec.train.reg_weight_at(step - 1),
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "policy_grad_norm": float(split_norms[0]), "network_grad_norm": float(split_norms[1]),
            "full_depth": self.spec.train.full_depth_at(step - 1),
            "expected_depth_by_difficulty": by_difficulty,
            "token_acc": correct / max(n_l, 1),
            "mean_depth": depth / max(n_ans, 1), "mean_expected_depth": exp_depth / max(n_ans, 1),
            "tokens_per_s": tokens / max(interval_s, 1e-9), "examples_per_s": examples / max(interval_s, 1e-9),
            "elapsed_s": elapsed, "world_size": self.info.world_size,
        }

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        created = not self.out.exists()
        try:
            self._setup()
            return self._loop(t0)
        except BaseException:
            self._forget_failed_start(created)
            raise
        finally:
            distributed.shutdown()

    def _forget_failed_start(self, created: bool) -> None:
        """A new run that failed before its first checkpoint (a plugin bug in the first
        step, say) leaves nothing behind, so the same command can be run again."""
        if not self._started_new or ckpt.latest_checkpoint(self.out) is not None:
            return
        for name in (ckpt.RUN_FILE, ckpt.METRICS_FILE):
            (self.out / name).unlink(missing_ok=True)
        if created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def _loop(self, t0: float) -> TrainResult:
        cfg = self.spec.train
        total = cfg.steps
        step = self.start_step
        self._emit("on_start", self, step, total)
        last_eval: list[dict[str, Any]] = []
        last_train: dict[str, Any] | None = None
        last_ckpt: Path | None = self.resume_from
        # the step of the newest checkpoint; identical on every rank (paths exist on rank 0 only)
        saved_step: int | None = self.start_step if self.resume_from is not None else None
        status = "completed"
        if step < total:
            pool = None
            if cfg.data_pool:
                # built (in parallel) or read from the cache; concurrent runs share one build
                pool, _ = load_or_build_pool(self.task, self.spec.task_options, cfg.seed, cfg.data_pool,
                                             workers=cfg.num_workers)
            data = StepBatches(self.task, cfg.seed, cfg.batch_size, self.info.rank, self.info.world_size,
                               step, total, cfg.pad_to_max, pool, cfg.pack_length)
            # batches from a pool are array slices: worker processes would only add copies
            loader = iter(step_loader(data, 0 if pool is not None else cfg.num_workers))
            mark_t, mark_tokens, mark_examples = time.perf_counter(), 0.0, 0.0
            while step < total:
                check = not self.info.enabled or (step % cfg.log_every == 0)
                if check and distributed.any_rank(self._stop_reason is not None, self.device):
                    status = "interrupted"
                    break
                batch = next(loader).to(self.device)
                logging = (step + 1) % cfg.log_every == 0 or step + 1 == total
                self._train_step(batch, step, keep=logging)
                step += 1
                mark_tokens += batch.tokens.numel()
                mark_examples += batch.n_examples
                elapsed = self.prior_wall + time.perf_counter() - t0
                record = None
                if step % cfg.log_every == 0 or step == total:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    now = time.perf_counter()
                    record = self._train_record(step, mark_tokens, mark_examples, now - mark_t, elapsed)
                    if not all(math.isfinite(record[k]) for k in ("loss", "ce", "reg")):
                        self._write(record)
                        raise AniraError(f"training diverged at step {step} (loss {record['loss']}); lower train.lr")
                    self._write(record)
                    last_train = record
                    mark_tokens = mark_examples = 0.0
                    mark_t = time.perf_counter()
                self._emit("on_step", step, record)
                reached = False
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == total:
                    last_eval = self._evaluate(step, elapsed)
                    mark_t = time.perf_counter()  # evaluation time is not training throughput
                    if cfg.stop_at_acc > 0:  # rank 0 evaluated; every rank must agree to stop
                        hit = bool(last_eval) and last_eval[0]["acc"] >= cfg.stop_at_acc
                        reached = distributed.any_rank(hit, self.device)
                if reached:
                    status = "target reached"
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total or reached:
                    last_ckpt = self._checkpoint(step, elapsed) or last_ckpt
                    saved_step = step
                    mark_t = time.perf_counter()
                if reached:
                    break
            del loader
        if saved_step != step:
            # save on stop, and make sure the final state is always a checkpoint
            last_ckpt = self._checkpoint(step, self.prior_wall + time.perf_counter() - t0) or last_ckpt
        wall = time.perf_counter() - t0
        return TrainResult(out=self.out, step=step, status=status, checkpoint=last_ckpt, last_eval=last_eval,
                           last_train=last_train, wall_s=wall, total_wall_s=self.prior_wall + wall)


def train(spec: RunSpec, out: str | Path, *, resume: bool = False, registry: Any = None,
          callbacks: tuple[Callback, ...] | list[Callback] = ()) -> TrainResult:
    """Train (or resume) a run; see :class:`Trainer`."""
    return Trainer(spec, out, resume=resume, registry=registry, callbacks=callbacks).run()
