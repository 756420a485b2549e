"""GPU training paths that a CPU run never takes: fused AdamW (which updates weights
without bumping their version counters), CUDA-graph compiled steps, bf16 autocast.
The trainer's periodic evaluations must equal a fresh process's evaluation of the
saved checkpoint (they read stale fused weights before 2026-12-03)."""

import json
import subprocess
import sys

import pytest
import torch

from anira.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

FRESH_EVAL = """
import json, sys
import torch
from anira import checkpoint as ckpt
from anira.training.periodic_eval import EvalSets, evaluate_range
c = ckpt.load_checkpoint(sys.argv[1], device="cuda")
train = c.config["train"]
sets = EvalSets(c.task, train["eval_examples"], train["seed"])
print(json.dumps(evaluate_range(c.model, c.task, "test_id", sets, train["eval_batch_size"], amp=train["amp"])))
"""


@pytest.mark.parametrize("policy,packing", [("fixed", 0), ("anira-o", 0), ("anira-o", 256)])
def test_periodic_eval_of_compiled_fused_training_equals_a_fresh_process(tmp_path, policy, packing):
    # packing: several examples to a row (anira/packing.py), row counts varying from step
    # to step, through the compiled CUDA-graph step
    out = tmp_path / f"{policy}-{packing}"
    code = main(["train", "--preset", "ref-brevo", "--policy", policy, "--device", "cuda", "--out", str(out),
                 "--set", "train.steps=600", "--set", "train.eval_every=200", "--set", "train.checkpoint_every=600",
                 "--set", "train.data_pool=20000", "--set", "train.eval_examples=64", "--set", "train.stop_at_acc=0",
                 "--set", f"train.pack_length={packing}"])
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "eval" and r["split"] == "test_id"]
    assert [r["step"] for r in evals] == [200, 400, 600]  # several evaluations: the later ones used to go stale
    trainer = evals[-1]
    # -P: the installed anira, not the source tree of the working directory
    done = subprocess.run([sys.executable, "-P", "-c", FRESH_EVAL, str(out)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = json.loads(done.stdout)
    assert trainer["acc"] == pytest.approx(fresh["acc"], abs=1e-9)
    for mine, theirs in zip(trainer["per_difficulty"], fresh["per_difficulty"]):
        assert mine["acc"] == pytest.approx(theirs["acc"], abs=1e-9)
        assert mine["mean_expected_depth"] == pytest.approx(theirs["mean_expected_depth"], abs=1e-3)
    train_acc = [r["token_acc"] for r in records if r.get("kind") == "train"][-1]
    assert train_acc > 0.5  # it learned: a stale evaluation would not follow


EMPTY_LOSS_MASK = """
import torch
from anira.objective import masked_next_token_ce
logits = torch.zeros(2, 5, 7, device="cuda")
loss = masked_next_token_ce(logits, torch.ones(2, 5, dtype=torch.long, device="cuda"),
                            torch.zeros(2, 5, dtype=torch.bool, device="cuda"))
torch.cuda.synchronize()
print("no error", float(loss))
"""


def test_an_empty_loss_mask_stops_the_step_on_the_device(tmp_path):
    # on CUDA the loss checks its mask with a device-side assertion (no host sync per
    # step); a failed assertion ends the CUDA context, so this runs in its own process
    done = subprocess.run([sys.executable, "-P", "-c", EMPTY_LOSS_MASK], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0 and "no error" not in done.stdout
    # the message travels with the device assertion where the build prints it
    assert "no position to train on" in done.stderr or "device-side assert" in done.stderr, done.stderr[-2000:]
