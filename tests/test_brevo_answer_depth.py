"""scripts/brevo_answer_depth.py (docs/deciders.md's BREVO per-token table): its rows are
`anira eval`'s answer positions (the pooled Spearman equals the evaluator's per-token
criterion on the same instances), and the structural fact its reading rests on holds
(the first node emitted is a leaf: in-degree 0)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import anira
from anira.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "brevo_answer_depth.py"
spec = importlib.util.spec_from_file_location("brevo_answer_depth", SCRIPT)
brevo_answer_depth = importlib.util.module_from_spec(spec)
spec.loader.exec_module(brevo_answer_depth)


@pytest.mark.parametrize("name", ["brevo-anira-o", "brevo-anira-e"])
def test_rows_are_the_evaluators_answer_positions(name):
    path = str(ROOT / "checkpoints" / name)
    label, rows = brevo_answer_depth.answer_rows(path, n=6, seed=3)
    assert label == name
    model, task = anira.load(path)
    result = evaluate(model.eval(), task, n_per_difficulty=6, seed=3,
                      difficulties=range(task.ranges.test_id[0], task.ranges.test_id[1] + 1))
    expected = result.to_dict()["in_distribution"]["metrics"]["spearman_exit_depth"]
    assert brevo_answer_depth.rho(rows["depth"], rows["complexity"]) == pytest.approx(expected, abs=1e-9)
    first = rows["index"] == 0
    assert first.sum() == 6 * (task.ranges.test_id[1] - task.ranges.test_id[0] + 1)
    assert np.all(rows["in_degree"][first] == 0)
    assert np.all(np.isin(rows["N"], np.arange(task.ranges.test_id[0], task.ranges.test_id[1] + 1)))


def test_refuses_a_mano_checkpoint():
    with pytest.raises(SystemExit, match="a mano checkpoint"):
        brevo_answer_depth.answer_rows(str(ROOT / "checkpoints" / "mano-anira-o"), n=1, seed=0)


def test_needed_depths_are_known_depth_deciders_on_the_same_tokens():
    """--needed reads n from scripts/known_depth_deciders.py's own functions, row for row on
    the answer positions with a defined complexity (n is not re-derived here)."""
    path = str(ROOT / "checkpoints" / "brevo-fixed")
    _, rows = brevo_answer_depth.answer_rows(path, n=3, seed=5, needed=True)
    model, task = anira.load(path)
    held = brevo_answer_depth.known_depth_module().held_out_tokens(model.eval(), task, 3, 5)
    keep = np.concatenate([[not np.isnan(e.complexity[p]) for j, e in enumerate(examples)
                            for p in np.flatnonzero(answer[j])]
                           for _, _, answer, examples, _ in held.batches])
    assert len(rows["needed"]) == keep.sum() > 0
    np.testing.assert_array_equal(rows["needed"], held.needed[keep])
    assert np.all(rows["depth"] == model.cfg.max_iters)  # a fixed-depth model exits at D
    table = brevo_answer_depth.needed_table([("brevo-fixed", rows)])
    assert table.count("\n") == 2 and "| brevo-fixed |" in table
