"""``anira bench train``: training tokens/s and model-FLOPs utilisation."""

from __future__ import annotations

import argparse

from anira.errors import AniraError


def add_parser(inner: argparse._SubParsersAction) -> None:
    p = inner.add_parser("train", help="training tokens/s and MFU at the paper's MANO / BREVO configurations")
    p.add_argument("--config", default="mano,brevo",
                   help="comma-separated: mano, brevo (the paper's sizes) or training presets (default: mano,brevo)")
    p.add_argument("--policy", default="anira-o")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=30, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per mode first (compilation happens here)")
    p.add_argument("--modes", default="eager",
                   help="comma-separated execution modes timed side by side: eager, or the torch.compile modes "
                        "default, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs")
    p.add_argument("--compile", action="store_true", help="shorthand for --modes eager,default")
    p.add_argument("--gemms", default="aligned",
                   help="comma-separated matrix-product layouts timed side by side, each in every mode: aligned "
                        "(unembedding and decider outputs padded / reduced so every GEMM dimension is a multiple "
                        "of 8, the default) or unaligned (plain nn.Linear, the baseline), e.g. unaligned,aligned; "
                        "the aligned forms apply under torch.compile modes only (eager calls are nn.Linear's)")
    p.add_argument("--rows", default="padded",
                   help="comma-separated batch layouts timed side by side, each in every mode: padded (a row per "
                        "example, the default) or packed (the same examples several to a row of --seq tokens, "
                        "each attending only to itself), e.g. padded,packed")
    p.add_argument("--batch", type=int, default=None, help="override the configuration's batch size")
    p.add_argument("--seq", type=int, default=None, help="override the padded sequence length")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help="override a run-spec field as in `anira train --set` (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from anira.bench.train import bench_train
    from anira.commands.bench import emit
    from anira.commands.common import resolve_device

    if args.steps < 1 or args.warmup < 0:
        raise AniraError("--steps must be >= 1 and --warmup >= 0")
    modes = ["eager", "default"] if args.compile else [m.strip() for m in args.modes.split(",") if m.strip()]
    gemms = [g.strip() for g in args.gemms.split(",") if g.strip()]
    layouts = [x.strip() for x in args.rows.split(",") if x.strip()]
    names = [c.strip() for c in args.config.split(",") if c.strip()]
    device = resolve_device(args.device)
    results = [bench_train(name, device=device, steps=args.steps, warmup=args.warmup, policy=args.policy,
                           modes=modes, gemms=gemms, layouts=layouts, batch_size=args.batch, seq_len=args.seq, sets=args.sets)
               for name in names]
    lines = []
    for r in results:
        lines.append(f"{r['config']} ({r['policy']}, d_model {r['d_model']}, D {r['max_iters']}, batch {r['batch']}, "
                     f"seq {r['seq']}, {r['device_name']}):")
        for m in r["modes"]:
            mfu = "" if m["mfu"] is None else f", MFU {m['mfu'] * 100:.1f}%"
            name = m["mode"] if r["gemms"] == ["aligned"] else f"{m['mode']}, {m['gemms']} GEMMs"
            if r["layouts"] != ["padded"]:
                name += f", {m['layout']} ({m['rows']:.0f} rows)"
            lines.append(f"  {name:<40} {m['step_time_s'] * 1e3:8.2f} ms/step  {m['tokens_per_s']:>12,.0f} tokens/s"
                         f"  x{m['speedup_vs_first']:.2f}{mfu}  (warm-up {m['warmup_s']:.1f} s)")
    if any(r["layouts"] != ["padded"] for r in results):
        lines.append("tokens/s: examples x seq per second in both layouts; MFU counts the positions computed")
    return emit({"benchmark": "train", "schema": 4, "results": results}, args.json, lines)
