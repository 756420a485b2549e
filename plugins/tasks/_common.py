"""Helpers shared by the built-in tasks: node-name pools and example assembly.

Every built-in task lays its sequence out as ``<bos> question... answer... <eos>``
where the question ends with the token that triggers the answer (``=``), and
the answer is followed by ``<eos>``. The closing ``<eos>`` is an answer token
too (a model that cannot stop is wrong), so ``answer_mask`` marks
``len(answer) + 1`` positions. Per-token arrays follow the alignment
convention of :mod:`anira.task`: position ``i`` predicts token ``i + 1``.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from anira.task import Example, Tokenizer

BOS = "<bos>"
EOS = "<eos>"


def name_pool(size: int, letters: str = string.ascii_lowercase[:10]) -> list[str]:
    """``size`` two-letter node names in lexicographic order ("aa", "ab", ...).

    Tasks draw names at random from the pool and assign them to nodes at random,
    so the lexicographic order of an instance's names is independent of its
    structure.
    """
    names = [a + b for a in letters for b in letters]
    if size > len(names):
        raise ValueError(f"a pool of {size} names needs more than {len(letters)} letters")
    return names[:size]


def nan_array(n: int) -> np.ndarray:
    return np.full(n, np.nan, dtype=np.float64)


def assemble(
    tokenizer: Tokenizer,
    tokens: list[str],
    n_question: int,
    *,
    complexity: np.ndarray,
    features: dict[str, np.ndarray],
    instance: dict[str, Any],
    difficulty: int,
    answer: list[str],
) -> Example:
    """Build an :class:`Example` whose first ``n_question`` tokens are the question.

    Tokens ``n_question..`` are the answer followed by ``<eos>``; positions that
    predict them are answer (and loss) positions.
    """
    n = len(tokens)
    ids = np.asarray(tokenizer.encode(tokens), dtype=np.int64)
    pos = np.arange(n)
    question = pos < n_question
    # position i predicts token i+1: answer positions are n_question-1 .. n-2
    answer_mask = (pos >= n_question - 1) & (pos < n - 1)
    return Example(
        tokens=ids,
        loss_mask=answer_mask.copy(),
        answer_mask=answer_mask,
        question_mask=question,
        complexity=complexity,
        features=features,
        instance=instance,
        difficulty=int(difficulty),
        answer=list(answer),
    )
