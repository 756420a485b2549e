"""Where a training step's GPU time goes: the paper's MANO configuration (the training
benchmark), torch.compile mode ``default`` (inductor kernels, no CUDA graphs, so the
profiler sees every kernel), bf16 autocast, policy anira-o. Prints the top kernels by
CUDA time and their share. ``packed``: the same examples packed several to a row
(anira/packing.py). Usage (H200): python scripts/profile_train.py [mano|brevo] [policy] [padded|packed]
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from anira.bench.train import BENCH_CONFIGS, _batches, _bench_spec
from anira.model import build_model
from anira.objective import compute_loss
from anira.registry import default_registry
from anira.training.loop import make_optimizer

name = sys.argv[1] if len(sys.argv) > 1 else "mano"
policy = sys.argv[2] if len(sys.argv) > 2 else "anira-o"
packed = len(sys.argv) > 3 and sys.argv[3] == "packed"
registry = default_registry()
spec, batch, seq = _bench_spec(name, policy, [], registry)
task = spec.build_task(registry)
cfg = spec.model_config(task).replace(max_len=max(seq, spec.model_config(task).max_len))
b = _batches(task, batch, seq, 1, 0, pack=packed)[0].to(torch.device("cuda"))
model = build_model(cfg, policy, registry=registry, seed=0, **spec.effective_policy_options(registry)).cuda().train()
opt = make_optimizer(model, spec)
fwd = torch.compile(model)


def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fwd(b.tokens, **b.layout)
        loss = compute_loss(model, out, b.tokens, b.loss_mask, b.token_mask).total
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


for _ in range(4):
    step()
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(5):
    step()
end.record()
torch.cuda.synchronize()
print(f"{name} {policy}: default-compiled step {start.elapsed_time(end) / 5:.1f} ms (batch {batch}, seq {seq}, "
      f"{b.tokens.shape[0]} {'packed' if packed else 'padded'} rows)")
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
events = [e for e in prof.key_averages() if e.device_time_total > 0 and not e.key.startswith(("ProfilerStep", "aten::", "cuda", "Torch-Compiled", "CompiledFunction"))]
total = sum(e.self_device_time_total for e in events)
print(f"GPU kernel time per step: {total / 3 / 1e3:.1f} ms")
for e in sorted(events, key=lambda e: -e.self_device_time_total)[:30]:
    print(f"{e.self_device_time_total / total:6.1%} {e.self_device_time_total / 3 / 1e3:7.2f} ms {e.count // 3:5d}x  {e.key[:110]}")
