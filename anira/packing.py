"""Several examples to a row: training batches without computing padding.

A padded batch of the paper's MANO configuration is 512 rows of 64 positions whose
examples average 24 tokens, so about 60 % of what a training step computes is padding.
Packing places the same examples end to end in fewer rows. Each example keeps its own
positions (0, 1, ... from its first token) and attends only to its own earlier tokens
(the model reads both from ``segments``), and the loss averages over the same tokens,
so a packed step computes the same function of the same examples as the padded one.

Rows are filled best-fit decreasing: the longest example first, each into the row whose
free space it fits most tightly. The row count is rounded up (``row_multiple``) so that
a compiled training step meets a handful of shapes, not one per batch.
"""

from __future__ import annotations

import math

import numpy as np

from anira.errors import AniraError
from anira.task import Batch


def assign_rows(lengths: np.ndarray, length: int) -> list[list[int]]:
    """Best-fit decreasing: the example indices of each row, in placement order; every
    row's lengths sum to at most ``length``. Deterministic for the same lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and int(lengths.max()) > length:
        raise AniraError(f"an example of length {int(lengths.max())} does not fit a packed row of {length} tokens")
    if lengths.size and int(lengths.min()) < 1:
        raise AniraError("cannot pack an empty example")
    order = np.argsort(-lengths, kind="stable")
    with_free: list[list[int]] = [[] for _ in range(length + 1)]  # row ids by free space
    rows: list[list[int]] = []
    for i in order.tolist():
        k = int(lengths[i])
        for free in range(k, length + 1):  # the tightest row it fits
            if with_free[free]:
                r = with_free[free].pop()
                break
        else:
            r, free = len(rows), length
            rows.append([])
        rows[r].append(i)
        with_free[free - k].append(r)
    return rows


def row_multiple(rows: int) -> int:
    """Row counts are rounded up to this multiple: about 1/16 of the rows, a power of
    two, at least 4 (so a run's packed batches take few distinct shapes)."""
    return 4 if rows < 64 else 2 ** int(math.floor(math.log2(rows / 16)))


def pack_batch(batch: Batch, length: int, *, pad_id: int = 0) -> Batch:
    """The examples of a padded ``batch`` packed into rows of ``length`` tokens (see the
    module docstring). Raises if an example is longer than a row, or if an example's
    last token is a loss position (its target would be the next example's first token)."""
    if batch.segments is not None:
        raise AniraError("the batch is already packed")
    lengths = np.asarray(batch.lengths, dtype=np.int64)
    tail = batch.loss_mask[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
    if bool((tail & (lengths > 0)).any()):
        raise AniraError("cannot pack these examples: an example's last token is a loss position, whose "
                         "target would be the next example's first token")
    placed = assign_rows(lengths, length)
    n_rows = len(placed)
    n_rows = -(-n_rows // row_multiple(n_rows)) * row_multiple(n_rows)
    tokens = np.full((n_rows, length), pad_id, dtype=np.int64)
    loss = np.zeros((n_rows, length), dtype=bool)
    ans = np.zeros((n_rows, length), dtype=bool)
    que = np.zeros((n_rows, length), dtype=bool)
    cx = None if batch.complexity is None else np.full((n_rows, length), np.nan, dtype=np.float32)
    example = np.full((n_rows, length), -1, dtype=np.int64)
    segments = np.zeros((n_rows, length), dtype=np.int64)
    for r, members in enumerate(placed + [[]] * (n_rows - len(placed))):  # rounding adds empty rows
        at = 0
        for s, i in enumerate(sorted(members)):  # examples in batch order along the row
            k = int(lengths[i])
            tokens[r, at:at + k] = batch.tokens[i, :k]
            loss[r, at:at + k] = batch.loss_mask[i, :k]
            ans[r, at:at + k] = batch.answer_mask[i, :k]
            que[r, at:at + k] = batch.question_mask[i, :k]
            if cx is not None:
                cx[r, at:at + k] = batch.complexity[i, :k]
            example[r, at:at + k] = i
            segments[r, at:at + k] = s
            at += k
        # padding: one segment per token (position 0, attends to itself only)
        segments[r, at:] = len(members) + np.arange(length - at)
    return Batch(tokens=tokens, loss_mask=loss, answer_mask=ans, question_mask=que, lengths=lengths,
                 difficulty=np.asarray(batch.difficulty, dtype=np.int64), complexity=cx,
                 example_index=example, segments=segments)
