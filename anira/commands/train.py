"""``anira train``: train (or resume) a model; progress bar, signals, output.

The JSON printed with ``--json`` is documented in docs/training.md (schema 1).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from anira.commands.common import check_out_dir
from anira.errors import AniraError

SCHEMA_VERSION = 1


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model on a task with a halting policy",
        description="Train a recurrent Transformer. Works under `torchrun --nproc-per-node N` (DDP). "
                    "See docs/training.md.",
    )
    p.add_argument("--task", help="task name (see `anira tasks list`); default: the preset's task")
    p.add_argument("--policy", help="halting policy (see `anira plugins list`), e.g. fixed, anira-e, anira-o")
    p.add_argument("--preset", help="training preset, e.g. tiny-mano or paper-mano (see --list-presets); "
                                    "default: tiny-<task> when it exists")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting with a dotted key: train.lr=3e-4, model.d_model=128, "
                        "policy.gamma=0.05, task.train=3,8 (repeatable)")
    p.add_argument("--out", help="run directory (checkpoints, metrics.jsonl); must be new unless --resume")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (--task/--policy may be omitted)")
    p.add_argument("--steps", type=str, default=None, help="total optimizer steps (same as --set train.steps=N)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (same as --set train.device=...)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (schema in docs/training.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    p.add_argument("--list-presets", action="store_true", help="list the training presets and exit")
    p.set_defaults(func=cmd_train)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _list_presets(as_json: bool) -> int:
    from anira.presets import PRESETS

    rows = [{"name": p.name, "task": p.task, "description": p.description, "model_preset": p.model_preset,
             "model": p.model, "policy_options": p.policy_options, "task_options": {k: list(v) for k, v in p.task_options.items()},
             "train": p.train} for p in PRESETS.values()]
    if as_json:
        print(json.dumps({"schema": SCHEMA_VERSION, "presets": rows}, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<12} {r['task']:<6} {r['description']}")
    return 0


def build_spec(args: argparse.Namespace, registry: Any):
    """The RunSpec the command line describes (preset, then --set, --steps, --device)."""
    from anira.presets import default_spec, get_preset
    from anira.training.config import apply_overrides
    from anira.training.rundir import read_run_spec

    if args.resume and not (args.task or args.policy or args.preset):
        spec = read_run_spec(args.out)  # continue as recorded; --set may still change resumable fields
    else:
        preset = get_preset(args.preset) if args.preset else None
        task = args.task or (preset.task if preset else None)
        if not task:
            raise AniraError("--task is required (or a --preset that names one)")
        if not args.policy:
            raise AniraError("--policy is required (e.g. fixed, anira-e, anira-o)")
        registry.task(task)
        registry.policy(args.policy)
        spec = preset.spec(args.policy, task) if preset else default_spec(task, args.policy)
    sets = list(args.sets)
    if args.steps is not None:
        sets.append(f"train.steps={args.steps}")
    if args.device is not None:
        sets.append(f"train.device={args.device}")
    return apply_overrides(spec, sets, registry)


class _Progress:
    """A tqdm bar showing loss, answer-token accuracy, mean exit depth and the last eval."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.postfix: dict[str, str] = {}

    def on_start(self, trainer, start_step: int, total: int) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def on_step(self, step: int, record) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if record:
            self.postfix.update(loss=f"{record['loss']:.3f}", tok_acc=f"{record['token_acc']:.3f}",
                                depth=f"{record['mean_depth']:.2f}")
            self.bar.set_postfix(self.postfix, refresh=False)

    def on_eval(self, step: int, records) -> None:
        if self.bar is None:
            return
        for r in records:
            tag = "id" if r["split"] == "test_id" else "ood"
            self.postfix[f"{tag}_acc"] = f"{r['acc']:.3f}"
            self.postfix[f"{tag}_depth"] = f"{r['mean_depth']:.2f}"
        self.bar.set_postfix(self.postfix)

    def on_checkpoint(self, step: int, path) -> None:
        pass

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    from anira.registry import default_registry
    from anira.training.loop import Trainer

    if args.list_presets:
        return _list_presets(args.json)
    if not args.out:
        raise AniraError("--out DIR is required")
    if not args.resume:
        check_out_dir(args.out)  # fail before building the data, not at the first checkpoint
    registry = default_registry()
    spec = build_spec(args, registry)
    main = _is_main()
    # a progress bar only on a terminal: logs and pipes get the summary alone
    progress = _Progress(enabled=main and not args.quiet and sys.stderr.isatty())
    trainer = Trainer(spec, args.out, resume=args.resume, registry=registry, callbacks=[progress])

    received: list[int] = []

    def on_signal(signum, frame):  # first signal: save and stop; a second SIGINT aborts
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        trainer.request_stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = trainer.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        progress.close()
    if not main:
        return 0
    payload = {"schema": SCHEMA_VERSION, **result.to_dict()}
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        _print_summary(result, args.out)
    if result.status == "interrupted":
        return 128 + (received[0] if received else signal.SIGINT)
    return 0


def _print_summary(result, out: str) -> None:
    if result.status == "interrupted":
        print(f"interrupted at step {result.step}; checkpoint saved: {result.checkpoint}")
        print(f"continue with: anira train --out {out} --resume")
        return
    print(f"trained to step {result.step} in {result.wall_s:.1f} s; checkpoint: {result.checkpoint}")
    for r in result.last_eval:
        per = " ".join(f"{d['difficulty']}:{d['acc']:.2f}" for d in r["per_difficulty"])
        print(f"  {r['split']:<8} acc {r['acc']:.3f}  mean depth {r['mean_depth']:.2f}  per difficulty {per}")
