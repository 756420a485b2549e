"""LANO: language modelling on a synthetic PCFG, with per-token parser proxies (§3–4).

The grammar has the paper's size: 16 nonterminals in 7 layers (1, 2, 3, 3, 3,
2, 2 from the start symbol down), 3 terminals (a, b, c), 35 rules. Every rule
rewrites a nonterminal of layer l into 1 or 2 symbols of layer l+1 (2 with the
branching probability 0.5; layer 7 is the terminals), so every derivation has
depth exactly 7. Rule probabilities are Dirichlet(4) draws. The grammar is built
from a fixed seed (:data:`GRAMMAR_SEED`) and is the same in every run; the
construction retries the next seed until every nonterminal is reachable, no
nonterminal has two identical rules, and every length 8..64 is derivable.

Difficulty knob: n, the string length in terminals. A string is drawn from the
grammar's distribution conditioned on its length (exactly, through inside
probabilities by length), so the knob changes length and nothing else.

Per-token proxies come from an incremental probabilistic Earley parser
(:mod:`anira.plugins.tasks._pcfg`); the column after token i describes position i.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np

from anira.errors import AniraError
from anira.hookspecs import hookimpl
from anira.task import DifficultyRanges, Example, FeatureSpec, Task, Tokenizer
from anira.plugins.tasks._common import BOS, EOS, nan_array
from anira.plugins.tasks._pcfg import ColumnStats, Grammar, LengthSampler, PrefixParser, Rule

GRAMMAR_SEED = 260_208_969  # the first seed from 260_208_864 (the arXiv id) that passes the checks
LAYER_SIZES = (1, 2, 3, 3, 3, 2, 2)
TERMINALS = ("a", "b", "c")
N_RULES = 35
BRANCHING = 0.5
MAX_LENGTH = 2 ** len(LAYER_SIZES)  # every rule binary
REQUIRED_LENGTHS = range(8, 65)


def _layer_names() -> list[list[str]]:
    letters = "SABCDEF"
    layers = [["S"]]
    for depth, size in enumerate(LAYER_SIZES[1:], start=1):
        layers.append([f"{letters[depth]}{j + 1}" for j in range(size)])
    layers.append(list(TERMINALS))
    return layers


def _try_grammar(rng: np.random.Generator) -> Grammar | None:
    layers = _layer_names()
    nonterminals = [nt for layer in layers[:-1] for nt in layer]
    counts = {nt: 2 for nt in nonterminals}
    for nt in rng.choice(nonterminals, size=N_RULES - 2 * len(nonterminals), replace=False).tolist():
        counts[nt] = 3
    rules: list[Rule] = []
    used: set[str] = {"S"}
    for depth, layer in enumerate(layers[:-1]):
        below = layers[depth + 1]
        for nt in layer:
            rhss: list[tuple[str, ...]] = []
            for _ in range(counts[nt]):
                width = 2 if rng.random() < BRANCHING else 1
                rhss.append(tuple(below[i] for i in rng.integers(0, len(below), size=width).tolist()))
            if len(set(rhss)) != len(rhss):
                return None
            probs = rng.dirichlet(np.full(len(rhss), 4.0))
            probs = probs / probs.sum()
            for rhs, p in zip(rhss, probs.tolist()):
                rules.append(Rule(nt, rhs, p))
                used.update(rhs)
    if not used >= set(nonterminals) | set(TERMINALS):
        return None
    grammar = Grammar("S", rules)
    sampler = LengthSampler(grammar, MAX_LENGTH)
    if not set(REQUIRED_LENGTHS) <= set(sampler.lengths()):
        return None
    return grammar


@functools.lru_cache(maxsize=1)
def lano_grammar() -> Grammar:
    """The fixed LANO grammar (deterministic: the first valid grammar from GRAMMAR_SEED on)."""
    for offset in range(1000):
        grammar = _try_grammar(np.random.default_rng(GRAMMAR_SEED + offset))
        if grammar is not None:
            return grammar
    raise AniraError("lano: no valid grammar found")  # pragma: no cover - construction is fixed


@functools.lru_cache(maxsize=1)
def lano_sampler() -> LengthSampler:
    return LengthSampler(lano_grammar(), MAX_LENGTH)


def parse_proxies(grammar: Grammar, words: list[str]) -> list[ColumnStats]:
    """Parser statistics for column 0 (before any word) and after each word."""
    parser = PrefixParser(grammar)
    for w in words:
        if w not in parser.stats[-1].expected:
            raise AniraError(f"lano: {' '.join(words)!r} is not a prefix of the grammar's language")
        parser.feed(w)
    return parser.stats


class Lano(Task):
    """Strings of a fixed PCFG, trained as language modelling: ``<bos> w1 ... wn <eos>``.

    Worked instance on a hand-made grammar (tests use the same one)::

        S -> A B (0.6) | B (0.4);  A -> a (0.5) | B b (0.5);  B -> b (0.7) | a a (0.3)

    For the string ``a b`` (P = 0.21; ``<bos> a b <eos>``, positions 0..3):

    - position 0 (column 0, nothing read): prediction adds S→.A B, S→.B,
      A→.a, A→.B b, B→.b, B→.a a (6 items, expansion 6); weights: S 1,
      A 0.6, B 0.4+0.3 = 0.7 → 6 multiplications, 3 additions (two into
      B's weight, one into A's); convergence 0.
    - position 1 (after ``a``): the 3 items expecting a terminal in column 0
      are A→.a, B→.b, B→.a a; ``a`` advances A→a. and B→a.a (convergence
      1 − 2/3 = 1/3; prefix sum: 2 additions). Completing A→a. (γ 0.5)
      advances S→A.B (2 mult, 2 add); prediction from S→A.B (α 0.3) adds
      B→.b, B→.a a (1 addition, 2 multiplications). Expansion 3
      (S→A.B, B→.b, B→.a a); additions 5; multiplications 4;
      P(prefix a) = 0.6·0.5 + 0.7·0.3 = 0.51.
    - position 2 (after ``b``): 3 candidates (B→a.a, B→.b, B→.a a), one
      scanned (convergence 2/3); completing B→b. advances S→A B. (2+2),
      prefix sum 1 addition: additions 3, multiplications 2, expansion 1;
      P(prefix a b) = 0.21 and the prefix is a sentence.

    The built-in task uses :func:`lano_grammar`; every position but the final
    ``<eos>`` gets these proxies, and ``complexity`` = additions + multiplications
    (9, 9, 5 here).
    """

    name = "lano"
    description = "language modelling on a fixed synthetic PCFG (16 nonterminals, 3 terminals, 35 rules)"
    knob = "n = string length in terminals"
    language_modelling = True
    complexity_description = (
        "every predicting position: additions + multiplications of the prefix-probability "
        "Earley parser on the column after the token; NaN at the final <eos>"
    )
    default_ranges = DifficultyRanges(train=(8, 48), test_id=(8, 48), test_ood=(49, 64))
    min_difficulty = REQUIRED_LENGTHS.start
    max_difficulty = REQUIRED_LENGTHS.stop - 1
    default_max_iters = 6
    tokenizer = Tokenizer([BOS, EOS, *TERMINALS])

    features: ClassVar[tuple[FeatureSpec, ...]] = (
        FeatureSpec("position", "static", "index of the token in the sequence", True, "all"),
        FeatureSpec("length", "static", "string length n", True, "all"),
        FeatureSpec(
            "expansion", "execution",
            "parse-space expansion: Earley items the token adds by completion and prediction", True, "all",
        ),
        FeatureSpec(
            "convergence", "execution",
            "parse convergence: share of the previous column's terminal-expecting items the token "
            "rules out (0 at <bos>)", False, "all",
        ),
        FeatureSpec("additions", "execution", "probability additions the parser performs at the token",
                    True, "all"),
        FeatureSpec("multiplications", "execution",
                    "probability multiplications the parser performs at the token", True, "all"),
        FeatureSpec("surprisal", "execution", "-log2 P(token | prefix) under the grammar (0 at <bos>)",
                    False, "all"),
    )

    def __init__(
        self, ranges: DifficultyRanges | None = None, grammar: Grammar | None = None, proxies: bool = True
    ) -> None:
        """``proxies=False`` skips the parser when sampling: training needs only the
        tokens, and the parser is ~50x slower than drawing the string; the
        features (except position and length) and the complexity are then NaN."""
        super().__init__(ranges)
        self.grammar = grammar or lano_grammar()
        self.proxies = proxies

    def max_len(self, difficulty: int) -> int:
        self.check_difficulty(difficulty)
        return difficulty + 2

    def _draft(self, difficulty: int, rng: np.random.Generator):
        if self.grammar is not lano_grammar():
            raise AniraError("lano: sampling needs the built-in grammar; use build() for others")
        words, tree = lano_sampler().sample(difficulty, rng)
        # the whole string is the question (language modelling): no parse to decide the split
        question = np.asarray(self.tokenizer.encode([BOS, *words, EOS]), dtype=np.int64)
        return question, lambda: self.build(words, tree=tree, proxies=self.proxies)

    def build(self, words: list[str], tree: str | None = None, proxies: bool = True) -> Example:
        """The example for a sentence of the task's grammar (``proxies=False``: no parse)."""
        stats = parse_proxies(self.grammar, words) if proxies else []
        if proxies and not stats[-1].complete:
            raise AniraError(f"lano: {' '.join(words)!r} is not a sentence of the grammar")
        tokens = [BOS, *words, EOS]
        n = len(tokens)
        feats = {spec.name: nan_array(n) for spec in self.features}
        complexity = nan_array(n)
        prev_prefix = 1.0
        for i, st in enumerate(stats):  # column i describes position i
            feats["expansion"][i] = st.created
            feats["convergence"][i] = 1.0 - st.scanned / st.candidates if st.candidates else 0.0
            feats["additions"][i] = st.additions
            feats["multiplications"][i] = st.multiplications
            feats["surprisal"][i] = -np.log2(st.prefix_prob / prev_prefix) if i else 0.0
            prev_prefix = st.prefix_prob
            complexity[i] = st.additions + st.multiplications
        feats["position"][:] = np.arange(n)
        feats["length"][:] = len(words)
        ids = np.asarray(self.tokenizer.encode(tokens), dtype=np.int64)
        predicting = np.arange(n) < n - 1
        instance: dict = {"sentence": " ".join(words), "n": len(words)}
        if stats:
            instance["log2_prob"] = float(np.log2(stats[-1].sentence_prob))
        if tree is not None:
            instance["tree"] = tree
        return Example(
            tokens=ids,
            loss_mask=predicting.copy(),
            answer_mask=predicting,
            question_mask=np.ones(n, dtype=bool),
            complexity=complexity,
            features=feats,
            instance=instance,
            difficulty=len(words),
            answer=list(words),
        )

    def token_correct(self, example: Example, predicted: np.ndarray) -> np.ndarray:
        """A prediction is right when it is a grammatical continuation of its prefix.

        A sample of a language has no single right next token, so exact match
        would be meaningless; instead the prediction at position i must be a
        terminal the grammar allows after tokens 1..i, or ``<eos>`` where the
        prefix is a complete sentence. ``score`` (every prediction right) uses this.
        """
        words = self.tokenizer.decode(example.tokens).split()[1:-1]
        stats = parse_proxies(self.grammar, words)
        pred = np.asarray(predicted).reshape(-1)
        eos = self.tokenizer.index[EOS]
        right = np.zeros(len(example), dtype=bool)
        for i, st in enumerate(stats[: len(pred)]):  # a missing prediction is wrong
            p = int(pred[i])
            right[i] = (p == eos and st.complete) or (
                0 <= p < len(self.tokenizer) and self.tokenizer.vocab[p] in st.expected
            )
        return right & example.answer_mask


@hookimpl
def register_tasks(register):
    register(Lano)
