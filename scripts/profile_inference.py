"""Where the batch inference core's time goes: the inference benchmark's model (d_model 512,
D = 8, 256 tokens, pattern depths with d̄/D = 0.5), the fast path against the dense loop,
CUDA graphs off so the profiler sees every kernel.
Usage: python scripts/profile_inference.py [cpu|cuda] [batch] [float32|bfloat16]
"""
import torch, time, sys
from anira.bench.inference import balanced_depths, _core_fast, _core_dense
from anira.config import ModelConfig
from anira.model import build_model
torch.manual_seed(0)
dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
B = int(sys.argv[2]) if len(sys.argv) > 2 else 1
dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[sys.argv[3] if len(sys.argv) > 3 else "float32"]
seq, D = 256, 8
depths_list = balanced_depths(seq, D, 0.5, 0)
cfg = ModelConfig(vocab_size=256, d_model=512, n_heads=8, d_ff=2048, max_iters=D, max_len=seq)
model = build_model(cfg, "pattern", seed=0, depths=depths_list).to(dev, dtype).eval()
model.loop_graphs = "off"  # the profiler sees every kernel only outside CUDA graphs
tokens = torch.randint(1, 256, (B, seq)).to(dev)
depths = torch.tensor(depths_list, device=dev).expand(B, seq)
from torch.profiler import profile, ProfilerActivity
with torch.no_grad():
    h0 = model.run_prelude(tokens)
    for _ in range(3): _core_fast(model, h0, depths); _core_dense(model, h0)
    for name, fn in (("fast", lambda: _core_fast(model, h0, depths)), ("dense", lambda: _core_dense(model, h0))):
        ts=[]
        for _ in range(5):
            t=time.perf_counter(); fn(); ts.append(time.perf_counter()-t)
        print(name, sorted(ts)[2]*1e3, "ms")
    acts=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev=="cuda" else [])
    for name, fn in (("fast", lambda: _core_fast(model, h0, depths)), ("dense", lambda: _core_dense(model, h0))):
        with profile(activities=acts) as prof:
            for _ in range(3): fn()
        print("=====", name)
        print(prof.key_averages().table(sort_by="self_cuda_time_total" if dev=="cuda" else "self_cpu_time_total", row_limit=18))
