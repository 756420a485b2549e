"""Probabilistic context-free grammars: length-conditioned sampling and an
incremental prefix-probability parser (probabilistic Earley, after Stolcke 1995).

The grammars here have no empty rules and no cycles among nonterminals (every
rule rewrites a nonterminal into symbols strictly "below" it), which keeps the
parser exact without Stolcke's left-corner and unit-production closures:
prediction and completion can each be finished in one pass over the
nonterminals in topological order.

The parser counts its own arithmetic so the counts are well defined:
every ``x += y`` on a probability is one addition and every product is one
multiplication (see :class:`ColumnStats`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from anira.errors import AniraError


@dataclass(frozen=True)
class Rule:
    lhs: str
    rhs: tuple[str, ...]
    prob: float


@dataclass
class Grammar:
    """A PCFG without empty rules or nonterminal cycles."""

    start: str
    rules: list[Rule]
    #: nonterminals, every one before the nonterminals it can rewrite into
    order: list[str] = field(init=False)
    terminals: list[str] = field(init=False)
    by_lhs: dict[str, list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_lhs = {}
        for idx, rule in enumerate(self.rules):
            if not rule.rhs:
                raise AniraError(f"grammar: empty rule for {rule.lhs!r}")
            self.by_lhs.setdefault(rule.lhs, []).append(idx)
        for lhs, idxs in self.by_lhs.items():
            total = sum(self.rules[i].prob for i in idxs)
            if abs(total - 1.0) > 1e-9:
                raise AniraError(f"grammar: rule probabilities of {lhs!r} sum to {total}, not 1")
        if self.start not in self.by_lhs:
            raise AniraError(f"grammar: no rule for the start symbol {self.start!r}")
        self.terminals = sorted({s for r in self.rules for s in r.rhs if s not in self.by_lhs})
        self.order = self._topological_order()
        self.rank = {nt: i for i, nt in enumerate(self.order)}

    def is_terminal(self, symbol: str) -> bool:
        return symbol not in self.by_lhs

    def _topological_order(self) -> list[str]:
        children = {nt: {s for i in idxs for s in self.rules[i].rhs if s in self.by_lhs}
                    for nt, idxs in self.by_lhs.items()}
        order: list[str] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done

        def visit(nt: str) -> None:
            if state.get(nt) == 2:
                return
            if state.get(nt) == 1:
                raise AniraError(f"grammar: nonterminal {nt!r} derives itself (cycle)")
            state[nt] = 1
            for child in sorted(children[nt]):
                visit(child)
            state[nt] = 2
            order.append(nt)

        for nt in sorted(self.by_lhs):
            visit(nt)
        return order[::-1]  # parents first


# --- length-conditioned sampling -------------------------------------------------------------
class LengthSampler:
    """Draws strings of an exact length n from the grammar's distribution given |w| = n.

    ``inside[A][n]`` is the probability that A derives some string of length n;
    a derivation of A with yield length n is drawn top-down, choosing each rule
    and each split point in proportion to the inside probabilities.
    """

    def __init__(self, grammar: Grammar, max_len: int) -> None:
        self.g = grammar
        self.max_len = max_len
        self._cdf_cache: dict[tuple, list[float]] = {}
        self.inside: dict[str, np.ndarray] = {}
        for t in grammar.terminals:
            vec = np.zeros(max_len + 1)
            vec[1] = 1.0
            self.inside[t] = vec
        self.rule_inside: list[np.ndarray] = [np.zeros(0)] * len(grammar.rules)
        for nt in reversed(grammar.order):  # children before parents
            total = np.zeros(max_len + 1)
            for i in grammar.by_lhs[nt]:
                vec = self._rhs_inside(grammar.rules[i].rhs)
                self.rule_inside[i] = vec
                total += grammar.rules[i].prob * vec
            self.inside[nt] = total

    def _rhs_inside(self, rhs: tuple[str, ...]) -> np.ndarray:
        vec = self.inside[rhs[0]]
        for sym in rhs[1:]:
            vec = np.convolve(vec, self.inside[sym])[: self.max_len + 1]
        return vec

    def lengths(self) -> list[int]:
        """Lengths the start symbol can derive (within max_len)."""
        return [n for n in range(1, self.max_len + 1) if self.inside[self.g.start][n] > 0]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[str], str]:
        """A string of length n and its derivation as a bracketed tree."""
        if not 1 <= n <= self.max_len or self.inside[self.g.start][n] <= 0:
            raise AniraError(f"the grammar derives no string of length {n}")
        out: list[str] = []
        tree = self._sample(self.g.start, n, rng, out)
        return out, tree

    def _sample(self, sym: str, n: int, rng: np.random.Generator, out: list[str]) -> str:
        if self.g.is_terminal(sym):
            out.append(sym)
            return sym
        idxs = self.g.by_lhs[sym]
        rule = self.g.rules[idxs[_choose(self._rule_cdf(sym, n), rng)]]
        parts = self._split(rule, n, rng)
        inner = " ".join(self._sample(s, m, rng, out) for s, m in zip(rule.rhs, parts))
        return f"({sym} {inner})"

    def _split(self, rule: Rule, n: int, rng: np.random.Generator) -> list[int]:
        parts: list[int] = []
        for j in range(len(rule.rhs) - 1):
            first = 1 + _choose(self._split_cdf(rule, j, n), rng)
            parts.append(first)
            n -= first
        parts.append(n)
        return parts

    # The distributions only depend on (symbol or rule, length): cache them as
    # cumulative lists so that drawing a string needs no numpy per choice.
    def _rule_cdf(self, sym: str, n: int) -> list[float]:
        key = (sym, n)
        cdf = self._cdf_cache.get(key)
        if cdf is None:
            weights = [self.g.rules[i].prob * self.rule_inside[i][n] for i in self.g.by_lhs[sym]]
            cdf = self._cdf_cache[key] = np.cumsum(weights).tolist()
        return cdf

    def _split_cdf(self, rule: Rule, j: int, n: int) -> list[float]:
        """Weights of the length m = 1..n-1 of rhs[j] given the rest spans n - m."""
        key = (rule, j, n)
        cdf = self._cdf_cache.get(key)
        if cdf is None:
            rest = self._rhs_inside(rule.rhs[j + 1:])
            m = np.arange(1, n)
            cdf = self._cdf_cache[key] = np.cumsum(self.inside[rule.rhs[j]][m] * rest[n - m]).tolist()
        return cdf


def _choose(cdf: list[float], rng: np.random.Generator) -> int:
    """Index drawn in proportion to the increments of a cumulative list."""
    return min(bisect.bisect_right(cdf, rng.random() * cdf[-1]), len(cdf) - 1)


# --- incremental prefix parser -----------------------------------------------------------
@dataclass
class ColumnStats:
    """What the parser did at one column (after consuming one more token).

    ``scanned``: items advanced over the token; ``candidates``: items of the
    previous column that expected a terminal (the hypotheses the token tests);
    ``created``: items added by completion and prediction; ``additions`` and
    ``multiplications``: arithmetic on forward/inner probabilities, including the
    prefix-probability sum; ``prefix_prob``: P(the string starts with the prefix).
    """

    scanned: int
    candidates: int
    created: int
    additions: int
    multiplications: int
    prefix_prob: float
    complete: bool  # the prefix is itself a sentence
    expected: frozenset[str]  # terminals that can come next
    sentence_prob: float = 0.0  # P(the prefix is the whole sentence): inner prob of the complete start items


class PrefixParser:
    """Probabilistic Earley parser fed one token at a time.

    An item is (rule, dot, origin) with a forward probability alpha (the
    probability of all derivations of the prefix that reach this item) and an
    inner probability gamma (of the item's own span).
    """

    def __init__(self, grammar: Grammar) -> None:
        self.g = grammar
        self.rhs_len = [len(rule.rhs) for rule in grammar.rules]
        self.lhs_rank = [grammar.rank[rule.lhs] for rule in grammar.rules]
        self.columns: list[dict[tuple[int, int, int], list[float]]] = []
        self.waiting: list[dict[str, list[tuple[int, int, int]]]] = []  # symbol -> items expecting it
        self.stats: list[ColumnStats] = []
        column: dict[tuple[int, int, int], list[float]] = {}
        adds, mults = self._predict(column, 0, {self.g.start: 1.0})
        self._finish(column, scanned=0, candidates=0, created=len(column), adds=adds, mults=mults, prefix=1.0)

    def _predict(
        self, column: dict, k: int, seed: dict[str, float] | None = None
    ) -> tuple[int, int]:
        """Add B -> .gamma items for every nonterminal expected in the column."""
        g = self.g
        weight: dict[str, float] = dict(seed or {})
        adds = mults = 0
        for key, (alpha, _) in column.items():
            r, dot, _ = key
            rhs = g.rules[r].rhs
            if dot < len(rhs) and not g.is_terminal(rhs[dot]):
                weight[rhs[dot]] = weight.get(rhs[dot], 0.0) + alpha
                adds += 1
        for nt in g.order:  # parents first: a predicted item feeds its children's weight
            if nt not in weight:
                continue
            w = weight[nt]
            for r in g.by_lhs[nt]:
                rule = g.rules[r]
                alpha = w * rule.prob
                mults += 1
                column[(r, 0, k)] = [alpha, rule.prob]
                first = rule.rhs[0]
                if not g.is_terminal(first):
                    weight[first] = weight.get(first, 0.0) + alpha
                    adds += 1
        return adds, mults

    def _finish(self, column: dict, *, scanned: int, candidates: int, created: int,
                adds: int, mults: int, prefix: float) -> None:
        g = self.g
        waiting: dict[str, list[tuple[int, int, int]]] = {}
        complete = False
        sentence = 0.0
        for key in column:
            r, dot, origin = key
            rhs = g.rules[r].rhs
            if dot < len(rhs):
                waiting.setdefault(rhs[dot], []).append(key)
            elif origin == 0 and g.rules[r].lhs == g.start:
                complete = True
                sentence += column[key][1]
        self.columns.append(column)
        self.waiting.append(waiting)
        self.stats.append(ColumnStats(
            scanned=scanned, candidates=candidates, created=created, additions=adds,
            multiplications=mults, prefix_prob=prefix, complete=complete,
            expected=frozenset(s for s in waiting if g.is_terminal(s)), sentence_prob=sentence,
        ))

    def feed(self, token: str) -> ColumnStats:
        """Consume one token; returns the statistics of the new column."""
        g = self.g
        k = len(self.columns)
        prev_wait = self.waiting[-1]
        candidates = sum(len(v) for s, v in prev_wait.items() if g.is_terminal(s))
        column: dict[tuple[int, int, int], list[float]] = {}
        prefix, adds, mults = 0.0, 0, 0
        # scan: alpha and gamma carry over unchanged
        for key in prev_wait.get(token, []):
            r, dot, origin = key
            alpha, gamma = self.columns[-1][key]
            column[(r, dot + 1, origin)] = [alpha, gamma]
            prefix += alpha
            adds += 1
        scanned = len(column)
        # complete, deepest nonterminals first, so a constituent's inner
        # probability is final before it advances its parents; a parent's rank
        # is always lower than its child's, so one sweep over the ranks suffices
        buckets: list[list[tuple[int, int, int]]] = [[] for _ in g.order]
        for key in column:
            if key[1] == self.rhs_len[key[0]]:
                buckets[self.lhs_rank[key[0]]].append(key)
        for rank in range(len(buckets) - 1, -1, -1):
            for key in buckets[rank]:
                r, _, j = key
                gamma_done = column[key][1]
                prev_column = self.columns[j]
                for pkey in self.waiting[j].get(g.rules[r].lhs, ()):
                    pr, pdot, porigin = pkey
                    palpha, pgamma = prev_column[pkey]
                    nkey = (pr, pdot + 1, porigin)
                    cell = column.get(nkey)
                    if cell is None:
                        cell = column[nkey] = [0.0, 0.0]
                        if pdot + 1 == self.rhs_len[pr]:
                            buckets[self.lhs_rank[pr]].append(nkey)
                    cell[0] += palpha * gamma_done
                    cell[1] += pgamma * gamma_done
                    adds += 2
                    mults += 2
        p_adds, p_mults = self._predict(column, k)
        self._finish(
            column, scanned=scanned, candidates=candidates, created=len(column) - scanned,
            adds=adds + p_adds, mults=mults + p_mults, prefix=prefix,
        )
        return self.stats[-1]
