"""The inference executor: one forward pass's iterations, skipping frozen tokens.

:meth:`anira.model.RecurrentTransformer.run_loop` is the paper's loop; at inference
it hands each iteration's computation to an :class:`InferenceLoop`, which computes
the same function (tests/test_fast_path.py, tests/test_hook_paths.py) faster:

* the **fast path** (``fast=True``, a one-layer core) gathers the running tokens
  into rows and computes only them. A frozen token's key and value are those of its
  frozen state, so they are computed once (a *refresh* row) and then served from a
  key/value cache (:class:`anira.layers.RowCache`);
* the **masked path** (``fast=False``) runs the freeze equation on every token, as
  training does;
* with known exit depths and nobody patching the loop, every iteration's row
  layout is read with one device synchronisation (:class:`LayoutPlan`); otherwise
  one per iteration;
* on a GPU each iteration can replay a CUDA graph (anira/graphs.py) over static
  buffers.

Hook points fire in ``run_loop``, not here: what a hook returns is the state the
next computation reads. A hook may change a frozen token's state; the executor
then recomputes that token's key and value before anyone attends to it again
(``stale``), so patches mean the same on every path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from anira.errors import AniraError
from anira.graphs import row_bucket
from anira.layers import Packed, RowCache, flat_rows, put_rows, take_rows

if TYPE_CHECKING:
    from anira.model import RecurrentTransformer


class InferenceLoop:
    """The iterations of one inference forward pass (see the module docstring).

    ``depths`` (b, n): exit depths known before the loop (forced or planned); with
    ``planned`` the loop must follow exactly those depths (no hook may change who
    runs or any state), and every layout is read at once."""

    def __init__(self, model: RecurrentTransformer, h0: Tensor, depths: Tensor | None, *,
                 fast: bool, planned: bool) -> None:
        self.model = model
        self.fast = fast
        self.plan = LayoutPlan(depths, model.cfg.max_iters, model.policy.name) if planned else None
        self.cache = self.row_cache(h0, depths if planned else None) if fast else None
        #: tokens whose cached key and value do not match their current state: at first
        #: every token (nothing cached yet; with a plan every token runs the first iteration)
        self.stale = None if planned or not fast else torch.ones(h0.shape[:2], dtype=torch.bool, device=h0.device)
        self._layouts: tuple[int, tuple[RowLayout, RowLayout | None], Tensor | None] | None = None
        #: (state returned by the last graphed iteration, graph runs then): that very
        #: tensor, unpatched, still sits in the static buffer
        self._returned: tuple[Tensor, int] | None = None

    # -- what run_loop asks -------------------------------------------------------------
    def runs_any(self, t: int, running: Tensor) -> bool:
        """Whether any token runs at iteration t (the plan, or one device sync that also
        reads this iteration's row layouts)."""
        if self.plan is not None:
            return self.plan[t][0].most > 0
        if not self.fast:
            return bool(running.any())
        refresh = self.stale & ~running
        self._layouts = (t, iteration_layouts(running, refresh), refresh)
        return self._layouts[1][0].most > 0

    def patched(self, changed: Tensor | None) -> None:
        """A hook replaced the state between iterations: ``changed`` (b, n) marks the
        tokens whose state differs (None: possibly any)."""
        self._returned = None
        self._layouts = None  # the refresh rows change
        if self.stale is not None:
            self.stale = self.stale | (True if changed is None else changed)

    def iterate(self, h: Tensor, t: int, running: Tensor) -> Tensor:
        """Iteration t on state h: the running tokens compute, the others stay."""
        if not self.fast:
            return self._masked(h, t, running)
        if self.plan is not None:
            return self.iterate_rows(h, t, running, None, self.plan[t])
        if self._layouts is None or self._layouts[0] != t:
            self.runs_any(t, running)
        _, layouts, refresh = self._layouts
        self.stale = running.clone()  # their states change now; everyone else's keys are refreshed
        return self.iterate_rows(h, t, running, refresh, layouts)

    # -- the masked path ------------------------------------------------------------------
    def _masked(self, h: Tensor, t: int, running: Tensor) -> Tensor:
        model = self.model
        active = running.to(h.dtype)
        if not model._graphs_usable(h) or model._core_hooked():
            return model.iterate(h, t, active)
        key = ("dense", *model._graph_key(h), active.dtype)
        bufs = model.graphs.buffers(key, lambda: {
            "h": torch.empty_like(h), "active": torch.empty_like(active), "out": torch.empty_like(h)})
        bufs["h"].copy_(h)
        bufs["active"].copy_(active)
        model.graphs.run(key, (), lambda: bufs["out"].copy_(model.iterate(bufs["h"], t, bufs["active"], hooks=False)),
                         h.device)
        return bufs["out"].clone()

    # -- the fast path ----------------------------------------------------------------------
    def iterate_rows(self, h: Tensor, t: int, running: Tensor, refresh: Tensor | None,
                     layouts: tuple[RowLayout, RowLayout | None] | None = None) -> Tensor:
        """One iteration computing only the running tokens, after refreshing the cached
        keys and values of the ``refresh`` tokens from their states in ``h`` (with
        planned depths: of the tokens that exited at the previous iteration). Running
        tokens are gathered into rows (b, m, d), m = the most running tokens of any
        sequence (rounded up to a bucket when the iteration runs as a CUDA graph).
        ``layouts``: the row counts of ``running`` and ``refresh`` if known (else read
        here, one device synchronisation)."""
        if layouts is None:
            layouts = iteration_layouts(running, refresh)
        run_layout, refresh_layout = layouts
        if refresh_layout is not None and refresh_layout.most == 0:
            refresh_layout = None
        if refresh_layout is None:
            refresh = None  # (planned depths: the refresh rows are read off their order, no mask)
        cache = self.cache
        counts = self._planned_counts(t) if cache.depths is not None and t > 0 else None
        if cache.graph_key is not None:
            return self._graphed_rows(h, running, refresh, run_layout, refresh_layout, counts)
        return self._rows_body(h, running, refresh, cache, (run_layout.rows, run_layout.full),
                               refresh_layout and (refresh_layout.rows, refresh_layout.full), counts=counts)

    def _rows_body(self, h: Tensor, running: Tensor, refresh: Tensor | None, cache: RowCache,
                   run_rows: tuple[int, bool], refresh_rows: tuple[int, bool] | None,
                   in_place: bool = False, counts: Tensor | None = None) -> Tensor:
        """The fast iteration on ``h``; ``*_rows`` are (packed row count m, every row real).
        ``in_place``: the running rows are written back into ``h`` itself (a graph's
        static buffer), saving a copy of the whole state. ``counts`` (2, b): this
        iteration's running and exiting tokens per sequence with planned depths, whose
        order ``cache.order`` then holds (the packing is read off it)."""
        model = self.model
        if refresh_rows is None and run_rows == (h.shape[1], True):
            # every token runs (the first iteration; fixed depth until the exit):
            # the dense layer, no packing, causal kernel; it also fills the cache
            return model.core_blocks[0](h, model.rotary, None, cache)
        planned = counts is not None
        run = _slice_pack(cache.order, counts[0], *run_rows) if planned else _pack(running, *run_rows)
        rows = take_rows(h, run.flat, run_rows[0])  # (b, m, d)
        extra = None
        if refresh_rows is not None:
            if planned:  # the tokens exiting now sit right after the running ones
                ref = _slice_pack(cache.order, counts[1], *refresh_rows, offset=counts[0])
            else:
                ref = _pack(refresh, *refresh_rows)
            extra = (take_rows(h, ref.flat, refresh_rows[0]), ref)  # their current states
        x = model.core_blocks[0].forward_rows(rows, run, model.rotary, cache, extra)  # (b, m, d)
        if not run.all_valid:
            x = torch.where(run.valid[..., None], x, rows)  # padding rows stay as they were
        return put_rows(h, run.flat, x, in_place=in_place)

    def _graphed_rows(self, h: Tensor, running: Tensor, refresh: Tensor | None,
                      run_layout: RowLayout, refresh_layout: RowLayout | None,
                      counts: Tensor | None) -> Tensor:
        graphs = self.model.graphs
        cache = self.cache
        b, n = h.shape[:2]
        # buckets bound the padding of the whole batch (step·b rows at most): fine
        # buckets, hence more distinct recordings, only where padding is costly
        m_run = row_bucket(run_layout.rows, n, step=max(1, 8 // b))
        run_rows = (m_run, run_layout.least == m_run)
        refresh_rows = None
        if refresh_layout is not None:
            # coarser buckets and always the padding-safe write: refresh counts vary
            # more than running counts, and each distinct key is a recording
            refresh_rows = (row_bucket(refresh_layout.rows, n, step=max(1, 32 // b)), False)
        bufs = cache.graph_buffers
        # the state the last graphed iteration returned, unpatched and with no graph run
        # since, is still in the static buffer: no copy needed
        if self._returned is None or self._returned[0] is not h or self._returned[1] != graphs.runs:
            bufs["h"].copy_(h)
        planned = counts is not None  # then cache.order is the static "order" buffer
        if planned:
            bufs["counts"].copy_(counts)
        else:
            bufs["running"].copy_(running)
            if refresh is not None:
                bufs["refresh"].copy_(refresh)

        def body() -> None:
            static = RowCache(bufs["k"], bufs["v"], order=bufs["order"] if planned else None)
            out = self._rows_body(bufs["h"], bufs["running"], bufs["refresh"] if refresh_rows else None,
                                  static, run_rows, refresh_rows, in_place=True,
                                  counts=bufs["counts"] if planned else None)
            if out is not bufs["h"]:  # the all-running iteration computes a new state
                bufs["h"].copy_(out)

        graphs.run(cache.graph_key, (run_rows, refresh_rows, planned), body, h.device)
        state = bufs["h"].clone()
        self._returned = (state, graphs.runs)
        return state

    def row_cache(self, h0: Tensor, depths: Tensor | None = None) -> RowCache:
        """An empty key/value cache over h0's tokens: fresh tensors, or, where
        iterations run as CUDA graphs, the zeroed static buffers. With the planned exit
        ``depths`` (b, n) it also holds their order (see RowCache)."""
        model = self.model
        b, n = h0.shape[:2]
        kv_shape = (b, n, model.cfg.n_heads, model.cfg.d_head)
        if not model._graphs_usable(h0):
            return RowCache(h0.new_zeros(kv_shape), h0.new_zeros(kv_shape), depths=depths)
        key = ("rows", *model._graph_key(h0))
        bufs = model.graphs.buffers(key, lambda: {
            "h": torch.empty_like(h0),
            "k": h0.new_zeros(kv_shape), "v": h0.new_zeros(kv_shape),
            "running": torch.zeros(b, n, dtype=torch.bool, device=h0.device),
            "refresh": torch.zeros(b, n, dtype=torch.bool, device=h0.device),
            "order": torch.zeros(b, n, dtype=torch.long, device=h0.device),
            "counts": torch.zeros(2, b, dtype=torch.long, device=h0.device)})
        bufs["k"].zero_()
        bufs["v"].zero_()
        return RowCache(bufs["k"], bufs["v"], graph_key=key, graph_buffers=bufs, depths=depths)

    def _planned_counts(self, t: int) -> Tensor:
        """Iteration t's (running, exiting) counts per sequence (2, b) from the planned
        depths; their order is computed at the first call (iteration 1, after the
        first has been queued) and, for graphs, placed in the static buffer."""
        cache = self.cache
        if cache.counts is None:
            order, cache.counts = _depth_order(cache.depths, self.model.cfg.max_iters)
            if cache.graph_buffers is not None:
                order = cache.graph_buffers["order"].copy_(order)
            cache.order = order
        return cache.counts[t]


@dataclass(frozen=True)
class RowLayout:
    """Row counts of a (b, n) selection mask, read from the device once."""

    most: int  # the most selected entries of any row (0: nothing selected)
    least: int  # the fewest

    @property
    def rows(self) -> int:
        return max(1, self.most)

    @property
    def full(self) -> bool:
        """Every packed row is a real token: no padding rows."""
        return self.least == self.rows


def _depth_counts(depths: Tensor, max_iters: int) -> Tensor:
    """(2D-1, b): per sequence the tokens running at t = 0..D-1 (depth > t), then those
    exiting at t = 1..D-1 (depth == t); every iteration at once, a handful of kernels."""
    t = torch.arange(max_iters, device=depths.device)[:, None, None]
    return torch.cat([(depths[None] > t).sum(2), (depths[None] == t[1:]).sum(2)])


def _extremes(counts: Tensor) -> Tensor:
    """(k, 2): the most and fewest selected entries of any row, from counts (k, b)."""
    return torch.stack([counts.amax(1), counts.amin(1)], dim=1)


def mask_layouts(masks: list[Tensor]) -> list[RowLayout]:
    """The RowLayouts of several (b, n) masks, with one device synchronisation."""
    counts = torch.stack([mask.sum(1) for mask in masks])  # (k, b)
    return [RowLayout(int(hi), int(lo)) for hi, lo in _extremes(counts).tolist()]


def iteration_layouts(running: Tensor, refresh: Tensor | None) -> tuple[RowLayout, RowLayout | None]:
    """The row layouts of one iteration's running and refresh masks (one device sync)."""
    if refresh is None:
        return mask_layouts([running])[0], None
    run, ref = mask_layouts([running, refresh])
    return run, ref


class LayoutPlan:
    """Every iteration's (running, refresh) row layouts for known exit depths.

    ``plan[0]`` is known without asking the device: every token runs the first
    iteration (exit depths are at least 1). The counts of the later iterations are
    computed when first asked for, which is after the first iteration has been
    queued: on a GPU on a side stream that waits only for the depths, so the counts
    reach the host while the first iteration runs and the loop's one device
    synchronisation never leaves the GPU idle. On a CPU the counts are simply read.
    """

    def __init__(self, depths: Tensor, max_iters: int, policy: str) -> None:
        self._D, self._policy = max_iters, policy
        self._depths = depths
        self._n = depths.shape[1]
        self._ready = None
        if depths.is_cuda:  # the point in the stream where the depths are known
            self._ready = torch.cuda.Event()
            self._ready.record()
        self._layouts: list[tuple[RowLayout, RowLayout | None]] | None = None

    def __len__(self) -> int:
        return self._D

    def __getitem__(self, t: int) -> tuple[RowLayout, RowLayout | None]:
        if t == 0 and self._layouts is None:
            return RowLayout(self._n, self._n), None
        return self._resolve()[t]

    def _counts(self) -> Tensor:
        return _extremes(_depth_counts(self._depths, self._D))

    def _read_counts(self) -> list[list[int]]:
        if self._ready is None:
            return self._counts().tolist()
        side = _side_stream(self._depths.device)
        side.wait_event(self._ready)
        with torch.cuda.stream(side):
            extremes = self._counts()
            host = torch.empty(extremes.shape, dtype=extremes.dtype, pin_memory=True)
            host.copy_(extremes, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        self._depths.record_stream(side)  # read there: keep its memory until then
        done.synchronize()
        return host.tolist()

    def _resolve(self) -> list[tuple[RowLayout, RowLayout | None]]:
        if self._layouts is None:
            layouts = [RowLayout(int(hi), int(lo)) for hi, lo in self._read_counts()]
            if layouts[0].least != self._n:
                raise AniraError(f"halting policy {self._policy!r} planned an exit depth below 1 "
                                 f"(planned_exit_depths must lie in 1..{self._D})")
            D = self._D
            self._layouts = [(layouts[t], None if t == 0 else layouts[D + t - 1]) for t in range(D)]
            self._depths = None
        return self._layouts


_SIDE_STREAMS: dict[torch.device, Any] = {}


def _side_stream(device: torch.device) -> Any:
    """One side stream per GPU for the layout plans' counts."""
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device=device)
    return _SIDE_STREAMS[device]


def _pack(mask: Tensor, m: int, all_valid: bool) -> Packed:
    """Packing for the True entries of ``mask`` (b, n) into m rows (at least the most
    selected entries of any row), the selected positions first in each row;
    ``all_valid``: every row has exactly m selected entries (no padding)."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    pos = order[:, :m]
    valid = torch.arange(m, device=mask.device)[None, :] < mask.sum(1)[:, None]
    return Packed(pos, flat_rows(pos, mask.shape[1]), valid, all_valid)


def _depth_order(depths: Tensor, max_iters: int) -> tuple[Tensor, Tensor]:
    """Each sequence's tokens by exit depth, deepest first (stable): (b, n); and per
    iteration t the tokens running at t and exiting at t per sequence: (D, 2, b)."""
    order = torch.argsort(depths, dim=1, descending=True, stable=True)
    counts = _depth_counts(depths, max_iters)  # (2D-1, b)
    exiting = torch.cat([torch.zeros_like(counts[:1]), counts[max_iters:]])  # none exit before t = 0
    return order, torch.stack([counts[:max_iters], exiting], dim=1)


def _slice_pack(order: Tensor, count: Tensor, m: int, all_valid: bool, offset: Tensor | None = None) -> Packed:
    """Packing for ``count`` (b,) tokens per sequence taken from ``order`` (b, n) at
    ``offset`` (b,) [default 0] into m rows; the padding rows are the tokens that
    follow (wrapping round to the deepest ones: rows whose cache entries the running
    rows rewrite afterwards), so every row of a sequence is a distinct token."""
    n = order.shape[1]
    if offset is None:
        pos = order[:, :m]
    else:
        pos = order.gather(1, (offset[:, None] + torch.arange(m, device=order.device)) % n)
    valid = torch.arange(m, device=order.device)[None, :] < count[:, None]
    return Packed(pos, flat_rows(pos, n), valid, all_valid)
