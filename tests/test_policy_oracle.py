"""``oracle``: depth supervised with the task's per-token complexity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import anira
from anira import AniraError, build_model, preset_config
from anira.cli import main
from anira.objective import compute_loss
from anira.plugins.policies.oracle import target_depths
from anira.task import Example, collate
from anira.training.data import to_torch

torch.set_num_threads(1)
NAN = math.nan


def _model(max_iters=4, seed=0, **options):
    cfg = preset_config("test", vocab_size=24, max_iters=max_iters)
    return build_model(cfg, "oracle", seed=seed, **options)


# -- the rescaling ----------------------------------------------------------------------------


def test_target_depths_per_batch_hand_computed():
    # lo = 0, hi = 6, D = 4: x = c/6·3 = 0, 1.5, 3, 1, 0.5 -> 1 + floor(x + 1/2) = 1, 3, 4, 2, 2
    c = torch.tensor([[0.0, 3.0, 6.0, NAN], [2.0, 1.0, NAN, NAN]])
    depth, defined = target_depths(c, 4)
    assert depth.tolist() == [[1, 3, 4, 1], [2, 2, 1, 1]]  # undefined -> 1 (ignored)
    assert defined.tolist() == [[True, True, True, False], [True, True, False, False]]


def test_target_depths_fixed_range_clips_and_degenerate_cases():
    # c_min = 2, c_max = 10, D = 5: x = (clip(c) - 2)/8·4 = 0, 0, 1.5, 4, 4 -> 1, 1, 3, 5, 5
    c = torch.tensor([0.0, 2.0, 5.0, 10.0, 30.0])
    depth, _ = target_depths(c, 5, c_min=2.0, c_max=10.0)
    assert depth.tolist() == [1, 1, 3, 5, 5]
    # one complexity value in the batch: no spread -> depth 1; nothing defined -> all 1, none defined
    assert target_depths(torch.tensor([3.0, 3.0, NAN]), 5)[0].tolist() == [1, 1, 1]
    depth, defined = target_depths(torch.full((2,), NAN), 5)
    assert depth.tolist() == [1, 1] and not defined.any()


def test_bad_options_are_one_line_errors():
    with pytest.raises(AniraError, match="weight"):
        _model(weight=-1.0)
    with pytest.raises(AniraError, match="c_max"):
        _model(c_min=3.0, c_max=3.0)


# -- the loss ---------------------------------------------------------------------------------


def _batch(seed=0, b=4, p=10):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 24, (b, p), generator=g)
    complexity = (tokens % 7).float()
    complexity[:, ::3] = NAN  # a third of the positions have no ground truth
    return tokens, complexity


def test_loss_ignores_tokens_without_complexity_and_reaches_the_decider():
    model = _model()
    model.train()
    tokens, cx = _batch()
    mask = torch.ones_like(tokens, dtype=torch.bool)
    out = model(tokens)
    terms = compute_loss(model, out, tokens, mask, targets={"complexity": cx})
    depth, defined = target_depths(cx, 4)
    nll = -torch.log(out.q).gather(-1, (depth - 1)[..., None]).squeeze(-1)
    assert torch.allclose(terms.regularizer, (nll * defined).sum() / mask.sum(), atol=1e-6)
    assert torch.allclose(terms.total, terms.ce + terms.regularizer)
    # changing q where complexity is NaN leaves the oracle term unchanged: zero weight there
    q2 = out.q.clone()
    q2[~defined] = torch.tensor([0.97, 0.01, 0.01, 0.01])
    out2 = type(out)(**{**out.__dict__, "q": q2})
    assert torch.allclose(compute_loss(model, out2, tokens, mask, targets={"complexity": cx}).regularizer,
                          terms.regularizer)
    # ... and so does a fully undefined batch give exactly zero
    none = compute_loss(model, out, tokens, mask, targets={"complexity": torch.full_like(cx, NAN)})
    assert float(none.regularizer) == 0.0
    terms.regularizer.backward()
    grads = [p.grad for p in model.policy.decider.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_loss_without_targets_is_a_one_line_error():
    model = _model()
    tokens, _ = _batch()
    with pytest.raises(AniraError, match="complexity"):
        compute_loss(model, model(tokens), tokens, torch.ones_like(tokens, dtype=torch.bool))


def test_teacher_forcing_uses_targets_where_defined_and_the_mode_elsewhere():
    model = _model()
    model.train()
    tokens, cx = _batch()
    forced = model.policy.teacher_exit_depths(model, tokens, {"complexity": cx})
    depth, defined = target_depths(cx, 4)
    mode = model.eval()(tokens).exit_depth  # inference: the decider's mode
    assert torch.equal(forced, torch.where(defined, depth, mode))


# -- known answer: the decider learns the targets -----------------------------------------------


def test_decider_learns_the_target_depths():
    torch.manual_seed(0)
    model = _model(max_iters=4, seed=1)
    tokens, cx = _batch(seed=3, b=6, p=12)
    targets = {"complexity": cx}
    mask = torch.ones_like(tokens, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):  # the trainer's step: teacher-forced exits, CE + oracle term
        forced = model.policy.teacher_exit_depths(model, tokens, targets)
        out = model(tokens, exit_depths=forced)
        loss = compute_loss(model, out, tokens, mask, targets=targets).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    depth, defined = target_depths(cx, 4)
    assert len(set(depth[defined].tolist())) >= 3  # a non-trivial target
    assert torch.equal(model(tokens).exit_depth[defined], depth[defined])


# -- the trainer's channel ----------------------------------------------------------------------


def test_collate_carries_nan_padded_complexity():
    def ex(cx):
        n = len(cx)
        return Example(tokens=np.arange(1, n + 1), loss_mask=np.ones(n, bool), answer_mask=np.ones(n, bool),
                       question_mask=np.zeros(n, bool), complexity=np.array(cx, float), features={},
                       instance={}, difficulty=1)

    batch = collate([ex([1.0, NAN, 2.0]), ex([4.0])])
    assert np.array_equal(batch.complexity, np.array([[1, NAN, 2], [4, NAN, NAN]], np.float32), equal_nan=True)
    tb = to_torch(batch)
    assert tb.complexity.dtype == torch.float32 and tb.to(torch.device("cpu")).complexity.shape == (2, 3)


def test_train_cli_smoke(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "--task", "mano", "--policy", "oracle", "--preset", "smoke", "--set", "model.max_iters=3",
            "--set", "task.train=1,4", "--set", "task.test_id=1,2", "--set", "task.test_ood=3,3",
            "--set", "policy.c_max=4", "--steps", "5", "--out", out, "--quiet", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "completed" and report["step"] == 5
    assert report["last_train"]["reg"] > 0  # the oracle term was trained (logged at step 5)
    model, task = anira.load(out)
    assert type(model.policy).name == "oracle" and model.policy.c_max == 4.0 and model.policy.c_min is None
