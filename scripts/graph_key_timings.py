"""Host time of the checks a graphed step makes before replaying (the benchmark's decoding
model: the paper's BREVO size, d_model 512, D = 6, max_len 256; one thread), side by side:
the static decoder's weight key as it reads the modules that own tensors (listed once),
against walking the module tree for every parameter and buffer (what it did before
1a0a121), and the inference loop's graph key (RecurrentTransformer._graph_key).
Usage: python scripts/graph_key_timings.py [repeats]
"""
import statistics
import sys
import timeit

import torch

from anira.bench.inference import balanced_depths
from anira.config import ModelConfig
from anira.model import build_model
from anira.static_decode import StaticDecoder

torch.set_num_threads(1)
repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
D, seq = 6, 256
cfg = ModelConfig(vocab_size=256, d_model=512, n_heads=8, d_ff=2048, max_iters=D, max_len=seq)
model = build_model(cfg, "pattern", seed=0, depths=balanced_depths(seq, D, 0.5, 0)).eval()
decoder = StaticDecoder(model, 1)
h = torch.zeros(1, seq, cfg.d_model)
checks = {
    "static decoder, owners listed once": decoder._weight_key,
    "static decoder, module tree walked": lambda: tuple(t.data_ptr() for t in (*model.parameters(),
                                                                              *model.buffers())),
    "inference loop graph key": lambda: model._graph_key(h),
}
times = {name: [] for name in checks}
for _ in range(repeats):  # alternating, so drift hits all alike
    for name, fn in checks.items():
        times[name].append(timeit.timeit(fn, number=500) / 500)
print(f"{len(list(model.modules()))} modules, {len(list(model.parameters()))} parameters, "
      f"{len(list(model.buffers()))} buffers; median of {repeats} x 500 calls:")
for name, ts in times.items():
    print(f"  {name}: {statistics.median(ts) * 1e6:.1f} µs")
