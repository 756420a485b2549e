"""``anira tasks list`` and ``anira tasks sample``: inspect the registered tasks.

The JSON printed with ``--json`` is documented in docs/tasks.md (schema 1).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from typing import TYPE_CHECKING, Any

from anira.commands.common import needs_subcommand
from anira.errors import AniraError

if TYPE_CHECKING:
    from anira.registry import Registry
    from anira.task import Example, Task

SCHEMA_VERSION = 1


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("tasks", help="list tasks and print generated examples")
    sub = parser.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=needs_subcommand(parser))

    p_list = sub.add_parser("list", help="the registered tasks, their knobs, ranges and features")
    p_list.add_argument("--json", action="store_true", help="print JSON (schema in docs/tasks.md)")
    p_list.set_defaults(func=cmd_list)

    p_sample = sub.add_parser("sample", help="generate examples and print them with their features")
    p_sample.add_argument("task", help="task name (see `anira tasks list`)")
    p_sample.add_argument("--difficulty", "-k", default=None,
                          help="difficulty (the task's knob); default: the top of its training range")
    p_sample.add_argument("--n", default="1", help="number of examples (default 1)")
    p_sample.add_argument("--seed", default="0", help="integer seed of the generator (default 0)")
    p_sample.add_argument("--split", default="train", choices=("train", "test"),
                          help="side of the train/test instance partition (default train)")
    p_sample.add_argument("--json", action="store_true", help="print JSON (schema in docs/tasks.md)")
    p_sample.set_defaults(func=cmd_sample)


@functools.lru_cache(maxsize=1)
def task_registry() -> Registry:
    """The tasks of the current environment. Only the task plugins are loaded:
    the built-in policies import torch, which `anira tasks` does not need."""
    from anira.registry import build_registry

    return build_registry(kinds=("task",))


def _int_arg(name: str, raw: str) -> int:
    try:
        return int(str(raw), 10)
    except ValueError:
        raise AniraError(f"{name} must be an integer, got {raw!r}") from None


def _num(x: float) -> float | int | None:
    """JSON-friendly number: NaN -> null, integral floats -> int."""
    x = float(x)
    if math.isnan(x):
        return None
    return int(x) if x.is_integer() else x


def task_info(task: Task) -> dict[str, Any]:
    r = task.ranges
    return {
        "name": task.name,
        "description": task.description,
        "knob": task.knob,
        "language_modelling": task.language_modelling,
        "default_max_iters": task.default_max_iters,
        "vocab_size": task.vocab_size,
        "min_difficulty": task.min_difficulty,
        "max_difficulty": task.max_difficulty,
        "ranges": {"train": list(r.train), "test_id": list(r.test_id), "test_ood": list(r.test_ood)},
        "complexity": task.complexity_description,
        "features": [
            {"name": f.name, "kind": f.kind, "where": f.where, "discrete": f.discrete,
             "description": f.description}
            for f in task.features
        ],
    }


def example_json(task: Task, example: Example, index: int) -> dict[str, Any]:
    ids = example.tokens.tolist()
    return {
        "index": index,
        "difficulty": example.difficulty,
        "tokens": ids,
        "token_strings": [task.tokenizer.vocab[i] for i in ids],
        "text": task.decode(example.tokens),
        "instance": example.instance,
        "answer": example.answer,
        "loss_mask": example.loss_mask.tolist(),
        "answer_mask": example.answer_mask.tolist(),
        "question_mask": example.question_mask.tolist(),
        "complexity": [_num(v) for v in example.complexity],
        "features": [
            {"name": f.name, "kind": f.kind, "where": f.where, "discrete": f.discrete,
             "description": f.description, "values": [_num(v) for v in example.features[f.name]]}
            for f in task.features
        ],
    }


def _build_task(name: str) -> Task:
    return task_registry().task(name)()


def cmd_list(args: argparse.Namespace) -> int:
    registry = task_registry()
    infos = [task_info(registry.task(name)()) for name in registry.names("task")]
    if args.json:
        print(json.dumps({"schema": SCHEMA_VERSION, "tasks": infos}, indent=2))
        return 0
    for info in infos:
        r = info["ranges"]
        lm = ", language modelling" if info["language_modelling"] else ""
        print(f"{info['name']}: {info['description']}{lm}")
        print(f"  knob: {info['knob']}; supported {info['min_difficulty']}..{info['max_difficulty']}; "
              f"train {r['train'][0]}..{r['train'][1]}, test_id {r['test_id'][0]}..{r['test_id'][1]}, "
              f"test_ood {r['test_ood'][0]}..{r['test_ood'][1]}; D = {info['default_max_iters']}")
        width = max((len(f["name"]) for f in info["features"]), default=0)
        for kind in ("static", "execution"):
            features = [f for f in info["features"] if f["kind"] == kind]
            print(f"  {kind} features:" + ("" if features else " -"))
            for f in features:
                print(f"    {f['name']:<{width}}  {'[' + f['where'] + ']':<10}  {f['description']}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    task = _build_task(args.task)
    n = _int_arg("--n", args.n)
    if n < 1:
        raise AniraError(f"--n must be at least 1, got {n}")
    seed = _int_arg("--seed", args.seed)
    if seed < 0:
        raise AniraError(f"--seed must be non-negative, got {seed}")
    difficulty = task.ranges.train[1] if args.difficulty is None else _int_arg("--difficulty", args.difficulty)
    task.check_difficulty(difficulty)
    rng = np.random.default_rng(seed)
    examples = [task.sample(difficulty, rng, split=args.split) for _ in range(n)]
    if args.json:
        payload = {
            "schema": SCHEMA_VERSION, "task": task.name, "difficulty": difficulty, "seed": seed,
            "split": args.split, "examples": [example_json(task, e, i) for i, e in enumerate(examples)],
        }
        print(json.dumps(payload))
        return 0
    for i, e in enumerate(examples):
        if i:
            print()
        print(_render(task, e, i, args.split))
    return 0


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "-"
    return str(int(x)) if float(x).is_integer() else f"{x:.3f}"


def _render(task: Task, e: Example, index: int, split: str) -> str:
    lines = [
        f"example {index}: {task.name}, difficulty {e.difficulty}, split {split}",
        f"  text:     {task.decode(e.tokens)}",
        "  instance: " + "; ".join(f"{k}={json.dumps(v)}" for k, v in e.instance.items()),
        f"  answer:   {' '.join(e.answer)}",
        "  features: q = question token, a = predicts an answer token; "
        "[s] static, [e] execution; '-' undefined",
    ]
    names = [f"{f.name}[{f.kind[0]}]" for f in task.features]
    header = ["pos", "token", "q", "a", "complexity", *names]
    vocab = task.tokenizer.vocab
    rows = []
    for i in range(len(e)):
        rows.append([
            str(i), vocab[int(e.tokens[i])], "q" if e.question_mask[i] else "",
            "a" if e.answer_mask[i] else "", _fmt(e.complexity[i]),
            *(_fmt(e.features[f.name][i]) for f in task.features),
        ])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for r in [header, *rows]:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    lines.append("  where:")
    width = max(len(n) for n in ["complexity", *names])
    lines.append(f"    {'complexity':<{width}}  {task.complexity_description}")
    for f, label in zip(task.features, names):
        lines.append(f"    {label:<{width}}  {f.description}")
    return "\n".join(lines)
