"""Where a static decode step's time goes (anira/static_decode.py): the decoding
benchmark's model (the paper's BREVO size: d_model 512, 8 heads, d_ff 2048, D = 6,
max_len 256, pattern depths with d̄/D ~ 0.5), batch 1, 64 teacher-forced tokens.
For each decoder (both cache layouts; all D iterations, skipping with the host reading a
flag, and skipping on the device where conditional graph nodes record) it prints the
wall time per token, the GPU's busy time per token (the sum of kernel durations,
CUDA graphs replayed as on the benchmark), the kernels per token and the top kernels.
Wall minus busy is time the GPU waits: on launches inside a graph, between graph
replays, and on the host's flag reads when skipping.
Each decoder runs twice: single-query attention written out (anira.decode.written_one) and
through SDPA's fused kernels (anira.decode.sdpa_one); decoding takes the first in float32
and the second otherwise (anira.decode.attend_one).
With ``compile`` as the second argument, the all-D decoders run once more through
torch.compile (``StaticDecoder(..., compile=True)``), with the dispatched attention.
Usage (H200): python scripts/profile_decode.py [float32|bfloat16] [compile]
"""
import itertools
import statistics
import sys
import time

import torch

import anira.decode
from torch.profiler import ProfilerActivity, profile

from anira.bench.inference import balanced_depths
from anira.config import ModelConfig
from anira.model import build_model
from anira.static_decode import StaticDecoder, conditional_nodes_available, teacher_forced

ATTENTION = {"written out": anira.decode.written_one, "sdpa": anira.decode.sdpa_one}

dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[sys.argv[1] if len(sys.argv) > 1 else "float32"]
D, seq, n = 6, 256, 64
cfg = ModelConfig(vocab_size=256, d_model=512, n_heads=8, d_ff=2048, max_iters=D, max_len=seq)
model = build_model(cfg, "pattern", seed=0, depths=balanced_depths(seq, D, 0.5, 0)).cuda().to(dtype).eval()
tokens = torch.randint(1, 256, (1, n), generator=torch.Generator().manual_seed(0)).cuda()
print(f"{dtype}: batch 1, {n} tokens, D {D}, d_model 512; per token:")
# skipping with the host reading a flag (True), and on the device where conditional nodes record
SKIPS = (False, True, "device") if conditional_nodes_available() else (False, True)
RUNS = [(layout, skip, attention, False) for layout, skip, attention in
        itertools.product(("aware", "full"), SKIPS, ATTENTION)]
if len(sys.argv) > 2 and sys.argv[2] == "compile":
    RUNS += [(layout, False, "dispatched", True) for layout in ("aware", "full")]
dispatched = anira.decode.attend_one
for layout, skip, attention, compiled in RUNS:
    anira.decode.attend_one = ATTENTION.get(attention, dispatched)  # what _finish calls
    dec = StaticDecoder(model, 1, layout=layout, skip_halted=skip, compile=compiled)
    teacher_forced(dec, tokens)  # warm-up: records the graphs
    walls = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        teacher_forced(dec, tokens)
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) / n)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        teacher_forced(dec, tokens)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / n  # µs
    span = (max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)) / n
    wall = statistics.median(walls) * 1e6
    mode = {False: "all-D", True: "skipping", "device": "skipping on the device"}[skip] + (", compiled" if compiled else "")
    print(f"\n== {layout} {mode}, attention {attention}: "
          f"wall {wall:.0f} µs ({1e6 / wall:.0f} tokens/s), "
          f"GPU busy {busy:.0f} µs ({busy / wall:.0%}), first-to-last kernel {span:.0f} µs, "
          f"{len(kernels) / n:.0f} kernels (mean {busy / max(1, len(kernels) / n):.1f} µs each), "
          f"graphed {dec.recorded}")
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time)
    for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:8]:
        print(f"  {sum(times) / n / busy:6.1%} {sum(times) / n:7.1f} µs {len(times) / n:5.1f}x  {name[:100]}")
