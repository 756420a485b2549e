"""MANO: the worked instance, an independent evaluator and tree-based feature checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anira.errors import AniraError
from anira.plugins.tasks.mano import Mano

OPS = {"+": lambda a, b: (a + b) % 23, "-": lambda a, b: (a - b) % 23, "*": lambda a, b: (a * b) % 23}


def parse_tree(expr: list[str]) -> list[dict]:
    """Independent recursive parse: one node per token with parent, child index and span."""
    nodes: list[dict] = []

    def rec(pos: int, parent: int | None, child: int, depth: int) -> tuple[int, int]:
        node = {"tok": expr[pos], "parent": parent, "child": child, "depth": depth, "start": pos}
        nodes.append(node)
        if expr[pos] in OPS:
            a, end = rec(pos + 1, pos, 0, depth + 1)
            b, end = rec(end, pos, 1, depth + 1)
            node["value"] = OPS[expr[pos]](a, b)
        else:
            node["value"] = int(expr[pos])
            end = pos + 1
        node["end"] = end - 1
        return node["value"], end

    _, end = rec(0, None, 0, 0)
    assert end == len(expr)
    return sorted(nodes, key=lambda n: n["start"])


def test_worked_instance():
    e = Mano().build("+ * 3 4 5".split())
    assert Mano.tokenizer.decode(e.tokens) == "<bos> + * 3 4 5 = 17 <eos>"
    assert e.answer == ["17"]
    assert e.answer_mask.tolist() == [False] * 6 + [True, True, False]
    assert e.question_mask.tolist() == [True] * 7 + [False, False]
    nan = np.nan
    expected = {
        "token_type": [0, 1, 1, 2, 2, 2, 0, nan, nan],
        "d": [0, 0, 1, 2, 2, 1, 0, nan, nan],
        "r": [0, 0, 2, 2, 1, 1, 0, nan, nan],
        "s": [0, 0, 0, 0, 1, 3, 5, nan, nan],
        "s_ops": [0, 0, 0, 0, 0, 1, 2, nan, nan],
        "reductions": [0, 0, 0, 0, 1, 1, 0, nan, nan],
        "arity": [0, 2, 2, 0, 0, 0, 0, nan, nan],
        "height": [nan] * 6 + [2, 2, nan],
        "L": [2] * 9,
        "position": list(range(9)),
    }
    for name, values in expected.items():
        np.testing.assert_array_equal(e.features[name], np.array(values, dtype=float), err_msg=name)
    np.testing.assert_array_equal(e.complexity, [nan] * 6 + [2, 0, nan])


def test_worked_instance_s_against_the_papers_s():
    """``+ 1 * 2 3``: ``1`` and ``2`` are lone operands (s = 1, the paper's s_t = 0);
    ``3`` completes ``* 2 3`` and with it ``+ 1 (* 2 3)`` (two subtrees, two operators)."""
    e = Mano().build("+ 1 * 2 3".split())
    nan = np.nan
    #                                  <bos>  +  1  *  2  3  =  7  <eos>
    np.testing.assert_array_equal(e.features["s"], [0, 0, 0, 1, 0, 1, 5, nan, nan])
    np.testing.assert_array_equal(e.features["s_ops"], [0, 0, 0, 0, 0, 0, 2, nan, nan])
    np.testing.assert_array_equal(e.features["reductions"], [0, 0, 0, 0, 0, 2, 0, nan, nan])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), L=st.integers(1, 29))
def test_answer_and_features_match_an_independent_parse(seed, L):
    task = Mano()
    e = task.sample(L, np.random.default_rng(seed))
    expr = e.instance["expression"].split()
    assert len(e) == task.max_len(L) and len(expr) == 2 * L + 1
    nodes = parse_tree(expr)
    assert e.answer == [str(nodes[0]["value"])] and e.instance["value"] == nodes[0]["value"]
    for k, node in enumerate(nodes):
        i = k + 1
        assert e.features["d"][i] == node["depth"]
        parent = node["parent"]
        assert e.features["r"][i] == (0 if parent is None else 2 - node["child"])
        prev = [n for n in nodes if n["end"] == k - 1]
        s = 0 if k == 0 or expr[k - 1] in OPS else max(n["end"] - n["start"] + 1 for n in prev)
        assert e.features["s"][i] == s
        # the paper's s_t: operator nodes of the subtrees completed at the previous token
        completed = [n for n in nodes if n["end"] == k - 1 and n["tok"] in OPS]
        outer = min(completed, key=lambda n: n["start"]) if completed else None
        s_ops = 0 if outer is None else sum(
            1 for n in nodes if n["tok"] in OPS and outer["start"] <= n["start"] <= outer["end"])
        assert e.features["s_ops"][i] == s_ops
        closed = sum(1 for n in nodes if n["end"] == k and n["tok"] in OPS)
        assert e.features["reductions"][i] == closed
    height = max(n["depth"] for n in nodes if n["tok"] in OPS)
    assert e.features["height"][-3] == height + 1
    assert e.features["s"][-3] == len(expr) and e.features["s_ops"][-3] == L


def test_deterministic_given_a_seed():
    task = Mano()
    a = [task.sample(8, np.random.default_rng(5)) for _ in range(2)]
    np.testing.assert_array_equal(a[0].tokens, a[1].tokens)
    for name in a[0].features:
        np.testing.assert_array_equal(a[0].features[name], a[1].features[name])


def test_knob_raises_complexity_and_depth():
    task = Mano()
    rng = np.random.default_rng(0)
    means, heights = [], []
    for L in (3, 8, 16):
        ex = [task.sample(L, rng) for _ in range(60)]
        means.append(np.mean([np.nanmean(e.complexity[e.answer_mask]) for e in ex]))
        heights.append(np.mean([e.features["height"][e.answer_mask][0] for e in ex]))
    assert means[0] < means[1] < means[2]
    assert heights[0] < heights[1] < heights[2]


@pytest.mark.parametrize("bad", [0, 30, 2.5, True, "3"])
def test_bad_difficulty(bad):
    with pytest.raises(AniraError):
        Mano().sample(bad, np.random.default_rng(0))


@pytest.mark.parametrize("expr", ["+ 3", "3 4", "+ 3 99", "+ 3 x"])
def test_bad_expression(expr):
    with pytest.raises(AniraError):
        Mano().build(expr.split())
