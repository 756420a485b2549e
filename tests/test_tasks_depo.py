"""DEPO: the worked instance and a chain-following solver."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anira.errors import AniraError
from anira.plugins.tasks.depo import HOP_TOKENS, NAMES, Depo
from anira.task import DifficultyRanges, Tokenizer

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


# --- the layout options: several queries per mapping, separators between pairs ----------


def test_worked_instance_with_separators_and_two_queries():
    task = Depo(queries=2, separators=True)
    e = task.build(WORKED, ["dj", "ae"], 2)
    assert task.decode(e.tokens) == (
        "<bos> bc ae , gi gi , ae dj , dj bc ? dj h2 = ae ? ae h2 = bc <eos>")
    # dj -> bc -> ae; ae -> dj -> bc
    assert e.answer == ["ae", "bc"]
    assert np.flatnonzero(e.answer_mask).tolist() == [15, 20, 21]  # both `=`, then the last answer
    assert np.array_equal(e.loss_mask, e.answer_mask)
    assert np.flatnonzero(~e.question_mask).tolist() == [16, 21, 22]  # answers and <eos>
    np.testing.assert_array_equal(e.complexity[[15, 20, 21]], [2, 2, 0])
    assert np.isnan(np.delete(e.complexity, [15, 20, 21])).all()
    np.testing.assert_array_equal(e.features["k"][[15, 20, 21]], [2, 2, 2])
    np.testing.assert_array_equal(e.features["cycle_len"][[15, 20]], [3, 3])
    # dj's hops use pairs 3 then 0 (one backtrack); ae's use pairs 2 then 3 (none)
    np.testing.assert_array_equal(e.features["backtracks"][[15, 20]], [1, 0])
    assert len(e) == 1 + 4 * 2 + 3 + 5 * 2 + 1
    # a model that gets one of the two answers wrong is wrong
    pred = np.roll(e.tokens, -1)
    assert task.score(e, pred)
    pred[20] = e.tokens[16]
    assert not task.score(e, pred)


def test_default_layout_is_unchanged_by_the_new_token():
    # the separator is appended to the vocabulary: the default layout's ids do not move
    old = Tokenizer(["<bos>", "<eos>", "?", "=", *NAMES, *HOP_TOKENS])
    assert Depo.tokenizer.encode(old.vocab) == old.encode(old.vocab)
    assert Depo.tokenizer.encode([","]) == [len(Depo.tokenizer) - 1]
    e = Depo().build(WORKED, ["dj"], 2)
    assert Depo.tokenizer.decode(e.tokens) == "<bos> bc ae gi gi ae dj dj bc ? dj h2 = ae <eos>"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 23), queries=st.integers(1, 8),
       separators=st.booleans())
def test_every_query_is_answered_by_following_k_links(seed, k, queries, separators):
    task = Depo(queries=queries, separators=separators)
    e = task.sample(k, np.random.default_rng(seed))
    nxt = dict(tuple(p.split("->")) for p in e.instance["pairs"])
    starts = e.instance["start"] if queries > 1 else [e.instance["start"]]
    assert len(starts) == queries == len(set(starts)) == len(e.answer)
    for start, answer in zip(starts, e.answer):
        node, seen = start, []
        for _ in range(k):
            seen.append(node)
            node = nxt[node]
        assert node == answer and node not in seen  # never reachable in fewer hops
    assert len(e) == task.max_len(k)
    assert e.answer_mask.sum() == queries + 1
    words = task.tokenizer.decode(e.tokens).split()
    assert words.count(",") == (23 if separators else 0)


def test_bad_layout_options():
    for bad in (0, 25, True, 2.0):
        with pytest.raises(AniraError, match="queries"):
            Depo(queries=bad)
    with pytest.raises(AniraError, match="distinct"):
        Depo(queries=2).build(WORKED, ["dj", "dj"], 1)
    with pytest.raises(AniraError, match="start node"):
        Depo(queries=2).build(WORKED, ["dj", "zz"], 1)


def test_many_queries_at_few_hops_redraw_the_mapping():
    # k = 4 lets the first start's cycle be as short as 5 nodes: eight starts on cycles
    # longer than k need the mapping to be drawn again, never a short cycle's node
    task = Depo(queries=8)
    rng = np.random.default_rng(3)
    for _ in range(100):
        e = task.sample(4, rng)
        assert (e.features["cycle_len"][e.answer_mask][:-1] > 4).all()


# --- the mapping's size: nodes=n, for a curriculum towards the real n = 24 -------------


def test_worked_small_instance_with_four_nodes():
    # seed 0 at n = 4, k = 2 draws pairs fa->ic, ic->cg, cg->fa, gc->gc and start cg:
    # cg -> fa (pair 2) -> ic (pair 0), one backtrack, on the 3-cycle cg fa ic
    task = Depo(nodes=4, ranges=DifficultyRanges(train=(1, 3), test_id=(1, 3), test_ood=(3, 3)))
    e = task.sample(2, np.random.default_rng(0))
    assert task.decode(e.tokens) == "<bos> fa ic ic cg cg fa gc gc ? cg h2 = ic <eos>"
    assert e.answer == ["ic"] and len(e) == task.max_len(2) == 1 + 2 * 4 + 5 + 1
    np.testing.assert_array_equal(e.features["n"][12:14], [4, 4])
    np.testing.assert_array_equal(e.features["cycle_len"][12:14], [3, np.nan])
    np.testing.assert_array_equal(e.features["backtracks"][12:14], [1, np.nan])
    np.testing.assert_array_equal(e.complexity[12:14], [2, 0])
    # build() from the same pairs gives the same example
    rebuilt = task.build([("fa", "ic"), ("ic", "cg"), ("cg", "fa"), ("gc", "gc")], "cg", 2)
    np.testing.assert_array_equal(rebuilt.tokens, e.tokens)


def test_default_samples_do_not_move():
    # nodes=24 is the default: the same draws, token for token, as a task built without it
    for k in (1, 4, 9):
        a = Depo().sample(k, np.random.default_rng(k))
        b = Depo(nodes=24).sample(k, np.random.default_rng(k))
        np.testing.assert_array_equal(a.tokens, b.tokens)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 24), data=st.data(),
       separators=st.booleans())
def test_chain_following_at_every_size(seed, n, data, separators):
    k = data.draw(st.integers(1, n - 1))
    queries = data.draw(st.integers(1, min(n, 4) if k < n - 1 else 1))
    task = Depo(nodes=n, queries=queries, separators=separators,
                ranges=DifficultyRanges(train=(1, n - 1), test_id=(1, n - 1), test_ood=(n - 1, n - 1)))
    e = task.sample(k, np.random.default_rng(seed))
    pairs = [tuple(p.split("->")) for p in e.instance["pairs"]]
    nxt = dict(pairs)
    assert len(nxt) == n and sorted(nxt) == sorted(nxt.values())  # a permutation of n nodes
    starts = e.instance["start"] if queries > 1 else [e.instance["start"]]
    for start, answer in zip(starts, e.answer, strict=True):
        node, seen = start, []
        for _ in range(k):
            seen.append(node)
            node = nxt[node]
        assert node == answer and node not in seen
    assert len(e) == task.max_len(k) == 1 + 2 * n + (n - 1 if separators else 0) + 5 * queries + 1
    assert (e.features["n"][e.answer_mask] == n).all()


def test_a_small_mapping_uses_the_same_vocabulary():
    small = Depo(nodes=4, ranges=DifficultyRanges(train=(1, 2), test_id=(1, 2), test_ood=(3, 3)))
    assert small.tokenizer is Depo.tokenizer and small.vocab_size == Depo().vocab_size


def test_bad_sizes():
    small = DifficultyRanges(train=(1, 1), test_id=(1, 1), test_ood=(1, 1))
    for bad in (0, 1, 25, True, 4.0, "4"):
        with pytest.raises(AniraError, match="nodes"):
            Depo(nodes=bad, ranges=small)
    with pytest.raises(AniraError, match="nodes"):  # the default ranges ask for k up to 16
        Depo(nodes=8)
    task = Depo(nodes=4, ranges=DifficultyRanges(train=(1, 3), test_id=(1, 3), test_ood=(3, 3)))
    with pytest.raises(AniraError, match="the mapping has 4"):
        task.sample(4, np.random.default_rng(0))
    with pytest.raises(AniraError, match="queries"):
        Depo(nodes=4, queries=5, ranges=small)
    for bad in (0, 1, 25):  # one line each
        with pytest.raises(AniraError) as info:
            Depo(nodes=bad, ranges=small)
        assert "\n" not in str(info.value)
