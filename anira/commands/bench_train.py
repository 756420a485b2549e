"""``anira bench train``: training tokens/s and model-FLOPs utilisation."""

from __future__ import annotations

import argparse

from anira.errors import AniraError


def add_parser(inner: argparse._SubParsersAction) -> None:
    p = inner.add_parser("train", help="training tokens/s and MFU at the paper's MANO / BREVO configurations")
    p.add_argument("--config", default="mano,brevo", help="comma-separated: mano, brevo (default both)")
    p.add_argument("--policy", default="anira-o")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import inspect

    from anira.bench.train import bench_train
    from anira.commands.bench import emit

    if args.steps < 1:
        raise AniraError("--steps must be >= 1")
    names = [c.strip() for c in args.config.split(",") if c.strip()]
    accepted = inspect.signature(bench_train).parameters
    results = []
    for name in names:
        kwargs = {"device": args.device, "steps": args.steps}
        if "policy" in accepted:
            kwargs["policy"] = args.policy
        if "compile" in accepted:
            kwargs["compile"] = args.compile
        results.append(bench_train(name, **kwargs))
    lines = []
    for r in results:
        lines.append(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in r.items() if not isinstance(v, (dict, list))))
    return emit({"benchmark": "train", "results": results}, args.json, lines)
