"""DEPO: the worked instance and a chain-following solver."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anira.errors import AniraError
from anira.plugins.tasks.depo import Depo

WORKED = [("bc", "ae"), ("gi", "gi"), ("ae", "dj"), ("dj", "bc")]


def test_worked_instance():
    e = Depo().build(WORKED, "dj", 2)
    assert Depo.tokenizer.decode(e.tokens) == "<bos> bc ae gi gi ae dj dj bc ? dj h2 = ae <eos>"
    assert e.answer == ["ae"]
    assert np.flatnonzero(e.answer_mask).tolist() == [12, 13]
    np.testing.assert_array_equal(e.features["k"][12:14], [2, 2])
    np.testing.assert_array_equal(e.features["n"][12:14], [4, 4])
    np.testing.assert_array_equal(e.features["cycle_len"][12:14], [3, np.nan])
    np.testing.assert_array_equal(e.features["backtracks"][12:14], [1, np.nan])
    np.testing.assert_array_equal(e.complexity[12:14], [2, 0])
    assert np.isnan(e.complexity[:12]).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 23))
def test_chain_following(seed, k):
    task = Depo()
    e = task.sample(k, np.random.default_rng(seed))
    pairs = [tuple(p.split("->")) for p in e.instance["pairs"]]
    nxt = dict(pairs)
    assert len(nxt) == 24 and sorted(nxt) == sorted(nxt.values())  # a permutation
    node, seen, positions = e.instance["start"], [], []
    for _ in range(k):
        seen.append(node)
        positions.append([u for u, _ in pairs].index(node))
        node = nxt[node]
    assert e.answer == [node] and node not in seen  # k+1 distinct nodes: no wrap-around
    cycle, walker = 1, nxt[e.instance["start"]]
    while walker != e.instance["start"]:
        walker, cycle = nxt[walker], cycle + 1
    i = int(np.flatnonzero(e.answer_mask)[0])
    assert e.features["cycle_len"][i] == cycle > k
    assert e.features["backtracks"][i] == sum(b < a for a, b in zip(positions, positions[1:]))
    assert e.complexity[i] == k and len(e) == task.max_len(k)


def test_deterministic_and_knob():
    task = Depo()
    a, b = (task.sample(5, np.random.default_rng(9)) for _ in range(2))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    rng = np.random.default_rng(0)
    spans = [np.mean([task.sample(k, rng).features["backtracks"][-3] for _ in range(80)]) for k in (1, 4, 8)]
    assert spans[0] < spans[1] < spans[2]  # more hops, more back-and-forth in the input


def test_bad_input():
    with pytest.raises(AniraError):
        Depo().build([("aa", "bb"), ("bb", "bb")], "aa", 1)  # not a permutation
    with pytest.raises(AniraError):
        Depo().build(WORKED, "zz", 1)
    with pytest.raises(AniraError):
        Depo().sample(24, np.random.default_rng(0))


def test_non_integer_hops_and_special_names_are_rejected():
    for k in (1.5, 2.0, "2"):
        with pytest.raises(AniraError):
            Depo().build(WORKED, "dj", k)
    for bad in ("?", "=", "h2", "<eos>"):
        pairs = [(bad if u == "gi" else u, bad if v == "gi" else v) for u, v in WORKED]
        with pytest.raises(AniraError):
            Depo().build(pairs, "dj", 2)
