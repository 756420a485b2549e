"""Packed training rows (anira/packing.py): the same examples, positions, attention and
loss as the padded layout, so the same function, loss and gradients."""

import json
import math

import numpy as np
import pytest
import torch

from anira.errors import AniraError
from anira.layers import Segments
from anira.model import build_model
from anira.objective import compute_loss
from anira.packing import assign_rows, pack_batch, row_multiple
from anira.presets import get_preset
from anira.registry import default_registry
from anira.training.data import to_torch, train_batch


@pytest.fixture(scope="module")
def setting():
    registry = default_registry()
    spec = get_preset("tiny-mano").spec("anira-o")
    task = spec.build_task(registry)
    return registry, task, spec.model_config(task)


def positions_in_example(packed):
    """(row, column) of each example's tokens in a packed batch, by example index."""
    where = {}
    for r, c in zip(*np.nonzero(packed.example_index >= 0)):
        where.setdefault(int(packed.example_index[r, c]), []).append((int(r), int(c)))
    return where


def test_assign_rows_places_every_example_once_within_the_row_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=300)
    rows = assign_rows(lengths, 64)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    # best-fit decreasing uses at most 11/9 of the optimum plus one row; the optimum is at
    # least the total over the row length
    assert len(rows) <= 11 / 9 * math.ceil(lengths.sum() / 64) + 1
    assert assign_rows(lengths, 64) == rows  # deterministic


def test_assign_rows_fills_tightly_where_a_perfect_packing_exists():
    # 40 + 24 = 64 and 32 + 32 = 64: four full rows
    lengths = np.array([40, 32, 24, 32, 40, 24, 32, 32])
    rows = assign_rows(lengths, 64)
    assert len(rows) == 4 and all(sum(lengths[i] for i in row) == 64 for row in rows)


def test_assign_rows_refuses_an_example_longer_than_a_row():
    with pytest.raises(AniraError, match="length 70 does not fit a packed row of 64"):
        assign_rows(np.array([10, 70]), 64)


def test_row_multiple():
    assert [row_multiple(r) for r in (1, 22, 63, 64, 127, 128, 197, 512)] == [4, 4, 4, 4, 4, 8, 8, 32]


def test_pack_batch_keeps_every_example_intact(setting):
    _, task, _ = setting
    padded = train_batch(task, 0, 0, range(50))
    packed = pack_batch(padded, 32)
    assert packed.tokens.shape[1] == 32 and packed.tokens.shape[0] % 4 == 0
    where = positions_in_example(packed)
    assert sorted(where) == list(range(50))
    for i, cells in where.items():
        k = int(padded.lengths[i])
        rows = {r for r, _ in cells}
        cols = [c for _, c in cells]
        assert len(rows) == 1 and len(cells) == k and cols == list(range(cols[0], cols[0] + k))  # contiguous
        r = rows.pop()
        span = slice(cols[0], cols[0] + k)
        np.testing.assert_array_equal(packed.tokens[r, span], padded.tokens[i, :k])
        np.testing.assert_array_equal(packed.loss_mask[r, span], padded.loss_mask[i, :k])
        np.testing.assert_array_equal(packed.answer_mask[r, span], padded.answer_mask[i, :k])
        np.testing.assert_array_equal(packed.question_mask[r, span], padded.question_mask[i, :k])
        np.testing.assert_array_equal(packed.complexity[r, span], padded.complexity[i, :k])
        assert len(set(packed.segments[r, span].tolist())) == 1
    assert (np.diff(packed.segments, axis=1) >= 0).all()
    pad = packed.example_index < 0
    assert not packed.loss_mask[pad].any() and (packed.tokens[pad] == 0).all()
    for r in range(packed.tokens.shape[0]):  # each padding token is a segment of its own
        ids = packed.segments[r][pad[r]]
        assert len(set(ids.tolist())) == len(ids)
    np.testing.assert_array_equal(packed.difficulty, padded.difficulty)
    torch_batch = to_torch(packed)
    assert torch_batch.n_examples == 50 and int(torch_batch.token_mask.sum()) == int(padded.lengths.sum())


