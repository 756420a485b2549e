"""BREVO: the worked instance and networkx as the independent solver."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anira.errors import AniraError
from anira.plugins.tasks.brevo import Brevo

WORKED_EDGES = [("ce", "ab"), ("ab", "dh"), ("ce", "dh"), ("bj", "dh")]


def graph_of(example) -> tuple[nx.DiGraph, str]:
    g = nx.DiGraph()
    g.add_nodes_from(example.instance["nodes"])
    g.add_edges_from(tuple(e.split("->")) for e in example.instance["edges"])
    return g, example.instance["query"]


def reference(g: nx.DiGraph, q: str) -> dict:
    """Answer and execution features from networkx's DFS over the reversed graph."""
    rev = g.reverse(copy=False)
    order = list(nx.dfs_postorder_nodes(rev, q, sort_neighbors=sorted))
    assert order[-1] == q
    answer = order[:-1]
    parents = nx.dfs_predecessors(rev, q, sort_neighbors=sorted)
    depth = {}
    for x in answer:
        d, y = 0, x
        while y != q:
            y, d = parents[y], d + 1
        depth[x] = d
    frontier, entered, stack = {}, {q}, [q]
    for u, v, kind in nx.dfs_labeled_edges(rev, q, sort_neighbors=sorted):
        if kind == "forward" and u != v:
            entered.add(v)
            stack.append(v)
        elif kind == "reverse" and u != v:
            stack.pop()
            waiting = {p for f in stack for p in g.predecessors(f) if p not in entered}
            frontier[v] = len(waiting)
    needed = set(answer) | {q}
    enabled, done = {}, set()
    for x in answer:
        done.add(x)
        enabled[x] = sum(
            1 for y in g.successors(x)
            if y in needed and y not in done and set(g.predecessors(y)) <= done
        )
    return {"answer": answer, "depth": depth, "frontier": frontier, "enabled": enabled}


def test_worked_instance():
    e = Brevo().build(WORKED_EDGES, "dh")
    assert Brevo.tokenizer.decode(e.tokens) == "<bos> ce ab ab dh ce dh bj dh ? dh = ce ab bj <eos>"
    assert e.answer == ["ce", "ab", "bj"]
    assert np.flatnonzero(e.answer_mask).tolist() == [11, 12, 13, 14]
    expected = {
        "N": [4, 4, 4, 4],
        "hub": [2, 1, 1, np.nan],
        "in_degree": [0, 1, 0, np.nan],
        "remaining": [3, 2, 1, np.nan],
        "deps": [0, 1, 0, np.nan],
        "dfs_depth": [2, 1, 1, np.nan],
        "frontier": [1, 1, 0, np.nan],
        "enabled": [1, 0, 1, np.nan],
        "distance": [1, 1, 1, np.nan],
    }
    for name, values in expected.items():
        np.testing.assert_array_equal(e.features[name][11:15], values, err_msg=name)
        assert np.isnan(e.features[name][:11]).all() and np.isnan(e.features[name][15])
    np.testing.assert_array_equal(e.complexity[11:15], [6, 1, 3, 2])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 40))
def test_against_networkx(seed, n):
    task = Brevo()
    e = task.sample(n, np.random.default_rng(seed))
    g, q = graph_of(e)
    assert len(e) <= task.max_len(n)
    assert g.number_of_nodes() == n == e.instance["N"]
    assert nx.is_directed_acyclic_graph(g)
    assert max(d for _, d in g.in_degree()) <= 4 and max(d for _, d in g.out_degree()) <= 4
    ref = reference(g, q)
    assert e.answer == ref["answer"]
    assert set(e.answer) == nx.ancestors(g, q)
    first = int(np.flatnonzero(e.answer_mask)[0])
    m = len(e.answer)
    for k, x in enumerate(e.answer):
        f = {name: e.features[name][first + k] for name in e.features}
        assert f["N"] == n
        assert f["hub"] == g.out_degree(x) and f["in_degree"] == g.in_degree(x)
        assert f["deps"] == len(nx.ancestors(g, x))
        assert f["remaining"] == m - k
        assert f["distance"] == nx.shortest_path_length(g, x, q)
        assert f["dfs_depth"] == ref["depth"][x]
        assert f["frontier"] == ref["frontier"][x]
        assert f["enabled"] == ref["enabled"][x]
    # total DFS work: every reached node entered and finished, every edge into one inspected
    reached = set(e.answer) | {q}
    edges_in = sum(g.in_degree(x) for x in reached)
    assert np.nansum(e.complexity) == 2 * len(reached) + edges_in


def test_deterministic_given_a_seed():
    task = Brevo()
    a, b = (task.sample(20, np.random.default_rng(3)) for _ in range(2))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.instance == b.instance


def test_knob_raises_measured_complexity():
    task = Brevo()
    rng = np.random.default_rng(1)
    work, length = [], []
    for n in (5, 15, 30):
        ex = [task.sample(n, rng) for _ in range(30)]
        work.append(np.mean([np.nansum(e.complexity) for e in ex]))
        length.append(np.mean([len(e.answer) for e in ex]))
    assert work[0] < work[1] < work[2]
    assert length[0] < length[1] < length[2]


def test_cycle_and_bad_input():
    with pytest.raises(AniraError):
        Brevo().build([("aa", "bb"), ("bb", "aa"), ("aa", "cc")], "cc")
    with pytest.raises(AniraError):
        Brevo().build([("aa", "aa")], "aa")
    for bad in (2, 51, 4.0, None):
        with pytest.raises(AniraError):
            Brevo().sample(bad, np.random.default_rng(0))


def test_duplicate_edges_and_special_names_are_rejected():
    # a repeated edge would count the same dependent twice in hub / in_degree and the DFS work
    with pytest.raises(AniraError, match="duplicate"):
        Brevo().build([("aa", "bb"), ("aa", "bb")], "bb")
    # special tokens are in the vocabulary but are not node names (the sequence would be ambiguous)
    for bad in ("?", "=", "<bos>", "<eos>"):
        with pytest.raises(AniraError):
            Brevo().build([(bad, "bb")], "bb")
        with pytest.raises(AniraError):
            Brevo().build([("aa", "bb")], bad)
