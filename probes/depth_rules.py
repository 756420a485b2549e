"""Planted halting rules as one-line expressions (``anira probe --depth-rule``).

A rule gives every position of an instance a depth, computed from what the
task knows about that position; the model then runs exactly those depths
(``exit_depths=``) and the probe suites must recover the rule's kind. It is
the command-line form of ``depth_fn(example)`` (docs/probes.md).

The rule is a Python-syntax *expression* over per-position arrays, evaluated
with numpy (nothing else of Python is reachable):

=====================  ==================================================
name                   value at position i
=====================  ==================================================
every task feature     e.g. ``in_degree``, ``dfs_depth`` (BREVO), ``d``,
                       ``r`` (MANO); NaN where the task leaves it undefined
``token``              the token id at i
``position``           i (a task feature of that name takes precedence)
``answer_step``        i minus the first answer position (0 at the step
                       that predicts the first answer token), NaN before
``is_answer``          1 where token i+1 is an answer token, else 0
``is_question``        1 where token i belongs to the question, else 0
``D``                  the model's maximum depth
=====================  ==================================================

Functions: ``tok("=")`` (1 where the token is that token string, else 0),
``rand()`` (uniform in [0, 1) per position, seeded by the probe's seed and
the instance), ``where(c, a, b)``, ``min(a, b)``, ``max(a, b)``, ``abs(x)``,
``round(x)``, ``floor(x)``, ``ceil(x)``, ``defined(x)`` (1 where x is not
NaN), ``fill(x, v)`` (x with NaN replaced by v). Operators: ``+ - * / // %
**``, comparisons (1 or 0), ``and``, ``or``, ``not``, ``a if c else b``.

The value is rounded to the nearest integer and clipped to 1..D. Positions
where it is NaN (a feature undefined there) run all D iterations: a rule on
answer features leaves the question at full depth unless it says otherwise
(``fill(1 + in_degree, 1)``).

Examples: ``1 + in_degree`` (BREVO, static), ``1 + dfs_depth`` (execution),
``where(tok("="), 4, 1)`` (token identity), ``1 + 6 * rand()`` (random),
``1 + d + (r == 1)`` (MANO).
"""

from __future__ import annotations

import ast
import hashlib
from typing import Any, Callable

import numpy as np

from anira.errors import AniraError

_FUNCTIONS = ("tok", "rand", "where", "min", "max", "abs", "round", "floor", "ceil", "defined", "fill")
_BUILTIN_NAMES = ("token", "position", "answer_step", "is_answer", "is_question", "D")
_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
           ast.FloorDiv: np.floor_divide, ast.Mod: np.mod, ast.Pow: np.power}
_COMPARE = {ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
            ast.Gt: np.greater, ast.GtE: np.greater_equal}


class _Checker(ast.NodeVisitor):
    """Rejects anything outside the mini-language, naming it."""

    def __init__(self, names: set[str], tokens: dict[str, int]) -> None:
        self.names = names
        self.tokens = tokens

    def generic_visit(self, node: ast.AST) -> None:
        allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call,
                   ast.Name, ast.Constant, ast.Load, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or,
                   *_BINARY, *_COMPARE)
        if not isinstance(node, allowed):
            raise AniraError(f"depth rule: {type(node).__name__.lower()} is not allowed (only arithmetic, "
                             "comparisons, if-else and the listed functions)")
        super().generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise AniraError(f"depth rule: {node.value!r} is not a number (strings only inside tok(...))")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id not in self.names:
            raise AniraError(f"depth rule: unknown name {node.id!r}; names: {', '.join(sorted(self.names))}")

    def visit_Call(self, node: ast.Call) -> None:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else "that call"
            raise AniraError(f"depth rule: unknown function {what!r}; functions: {', '.join(_FUNCTIONS)}")
        if node.keywords:
            raise AniraError(f"depth rule: {node.func.id}() takes no keyword arguments")
        arity = {"tok": 1, "rand": 0, "where": 3, "min": 2, "max": 2, "fill": 2}.get(node.func.id, 1)
        if len(node.args) != arity:
            raise AniraError(f"depth rule: {node.func.id}() takes {arity} argument(s), got {len(node.args)}")
        if node.func.id == "tok":
            arg = node.args[0]
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                raise AniraError('depth rule: tok() takes a token string, e.g. tok("=")')
            if arg.value not in self.tokens:
                raise AniraError(f"depth rule: tok({arg.value!r}): no such token in the task's vocabulary")
            return
        for arg in node.args:
            self.visit(arg)