def test_pack_batch_refuses_bad_input(setting):
    _, task, _ = setting
    padded = train_batch(task, 0, 0, range(8))
    with pytest.raises(AniraError, match="does not fit a packed row"):
        pack_batch(padded, 5)
    with pytest.raises(AniraError, match="already packed"):
        pack_batch(pack_batch(padded, 32), 32)
    padded.loss_mask[3, padded.lengths[3] - 1] = True
    with pytest.raises(AniraError, match="last token is a loss position"):
        pack_batch(padded, 32)


def test_segments_from_ids_by_hand():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2]])
    seg = Segments.from_ids(ids)
    assert seg.positions.tolist() == [[0, 1, 2, 0, 1, 0]]
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(seg.allowed[0, 0], expected)


def padded_and_packed(task, n=40, length=32):
    padded = train_batch(task, 0, 3, range(n))
    packed = pack_batch(padded, length)
    return padded, packed, to_torch(padded), to_torch(packed)


def unpack(values, packed, tb):
    """Per-token values of the packed layout (rows, n, ...) put back in the padded layout."""
    out = torch.zeros(tb.tokens.shape + values.shape[2:], dtype=values.dtype)
    seg = Segments.from_ids(torch.from_numpy(packed.segments))
    real = torch.from_numpy(packed.example_index >= 0)
    out[torch.from_numpy(packed.example_index)[real], seg.positions[real]] = values[real]
    return out


@pytest.mark.parametrize("policy", ["anira-o", "anira-e", "fixed"])
def test_packed_forward_equals_the_padded_forward(setting, policy):
    registry, task, cfg = setting
    padded, packed, tb, tp = padded_and_packed(task)
    model = build_model(cfg, policy, registry=registry, seed=0).eval()
    with torch.no_grad():
        ref = model(tb.tokens)
        got = model(tp.tokens, segments=tp.segments)
    mask = tb.token_mask
    torch.testing.assert_close(unpack(got.logits, packed, tb)[mask], ref.logits[mask], atol=1e-5, rtol=1e-5)
    assert torch.equal(unpack(got.exit_depth, packed, tb)[mask], ref.exit_depth[mask])
    torch.testing.assert_close(unpack(got.q, packed, tb)[mask], ref.q[mask], atol=1e-6, rtol=1e-5)


def test_packed_attention_pattern_stays_within_each_example(setting):
    registry, task, cfg = setting
    _, packed, _, tp = padded_and_packed(task)
    model = build_model(cfg, "anira-o", registry=registry, seed=0).eval()
    with torch.no_grad():
        _, cache = model.run_with_cache(tp.tokens, segments=tp.segments, names_filter=lambda n: n.endswith("hook_pattern"))
    seg = torch.from_numpy(packed.segments)
    other = seg[:, None, :, None] != seg[:, None, None, :]  # query and key in different examples
    assert len(cache) > 0
    for name, pattern in cache.items():
        assert float(pattern.masked_select(other).abs().max()) == 0.0, name


