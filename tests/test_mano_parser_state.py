"""scripts/mano_parser_state.py (docs/findings.md's MANO check): its held-out R² on
planted targets, and on MANO itself where the answer is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from anira.registry import default_registry

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mano_parser_state.py"
spec = importlib.util.spec_from_file_location("mano_parser_state", SCRIPT)
mano_parser_state = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mano_parser_state)


def test_heldout_r2_on_planted_targets():
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 6, size=3000)
    X = (levels[:, None] == np.arange(5)[None, :]).astype(float)  # level 5 is the reference
    groups = np.arange(3000) // 3
    exact = np.array([0.0, 2.0, -1.0, 3.0, 0.5, 1.5])[levels]
    assert mano_parser_state.heldout_r2(X, exact, groups) > 0.999
    noise = rng.normal(size=3000)
    assert abs(mano_parser_state.heldout_r2(X, noise, groups)) < 0.02
    half = exact + rng.normal(scale=exact.std(), size=3000)  # half the variance explained
    assert 0.4 < mano_parser_state.heldout_r2(X, half, groups) < 0.6


def test_parser_state_at_l1_is_a_function_of_position():
    """At L = 1 every expression is `op a b`: the stack depth and the operands owed
    before each question token are fixed by its position, so R² is 1; at L 1–5 not."""
    task = default_registry().task("mano")()
    rows = mano_parser_state.question_rows(task, 1, 1, 200, seed=0)
    pos, _ = mano_parser_state.one_hot_levels(rows["position"], 20, 24)
    for feature in ("d", "r"):
        assert mano_parser_state.heldout_r2(pos, rows[feature], rows["instance"]) > 0.999
    rows = mano_parser_state.question_rows(task, 1, 5, 300, seed=0)
    pos, _ = mano_parser_state.one_hot_levels(rows["position"], 20, 24)
    assert mano_parser_state.heldout_r2(pos, rows["d"], rows["instance"]) < 0.95