def _evaluate(node: ast.AST, env: dict[str, np.ndarray], rand: Callable[[], np.ndarray], tokens: dict[str, int]
              ) -> np.ndarray:
    def ev(n: ast.AST) -> Any:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant):
            return float(n.value)
        if isinstance(n, ast.Name):
            return env[n.id]
        if isinstance(n, ast.BinOp):
            with np.errstate(divide="ignore", invalid="ignore"):
                return _BINARY[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp):
            value = ev(n.operand)
            if isinstance(n.op, ast.Not):
                return (np.asarray(value) == 0).astype(float)
            return -value if isinstance(n.op, ast.USub) else +value
        if isinstance(n, ast.BoolOp):
            values = [np.asarray(ev(v)) != 0 for v in n.values]
            out = values[0]
            for v in values[1:]:
                out = (out & v) if isinstance(n.op, ast.And) else (out | v)
            return out.astype(float)
        if isinstance(n, ast.Compare):
            left = ev(n.left)
            out = True
            for op, right_node in zip(n.ops, n.comparators):
                right = ev(right_node)
                out = out & _COMPARE[type(op)](left, right)
                left = right
            return np.asarray(out, dtype=float)
        if isinstance(n, ast.IfExp):
            return np.where(np.asarray(ev(n.test)) != 0, ev(n.body), ev(n.orelse))
        if isinstance(n, ast.Call):
            name = n.func.id  # type: ignore[attr-defined]
            if name == "tok":
                return (env["token"] == tokens[n.args[0].value]).astype(float)  # type: ignore[attr-defined]
            if name == "rand":
                return rand()
            args = [ev(a) for a in n.args]
            if name == "where":
                return np.where(np.asarray(args[0]) != 0, args[1], args[2])
            if name == "fill":
                return np.where(np.isnan(args[0]), args[1], args[0])
            if name == "defined":
                return (~np.isnan(np.asarray(args[0], dtype=float))).astype(float)
            fn = {"min": np.minimum, "max": np.maximum, "abs": np.abs, "round": np.round, "floor": np.floor,
                  "ceil": np.ceil}[name]
            return fn(*args)
        raise AniraError(f"depth rule: cannot evaluate {type(n).__name__}")  # pragma: no cover - checked

    return ev(node)


def compile_rule(text: str, task: Any, max_iters: int, *, seed: int = 0) -> Callable[[Any], np.ndarray]:
    """The ``depth_fn(example) -> depths`` of a rule (module docstring); a rule that
    does not parse, names something unknown, or fails on a sample instance is a
    one-line :class:`AniraError` here, before any collection."""
    if not isinstance(text, str) or not text.strip():
        raise AniraError("depth rule: empty (e.g. --depth-rule '1 + in_degree')")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise AniraError(f"depth rule {text!r}: not an expression ({exc.msg})") from None
    features = [spec.name for spec in task.features]
    tokens = dict(task.tokenizer.index)
    _Checker(set(features) | set(_BUILTIN_NAMES), tokens).visit(tree)
    D = int(max_iters)

    def depth_fn(example: Any) -> np.ndarray:
        n = len(example)
        answer = np.asarray(example.answer_mask, dtype=bool)
        first = int(np.argmax(answer)) if answer.any() else n
        step = np.arange(n, dtype=np.float64) - first
        env: dict[str, np.ndarray] = {
            "token": np.asarray(example.tokens, dtype=np.float64),
            "position": np.arange(n, dtype=np.float64),
            "answer_step": np.where(step >= 0, step, np.nan),
            "is_answer": answer.astype(np.float64),
            "is_question": np.asarray(example.question_mask, dtype=np.float64),
            "D": np.full(n, float(D)),
        }
        env.update({name: np.asarray(example.features[name], dtype=np.float64) for name in features})
        digest = hashlib.blake2b(np.asarray(example.tokens, dtype=np.int64).tobytes(), digest_size=8).digest()
        rng = np.random.default_rng([int(seed), int.from_bytes(digest, "little")])
        value = np.broadcast_to(np.asarray(_evaluate(tree, env, lambda: rng.random(n), tokens), dtype=np.float64),
                                (n,))
        depth = np.where(np.isnan(value), D, np.clip(np.round(np.nan_to_num(value, nan=D)), 1, D))
        return depth.astype(np.int64)

    try:  # fail now, not after the collection, on a rule that cannot be evaluated
        k = task.ranges.values("test_id")[0]
        depth_fn(task.sample(k, np.random.default_rng(0), split="test"))
    except AniraError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever numpy says, as one line
        raise AniraError(f"depth rule {text!r}: {type(exc).__name__}: {exc}") from None
    return depth_fn