def test_packed_loss_and_gradients_equal_the_padded_ones(setting):
    registry, task, cfg = setting
    _, _, tb, tp = padded_and_packed(task)
    model = build_model(cfg, "anira-o", registry=registry, seed=0).train()
    # forced exit depths: a fixed function of (example, position) so both layouts agree
    depth_of = lambda ex, pos: 1 + (3 * ex + pos) % cfg.max_iters  # noqa: E731
    ex_pad = torch.arange(tb.tokens.shape[0])[:, None].expand_as(tb.tokens)
    pos_pad = torch.arange(tb.tokens.shape[1])[None, :].expand_as(tb.tokens)
    seg = Segments.from_ids(tp.segments)
    grads, losses = [], []
    for batch, forced, extra in (
        (tb, depth_of(ex_pad, pos_pad), {}),
        (tp, depth_of(tp.example_index.clamp_min(0), seg.positions), {"segments": tp.segments}),
    ):
        model.zero_grad()
        out = model(batch.tokens, exit_depths=forced, **extra)
        terms = compute_loss(model, out, batch.tokens, batch.loss_mask, batch.token_mask)
        terms.total.backward()
        losses.append((terms.ce.item(), terms.regularizer.item()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4, msg=name)


def test_model_refuses_bad_segments(setting):
    registry, task, cfg = setting
    model = build_model(cfg, "anira-o", registry=registry, seed=0).eval()
    tokens = torch.ones(2, 6, dtype=torch.long)
    with pytest.raises(AniraError, match="segments has shape"):
        model(tokens, segments=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(AniraError, match="integer ids"):
        model(tokens, segments=torch.zeros(2, 6))
    with pytest.raises(AniraError, match="non-decreasing"):
        model(tokens, segments=torch.tensor([[0, 0, 1, 1, 0, 2]] * 2))
    long = torch.ones(1, cfg.max_len + 1, dtype=torch.long)
    with pytest.raises(AniraError, match="exceeds max_len"):
        model(long, segments=torch.zeros(1, cfg.max_len + 1, dtype=torch.long))
    # a packed row may be longer than max_len when its examples are not
    ids = torch.arange(cfg.max_len + 1)[None] // 4
    assert model(long, segments=ids).logits.shape == (1, cfg.max_len + 1, cfg.vocab_size)


def train_records(tmp_path, name, sets):
    from anira.cli import main

    out = tmp_path / name
    code = main(["--threads", "1", "train", "--preset", "tiny-mano", "--policy", "anira-o", "--steps", "20",
                 "--out", str(out), "--set", "train.eval_every=0", "--set", "train.log_every=5",
                 "--set", "train.full_depth_steps=10", *sum((["--set", s] for s in sets), [])])
    assert code == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_packed_follows_the_padded_run(tmp_path):
    # full-depth steps (no sampling) then forced depths are layout-free; the policy's
    # sampled steps draw per position, so after step 10 the runs part within noise
    padded = [r for r in train_records(tmp_path, "padded", []) if r["kind"] == "train"]
    packed = [r for r in train_records(tmp_path, "packed", ["train.pack_length=40"]) if r["kind"] == "train"]
    assert [r["step"] for r in packed] == [r["step"] for r in padded] == [5, 10, 15, 20]
    for a, b in zip(padded[:2], packed[:2]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["token_acc"] == pytest.approx(a["token_acc"], abs=1e-9)
        for k, v in a["expected_depth_by_difficulty"].items():
            assert b["expected_depth_by_difficulty"][k] == pytest.approx(v, rel=1e-4)
    assert packed[-1]["loss"] == pytest.approx(padded[-1]["loss"], rel=0.05)


def test_trainer_refuses_a_pack_length_shorter_than_an_example(tmp_path):
    from anira.training.config import apply_overrides
    from anira.training.loop import Trainer

    registry = default_registry()
    spec = apply_overrides(get_preset("tiny-mano").spec("fixed"), ["train.pack_length=5"], registry)
    with pytest.raises(AniraError, match="pack_length 5 is shorter than the task's longest training example"):
        Trainer(spec, tmp_path / "run", registry=registry).run()
    assert not (tmp_path / "run").exists()


# -- an empty loss mask: checked on the host, so the loss on a GPU need not read it back --

def test_the_loss_refuses_an_empty_loss_mask_on_the_cpu(setting):
    from anira.objective import masked_next_token_ce

    logits = torch.zeros(2, 5, 7)
    with pytest.raises(AniraError, match="no position to train on"):
        masked_next_token_ce(logits, torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.bool))


def test_training_batches_with_an_empty_loss_mask_are_refused_on_the_host(setting, monkeypatch):
    import anira.training.data as data

    _, task, _ = setting

    def no_loss(*args, **kwargs):
        batch = train_batch(*args, **kwargs)
        batch.loss_mask[:] = False
        return batch

    monkeypatch.setattr(data, "train_batch", no_loss)
    for pack_length in (0, 32):
        batches = data.StepBatches(task, 0, 8, 0, 1, 0, 3, False, None, pack_length)
        with pytest.raises(AniraError, match="batch of step 1 has no position to train on"):
            batches[1]
