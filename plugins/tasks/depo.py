"""DEPO: multi-hop reasoning over a mapping given as shuffled pairs (the paper's appendix).

The instance is a permutation of n = 24 named nodes, listed as one pair
``u v`` ("u points to v") per node in random order, a start node x and a hop
count k. The answer is the single node reached after following k links from
x. Only the final node is asked for, so the answer token needs all k hops at
once (a chain-of-thought answer would make every hop a one-step lookup).

Difficulty knob: k, the number of hops. The permutation is built so that the
cycle through x has length c ~ U{k+1..n}: the answer is never reachable by
fewer hops and never x itself. The other n - c nodes form a uniformly random
permutation of their own (fixed points allowed).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from anira.errors import AniraError
from anira.hookspecs import hookimpl
from anira.task import DifficultyRanges, Example, FeatureSpec, Task, Tokenizer
from anira.plugins.tasks._common import BOS, EOS, assemble, name_pool, nan_array

NODES = 24
NAMES = name_pool(100)
MAX_HOPS = NODES - 1
HOP_TOKENS = [f"h{k}" for k in range(1, MAX_HOPS + 1)]
QUERY, SEP = "?", "="


class Depo(Task):
    """k-hop lookup: ``<bos> u1 v1 ... un vn ? X hK = Y <eos>``.

    Worked instance (n = 4, k = 2): pairs ``bc→ae, gi→gi, ae→dj, dj→bc``,
    start ``dj``::

        <bos> bc ae gi gi ae dj dj bc ? dj h2 = ae <eos>
        pos   0  1 .. 8 (pairs)       9 10 11 12 13 14

    Following two links: dj → bc (pair 3) → ae (pair 0). Answer ``ae``.
    At position 12 (``=``, predicting ``ae``): k = 2, n = 4, cycle_len = 3
    (dj → bc → ae → dj), backtracks = 1 (the second hop's pair, index 0,
    comes before the first hop's pair, index 3), complexity = 2. At position
    13 (predicting ``<eos>``) only k and n are defined and complexity is 0.
    """

    name = "depo"
    description = "follow k links of a permutation given as shuffled pairs; answer the final node"
    knob = "k = number of hops"
    complexity_description = (
        "answer positions: k (links followed) when predicting the final node, 0 for <eos>; NaN elsewhere"
    )
    default_ranges = DifficultyRanges(train=(1, 8), test_id=(1, 8), test_ood=(9, 16))
    min_difficulty = 1
    max_difficulty = MAX_HOPS
    default_max_iters = 6
    tokenizer = Tokenizer([BOS, EOS, QUERY, SEP, *NAMES, *HOP_TOKENS])

    features: ClassVar[tuple[FeatureSpec, ...]] = (
        FeatureSpec("k", "static", "number of hops asked for"),
        FeatureSpec("n", "static", "number of pairs (nodes) in the mapping"),
        FeatureSpec("cycle_len", "static", "length of the cycle through the start node"),
        FeatureSpec(
            "backtracks", "execution",
            "hops whose pair appears in the input before the previous hop's pair",
        ),
    )

    def max_len(self, difficulty: int) -> int:
        self.check_difficulty(difficulty)
        return 1 + 2 * NODES + 4 + 2

    def _draft(self, difficulty: int, rng: np.random.Generator):
        pairs, start = self._draw_pairs(difficulty, rng)
        words = [BOS, *(name for pair in pairs for name in pair), QUERY, start, f"h{difficulty}", SEP]
        return (np.asarray(self.tokenizer.encode(words), dtype=np.int64),
                lambda: self.build(pairs, start, difficulty))

    def _draw_pairs(self, difficulty: int, rng: np.random.Generator) -> tuple[list[tuple[str, str]], str]:
        k = difficulty
        names = [NAMES[i] for i in rng.choice(len(NAMES), size=NODES, replace=False).tolist()]
        c = int(rng.integers(k + 1, NODES + 1))
        nxt: dict[str, str] = {}
        for a in range(c):  # names[0..c-1] form the start's cycle, in link order
            nxt[names[a]] = names[(a + 1) % c]
        rest = names[c:]
        for a, b in zip(rest, [rest[i] for i in rng.permutation(len(rest)).tolist()]):
            nxt[a] = b
        order = rng.permutation(NODES).tolist()
        pairs = [(names[i], nxt[names[i]]) for i in order]
        return pairs, names[0]

    def build(self, pairs: list[tuple[str, str]], start: str, k: int) -> Example:
        """The example for pairs ``(u, next(u))`` in input order, a start node and k hops."""
        nxt = dict(pairs)
        if len(nxt) != len(pairs) or sorted(nxt) != sorted(nxt.values()):
            raise AniraError("depo: the pairs do not form a permutation")
        if not set(nxt) <= set(NAMES):
            raise AniraError(f"depo: {sorted(set(nxt) - set(NAMES), key=str)[0]!r} is not a node name")
        if start not in nxt:
            raise AniraError(f"depo: start node {start!r} is not in the mapping")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_HOPS:
            raise AniraError(f"depo: k must be in 1..{MAX_HOPS}, got {k}")
        where = {u: idx for idx, (u, _) in enumerate(pairs)}
        node, backtracks, prev_at = start, 0, None
        for _ in range(k):
            at = where[node]
            if prev_at is not None and at < prev_at:
                backtracks += 1
            prev_at = at
            node = nxt[node]
        cycle_len, walker = 1, nxt[start]
        while walker != start:
            walker, cycle_len = nxt[walker], cycle_len + 1

        tokens = [BOS]
        for u, v in pairs:
            tokens += [u, v]
        tokens += [QUERY, start, f"h{k}", SEP, node, EOS]
        n = len(tokens)
        eq = n - 3
        feats = {spec.name: nan_array(n) for spec in self.features}
        feats["k"][eq:eq + 2] = k
        feats["n"][eq:eq + 2] = len(pairs)
        feats["cycle_len"][eq] = cycle_len
        feats["backtracks"][eq] = backtracks
        complexity = nan_array(n)
        complexity[eq], complexity[eq + 1] = k, 0
        instance = {
            "pairs": [f"{u}->{v}" for u, v in pairs],
            "start": start,
            "k": k,
            "cycle_len": cycle_len,
        }
        return assemble(
            self.tokenizer, tokens, eq + 1, complexity=complexity, features=feats,
            instance=instance, difficulty=k, answer=[node],
        )


@hookimpl
def register_tasks(register):
    register(Depo)
