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

Two options change the layout, not the problem (both off by default, the
paper's one question per mapping):

- ``queries=q`` asks q questions about the same mapping, each ``? X hK = Y``
  with the instance's k and a distinct start node whose cycle is longer than
  k; every answer is supervised. One answer token per 55-token instance is a
  sparse signal: our models did not learn even the one-hop lookup from it
  (docs/deciders.md, section 7).
- ``separators=True`` puts ``,`` between consecutive pairs, so a pair's first
  name is recognisable from its neighbour alone; without it every node also
  appears as the second name of another pair, a decoy told apart only by the
  parity of its position in the pair list.

One option changes the problem's size, for a curriculum only (the real task is
n = 24): ``nodes=n`` (2..24, default 24) draws a mapping of n nodes, so k can be
at most n - 1 (the start's cycle needs k + 1 nodes). The vocabulary is the same
at every n, so a network trained at one n initialises a run at another.
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
QUERY, SEP, COMMA = "?", "=", ","


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
    # the pair separator comes last so that the ids of the default layout's tokens do not move
    tokenizer = Tokenizer([BOS, EOS, QUERY, SEP, *NAMES, *HOP_TOKENS, COMMA])

    features: ClassVar[tuple[FeatureSpec, ...]] = (
        FeatureSpec("k", "static", "number of hops asked for"),
        FeatureSpec("n", "static", "number of pairs (nodes) in the mapping"),
        FeatureSpec("cycle_len", "static", "length of the cycle through the start node"),
        FeatureSpec(
            "backtracks", "execution",
            "hops whose pair appears in the input before the previous hop's pair",
        ),
    )

    def __init__(self, ranges: DifficultyRanges | None = None, queries: int = 1,
                 separators: bool = False, nodes: int = NODES) -> None:
        # the mapping's size first: the ranges are checked against k <= nodes - 1
        if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or not 2 <= nodes <= NODES:
            raise AniraError(f"depo: nodes must be an integer in 2..{NODES}, got {nodes!r}")
        self.nodes = int(nodes)
        super().__init__(ranges)
        if isinstance(queries, bool) or not isinstance(queries, (int, np.integer)) or not 1 <= queries <= self.nodes:
            raise AniraError(f"depo: queries must be an integer in 1..{self.nodes} (nodes), got {queries!r}")
        self.queries = int(queries)
        self.separators = bool(separators)

    def check_difficulty(self, difficulty: int) -> None:
        super().check_difficulty(difficulty)
        if difficulty > self.nodes - 1:
            raise AniraError(f"depo: k = {difficulty} hops need at least {difficulty + 1} nodes, "
                             f"the mapping has {self.nodes} (task.nodes)")

    def max_len(self, difficulty: int) -> int:
        self.check_difficulty(difficulty)
        pairs = 2 * self.nodes + (self.nodes - 1 if self.separators else 0)
        return 1 + pairs + 5 * self.queries + 1

    def _draft(self, difficulty: int, rng: np.random.Generator):
        pairs, starts = self._draw_pairs(difficulty, rng)
        words = [BOS, *self._pair_words(pairs)]
        for start in starts:
            words += [QUERY, start, f"h{difficulty}", SEP]
        return (np.asarray(self.tokenizer.encode(words), dtype=np.int64),
                lambda: self.build(pairs, starts, difficulty))

    def _pair_words(self, pairs: list[tuple[str, str]]) -> list[str]:
        words: list[str] = []
        for i, (u, v) in enumerate(pairs):
            words += [COMMA, u, v] if self.separators and i else [u, v]
        return words

    def _draw_pairs(self, difficulty: int, rng: np.random.Generator) -> tuple[list[tuple[str, str]], list[str]]:
        # with several queries, every start must lie on a cycle longer than k (so that no answer
        # is reachable in fewer hops); a mapping with too few such nodes is drawn again
        for _ in range(1000):
            nxt, names = self._draw_mapping(difficulty, rng, self.nodes)
            eligible = [] if self.queries == 1 else [u for u in names[1:] if _cycle_length(nxt, u) > difficulty]
            if len(eligible) >= self.queries - 1:
                break
        else:
            raise AniraError(f"depo: could not draw a mapping with {self.queries} nodes on cycles "
                             f"longer than k = {difficulty}; use fewer queries")
        order = rng.permutation(self.nodes).tolist()
        pairs = [(names[i], nxt[names[i]]) for i in order]
        picks = rng.choice(len(eligible), size=self.queries - 1, replace=False).tolist() if self.queries > 1 else []
        return pairs, [names[0], *(eligible[i] for i in picks)]

    @staticmethod
    def _draw_mapping(k: int, rng: np.random.Generator, n: int = NODES) -> tuple[dict[str, str], list[str]]:
        """A random permutation of n nodes whose cycle through ``names[0]`` has length c ~ U{k+1..n}."""
        names = [NAMES[i] for i in rng.choice(len(NAMES), size=n, replace=False).tolist()]
        c = int(rng.integers(k + 1, n + 1))
        nxt: dict[str, str] = {}
        for a in range(c):  # names[0..c-1] form the start's cycle, in link order
            nxt[names[a]] = names[(a + 1) % c]
        rest = names[c:]
        for a, b in zip(rest, [rest[i] for i in rng.permutation(len(rest)).tolist()]):
            nxt[a] = b
        return nxt, names

    def build(self, pairs: list[tuple[str, str]], start: str | list[str], k: int) -> Example:
        """The example for pairs ``(u, next(u))`` in input order, a start node (or one per
        query) and k hops."""
        starts = [start] if isinstance(start, str) else list(start)
        nxt = dict(pairs)
        if len(nxt) != len(pairs) or sorted(nxt) != sorted(nxt.values()):
            raise AniraError("depo: the pairs do not form a permutation")
        if not set(nxt) <= set(NAMES):
            raise AniraError(f"depo: {sorted(set(nxt) - set(NAMES), key=str)[0]!r} is not a node name")
        if not starts or len(set(starts)) != len(starts):
            raise AniraError(f"depo: the start nodes must be distinct and at least one, got {starts}")
        for s in starts:
            if s not in nxt:
                raise AniraError(f"depo: start node {s!r} is not in the mapping")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_HOPS:
            raise AniraError(f"depo: k must be in 1..{MAX_HOPS}, got {k}")
        where = {u: idx for idx, (u, _) in enumerate(pairs)}

        tokens = [BOS, *self._pair_words(pairs)]
        answers, rows = [], []  # rows: (position predicting the answer, cycle_len, backtracks)
        for s in starts:
            node, backtracks, prev_at = s, 0, None
            for _ in range(k):
                at = where[node]
                if prev_at is not None and at < prev_at:
                    backtracks += 1
                prev_at = at
                node = nxt[node]
            tokens += [QUERY, s, f"h{k}", SEP]
            rows.append((len(tokens) - 1, _cycle_length(nxt, s), backtracks))
            tokens.append(node)
            answers.append(node)
        tokens.append(EOS)
        n = len(tokens)
        feats = {spec.name: nan_array(n) for spec in self.features}
        complexity = nan_array(n)
        for eq, cycle_len, backtracks in rows:
            feats["cycle_len"][eq], feats["backtracks"][eq], complexity[eq] = cycle_len, backtracks, k
        ends = [eq for eq, _, _ in rows] + [n - 2]  # the answers, and the last one predicting <eos>
        feats["k"][ends], feats["n"][ends] = k, len(pairs)
        complexity[n - 2] = 0
        instance = {
            "pairs": [f"{u}->{v}" for u, v in pairs],
            "start": starts[0] if len(starts) == 1 else starts,
            "k": k,
            "cycle_len": rows[0][1] if len(rows) == 1 else [r[1] for r in rows],
        }
        example = assemble(
            self.tokenizer, tokens, rows[0][0] + 1, complexity=complexity, features=feats,
            instance=instance, difficulty=k, answer=answers,
        )
        # with several queries the answer positions are not one span: only the positions
        # predicting an answer or the closing <eos> are scored and trained; the rest
        # (the later questions) belong to the question
        scored = np.zeros(n, dtype=bool)
        scored[ends] = True
        example.answer_mask[:] = scored
        example.loss_mask[:] = scored
        example.question_mask[:] = True
        example.question_mask[[eq + 1 for eq, _, _ in rows] + [n - 1]] = False
        return example


def _cycle_length(nxt: dict[str, str], start: str) -> int:
    length, walker = 1, nxt[start]
    while walker != start:
        walker, length = nxt[walker], length + 1
    return length


@hookimpl
def register_tasks(register):
    register(Depo)
