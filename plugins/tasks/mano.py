"""MANO: prefix-notation arithmetic modulo 23 (the paper's §3).

Difficulty knob: L, the number of (binary) operators. A uniformly random
expression shape with L operators is drawn with the cycle lemma (shuffle L
operator marks and L+1 operand marks; exactly one rotation is a valid prefix
expression), then operators uniformly from {+, -, *} and operands from 0..22.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from anira.errors import AniraError
from anira.hookspecs import hookimpl
from anira.task import DifficultyRanges, Example, FeatureSpec, Task, Tokenizer
from anira.plugins.tasks._common import BOS, EOS, assemble, nan_array

MODULUS = 23
OPERATORS = ("+", "-", "*")
_TYPE_SPECIAL, _TYPE_OPERATOR, _TYPE_OPERAND = 0, 1, 2


def apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return (a + b) % MODULUS
    if op == "-":
        return (a - b) % MODULUS
    return (a * b) % MODULUS


class Mano(Task):
    """Prefix arithmetic mod 23: ``<bos> EXPR = RESULT <eos>``.

    Worked instance (L = 2): the expression ``+ * 3 4 5`` is (3·4)+5 = 17, so

    pos  token  token_type  d  r  s  s_ops  reductions  height  complexity
    0    <bos>  0           0  0  0  0      0           -       -
    1    +      1           0  0  0  0      0           -       -
    2    *      1           1  2  0  0      0           -       -
    3    3      2           2  2  0  0      0           -       -
    4    4      2           2  1  1  0      1           -       -
    5    5      2           1  1  3  1      1           -       -
    6    =      0           0  0  5  2      0           2       2
    7    17     -           -  -  -  -      -           2       0
    8    <eos>  -           -  -  -  -      -           -       -

    ("-" is NaN: the feature is not defined at that position.)
    Answer ``["17"]``; ``answer_mask`` is True at positions 6 (predicts 17) and
    7 (predicts ``<eos>``). ``arity`` is 2 at positions 1–2, else 0 on the
    question; ``position`` is the index; ``L`` is 2 everywhere. At position 4
    the parser, before reading ``4``, has ``+`` and ``*`` pending (d = 2), ``*``
    owes one operand (r = 1), and the previous token ``3`` completed a subtree
    of one token, an operand (s = 1, s_ops = 0); reading ``4`` completes
    ``* 3 4`` (one reduction), so at position 5 s = 3 and s_ops = 1; ``5``
    completes ``+ (* 3 4) 5``, so at ``=`` s = 5 and s_ops = 2.

    Timing, as in the paper: d, r, s and s_ops describe the parser as token i
    arrives (d, r before reading it; s, s_ops what token i − 1 completed);
    reductions is the work reading token i does.
    """

    name = "mano"
    description = "prefix arithmetic mod 23 (+, -, *), answer the value"
    knob = "L = number of operators"
    complexity_description = (
        "answer positions: at '=' (predicting the result) L, the operator applications "
        "needed to evaluate the question; at the result (predicting <eos>) 0; NaN elsewhere"
    )
    default_ranges = DifficultyRanges(train=(3, 16), test_id=(3, 16), test_ood=(17, 24))
    min_difficulty = 1
    max_difficulty = 29  # 2L + 5 tokens stays within the paper's max length 64
    default_max_iters = 14
    tokenizer = Tokenizer([BOS, EOS, "=", *OPERATORS, *(str(v) for v in range(MODULUS))])

    features: ClassVar[tuple[FeatureSpec, ...]] = (
        FeatureSpec("token_type", "static", "0 special (<bos>, =), 1 operator, 2 operand", True, "question"),
        FeatureSpec("position", "static", "index of the token in the sequence", True, "all"),
        FeatureSpec("L", "static", "number of operators in the expression", True, "all"),
        FeatureSpec("arity", "static", "operands the token takes: 2 for operators, else 0", True, "question"),
        FeatureSpec(
            "d", "execution", "operator-stack depth before the token (pending operators)", True, "question"
        ),
        FeatureSpec(
            "r", "execution",
            "operands still required by the top pending operator before the token (0 if none)",
            True, "question",
        ),
        FeatureSpec(
            "s", "execution",
            "tokens in the outermost subtree completed by the previous token (a lone operand 1, "
            "k operators 2k+1; 0 after an operator or <bos>)",
            True, "question",
        ),
        FeatureSpec(
            "s_ops", "execution",
            "the paper's s_t: operator nodes of the subtrees completed at the previous token "
            "(0 after an operator, a lone operand or <bos>)",
            True, "question",
        ),
        FeatureSpec(
            "reductions", "execution", "operators the token completes (eager evaluation)", True, "question"
        ),
        FeatureSpec("height", "static", "operators on the longest root-to-leaf path", True, "answer"),
    )

    def max_len(self, difficulty: int) -> int:
        self.check_difficulty(difficulty)
        return 2 * difficulty + 5

    # --- generation -----------------------------------------------------------------------
    def _draft(self, difficulty: int, rng: np.random.Generator):
        expr = self._draw_expression(difficulty, rng)
        question = np.asarray(self.tokenizer.encode([BOS, *expr, "="]), dtype=np.int64)
        return question, lambda: self.build(expr)

    def _draw_expression(self, difficulty: int, rng: np.random.Generator) -> list[str]:
        L = difficulty
        marks = np.concatenate([np.ones(L, dtype=np.int64), -np.ones(L + 1, dtype=np.int64)])
        marks = marks[rng.permutation(2 * L + 1)]
        # Cycle lemma: rotating to start just after the first minimum of the prefix
        # sums gives the one rotation that is a valid prefix expression.
        start = int(np.argmin(np.cumsum(marks))) + 1
        marks = np.roll(marks, -start)
        ops = rng.integers(0, len(OPERATORS), size=L).tolist()
        vals = rng.integers(0, MODULUS, size=L + 1).tolist()
        expr: list[str] = []
        oi = vi = 0
        for m in marks.tolist():
            if m == 1:
                expr.append(OPERATORS[ops[oi]])
                oi += 1
            else:
                expr.append(str(vals[vi]))
                vi += 1
        return expr

    # --- deterministic construction from an expression ------------------------------------
    def build(self, expr: list[str]) -> Example:
        """The example for a prefix expression given as tokens, e.g. ``["+", "3", "4"]``."""
        L = sum(1 for t in expr if t in OPERATORS)
        m = len(expr)
        n = m + 4  # <bos> expr = result <eos>
        d = nan_array(n)
        r = nan_array(n)
        s = nan_array(n)
        s_ops = nan_array(n)
        red = nan_array(n)
        ttype = nan_array(n)
        arity = nan_array(n)
        d[0] = r[0] = s[0] = s_ops[0] = red[0] = ttype[0] = arity[0] = 0
        # frames: [operator, operands owed, left value, start index in expr]
        stack: list[list] = []
        completed_prev = 0
        depth_max = 0
        value: int | None = None
        for k, tok in enumerate(expr):
            i = k + 1
            if value is not None:
                raise AniraError(f"mano: tokens after a complete expression: {' '.join(expr)}")
            d[i] = len(stack)
            r[i] = stack[-1][1] if stack else 0
            s[i] = completed_prev
            s_ops[i] = (completed_prev - 1) // 2 if completed_prev else 0  # a subtree of t tokens has (t-1)/2 operators
            if tok in OPERATORS:
                ttype[i], arity[i], red[i] = _TYPE_OPERATOR, 2, 0
                stack.append([tok, 2, 0, k])
                depth_max = max(depth_max, len(stack))
                completed_prev = 0
                continue
            try:
                v = int(tok)
            except ValueError:
                raise AniraError(f"mano: {tok!r} is neither an operator nor an operand") from None
            if not 0 <= v < MODULUS:
                raise AniraError(f"mano: operand {v} is outside 0..{MODULUS - 1}")
            ttype[i], arity[i] = _TYPE_OPERAND, 0
            first, reductions = k, 0
            while True:
                if not stack:
                    value = v
                    break
                top = stack[-1]
                if top[1] == 2:
                    top[1], top[2] = 1, v
                    break
                v = apply(top[0], top[2], v)
                first = top[3]
                stack.pop()
                reductions += 1
            red[i] = reductions
            completed_prev = k - first + 1
        if value is None:
            raise AniraError(f"mano: incomplete expression: {' '.join(expr)}")
        height = depth_max
        eq = m + 1
        d[eq], r[eq], s[eq], red[eq], ttype[eq], arity[eq] = 0, 0, completed_prev, 0, _TYPE_SPECIAL, 0
        s_ops[eq] = (completed_prev - 1) // 2
        tokens = [BOS, *expr, "=", str(value), EOS]
        h = nan_array(n)
        h[eq] = h[eq + 1] = height
        complexity = nan_array(n)
        complexity[eq], complexity[eq + 1] = L, 0
        features = {
            "token_type": ttype,
            "position": np.arange(n, dtype=np.float64),
            "L": np.full(n, float(L)),
            "arity": arity,
            "d": d,
            "r": r,
            "s": s,
            "s_ops": s_ops,
            "reductions": red,
            "height": h,
        }
        instance = {"expression": " ".join(expr), "L": L, "value": value, "modulus": MODULUS}
        return assemble(
            self.tokenizer, tokens, m + 2, complexity=complexity, features=features,
            instance=instance, difficulty=L, answer=[str(value)],
        )


@hookimpl
def register_tasks(register):
    register(Mano)
