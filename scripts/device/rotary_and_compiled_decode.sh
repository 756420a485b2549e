#!/usr/bin/env bash
# One device call (H200 alone), results under $OUT as they come:
# 1. batch-64 inference (`anira bench inference`) in bf16 and float32, the rotary of this tree
#    against that of a968d98 (strided halves, bf16 tables in the products), side by side;
# 2. decoding in both dtypes, now with the compiled static decoders;
# 3. what this torch build's CUDAGraph offers for conditional nodes, and the wrapper code
#    inductor writes for the compiled float32 decode step (where its device copies come from);
# 4. a second round of 1.
# The caller writes a968d98's anira/{layers,model}.py to rotary_before/ (untracked, so it
# travels): git show a968d98:anira/layers.py > rotary_before/layers.py (and model.py).
# Usage (device, repo root, .whl carried): bash scripts/device/rotary_and_compiled_decode.sh
set -uo pipefail
source "$(dirname "$0")/setup.sh"
A=/tmp/anira/anira  # the installed copy; only it is swapped
cp $A/layers.py /tmp/layers_current.py; cp $A/model.py /tmp/model_current.py
rotary_round() {
  for variant in current before; do
    if [ $variant = before ]; then cp rotary_before/layers.py rotary_before/model.py $A/
    else cp /tmp/layers_current.py $A/layers.py; cp /tmp/model_current.py $A/model.py; fi
    for d in bfloat16 float32; do
      echo "== rotary $variant ($(grep -c sin_signed $A/layers.py) sin_signed), $d" >> $OUT/bench_b64_rotary.txt
      timeout 100 python3 -P -m anira.cli bench inference --device cuda --batches 64 --repeats 10 --decode-len 0 \
        --dtype $d --json >> $OUT/bench_b64_rotary.txt 2> /dev/null
    done
  done
  cp /tmp/layers_current.py $A/layers.py; cp /tmp/model_current.py $A/model.py
}
rotary_round
for d in float32 bfloat16; do
  timeout 150 python3 -P -m anira.cli bench inference --device cuda --batches 1 --iters 6 --repeats 10 --decode-len 64 \
    --dtype $d --json > $OUT/bench_decode_$d.json 2> /dev/null
done
python3 - > $OUT/torch_conditional_nodes.txt 2>&1 <<'PY'
import torch, anira.static_decode as sd
g = torch.cuda.CUDAGraph
print(torch.__version__, torch.version.cuda, "conditional nodes:", sd.conditional_nodes_available())
print("mro:", [c.__name__ for c in g.__mro__])
print("graph attrs:", sorted(a for a in dir(g) if not a.startswith("__")))
try:
    import torch._higher_order_ops.cudagraph_conditional_nodes as c
    print("cudagraph_conditional_nodes module:", sorted(n for n in dir(c) if not n.startswith("__")))
except Exception as e:
    print("no cudagraph_conditional_nodes module:", e)
PY
TORCH_LOGS=output_code timeout 120 python3 -P - > /tmp/wrapper.txt 2>&1 <<'PY'
import torch
from anira.bench.inference import balanced_depths
from anira.config import ModelConfig
from anira.model import build_model
from anira.static_decode import StaticDecoder, teacher_forced
D, seq = 6, 256
cfg = ModelConfig(vocab_size=256, d_model=512, n_heads=8, d_ff=2048, max_iters=D, max_len=seq)
model = build_model(cfg, "pattern", seed=0, depths=balanced_depths(seq, D, 0.5, 0)).cuda().eval()
teacher_forced(StaticDecoder(model, 1, layout="full", compile=True), torch.randint(1, 256, (1, 4)).cuda())
PY
grep -n "copy_\|memcpy\|def call\|return (" /tmp/wrapper.txt | cut -c1-400 > $OUT/compiled_f32_copies.txt
gzip -c /tmp/wrapper.txt > $OUT/compiled_f32_wrapper.txt.gz
rotary_round
