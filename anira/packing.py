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
    # where each example goes: its row, its offset there, its index along the row (the
    # examples of a row in batch order)
    order = np.array([i for members in placed for i in sorted(members)], dtype=np.int64)
    counts = np.array([len(members) for members in placed], dtype=np.int64)
    rows = np.repeat(np.arange(len(placed)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)  # each row's first entry in ``order``
    ends = np.cumsum(lengths[order])
    row_of, offset, slot = (np.empty(len(lengths), dtype=np.int64) for _ in range(3))
    row_of[order] = rows
    slot[order] = np.arange(len(order)) - first
    offset[order] = ends - lengths[order] - (ends - lengths[order])[first]
    used = np.bincount(row_of, weights=lengths, minlength=n_rows).astype(np.int64)
    # every real token's source (example, column) and destination (row, column), in one gather
    example = np.repeat(np.arange(len(lengths)), lengths)
    column = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    dest_row, dest_col = row_of[example], offset[example] + column

    def placed_like(values: np.ndarray, fill) -> np.ndarray:
        out = np.full((n_rows, length), fill, dtype=values.dtype)
        out[dest_row, dest_col] = values[example, column]
        return out

    example_index = np.full((n_rows, length), -1, dtype=np.int64)
    example_index[dest_row, dest_col] = example
    segments = np.zeros((n_rows, length), dtype=np.int64)
    segments[dest_row, dest_col] = slot[example]
    # padding: one segment per token (position 0, attends to itself only), numbered on
    # from the row's examples
    pad = example_index < 0
    members = np.zeros(n_rows, dtype=np.int64)
    members[:len(counts)] = counts
    segments[pad] = (members[:, None] + np.arange(length)[None, :] - used[:, None])[pad]
    tokens = placed_like(batch.tokens.astype(np.int64), pad_id)
    loss, ans, que = (placed_like(m, False) for m in (batch.loss_mask, batch.answer_mask, batch.question_mask))
    cx = None if batch.complexity is None else placed_like(batch.complexity.astype(np.float32), np.nan)
    return Batch(tokens=tokens, loss_mask=loss, answer_mask=ans, question_mask=que, lengths=lengths,
                 difficulty=np.asarray(batch.difficulty, dtype=np.int64), complexity=cx,
                 example_index=example_index, segments=segments)
