"""CUDA graphs of single loop iterations at inference.

On a GPU one iteration of the core is ~40-80 small kernels; at inference sizes
the host launching them, not the GPU running them, sets the pace (the H200
profile in docs/benchmarks.md). A CUDA graph records an iteration's kernels once
and replays them with one launch. Its tensors must live at fixed addresses, so
every graphed iteration reads and writes *static buffers* (one set per batch
shape), and the loop copies its state in and out around each replay.

Shapes that differ give different graphs: the fast path's row counts m (the
most running tokens of any sequence) are rounded up to a bucket
(:func:`row_bucket`) so that a handful of graphs serve every layout; the extra
rows are padding, which the fast path already handles exactly (``valid``).

Every tensor a graph allocates while it is recorded is a temporary that dies
with the recording, and everything that outlives a replay sits in a static
buffer allocated outside any graph; that is what lets all graphs share one
memory pool. Not thread-safe: one model's forward passes must not overlap.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import Tensor

from anira.errors import AniraError

#: the modes of ``RecurrentTransformer.loop_graphs``
GRAPH_MODES = ("auto", "off", "static")


def row_bucket(m: int, n: int, step: int = 8) -> int:
    """Round a packed row count m (1..n) up to a bucket: exact up to 16, then a
    multiple of ``step``, capped at n: at most step - 1 rows beyond m."""
    if m <= 16:
        return m
    return min(n, -(-m // step) * step)


#: what a graph key maps to when its iteration runs eagerly (recording it failed)
_EAGER = "eager"


class IterationGraphs:
    """Recorded iterations with their static buffers, grouped in *sets*: one set of
    buffers per batch shape (and dtype, device, weights, ...), and under it the
    graphs that read and write those buffers, keyed by what fixes their kernels
    (row buckets).

    A graph is recorded the second time its key is seen (a layout seen once runs
    eagerly and costs no recording). Least recently used sets are dropped beyond
    ``max_sets``, together with their graphs (a graph must never outlive the
    buffers it writes); within a set, least recently used graphs beyond
    ``max_graphs``. If recording fails, that key runs eagerly from then on
    (``failed`` counts them). ``capture=False`` keeps the same bookkeeping but
    records nothing and always runs the bodies eagerly on the static buffers, so
    the plumbing can be tested on a CPU.
    """

    def __init__(self, *, capture: bool = True, max_sets: int = 8, max_graphs: int = 64) -> None:
        if max_sets < 1 or max_graphs < 1:
            raise AniraError(f"max_sets and max_graphs must be >= 1, got {max_sets} and {max_graphs}")
        self.capture = capture
        self.max_sets = max_sets
        self.max_graphs = max_graphs
        # set key -> (static buffers, graph key -> recorded graph, None (static mode) or _EAGER,
        #             graph keys seen once)
        self._sets: OrderedDict[tuple, tuple[dict[str, Tensor], OrderedDict[tuple, Any], set[tuple]]] = OrderedDict()
        self._pool = None
        self.recorded = 0  # graphs recorded so far (benchmarks and tests read these)
        self.replayed = 0
        self.runs = 0  # bodies run or replayed, any set: a changed count means buffers were written
        self.failed = 0

    @property
    def set_keys(self) -> list[tuple]:
        return list(self._sets)

    def buffers(self, set_key: tuple, make: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """The static buffers of ``set_key``, allocated by ``make`` the first time."""
        found = self._sets.get(set_key)
        if found is None:
            found = self._sets[set_key] = (make(), OrderedDict(), set())
            while len(self._sets) > self.max_sets:
                self._sets.popitem(last=False)
            self._forget_pool_if_empty()
        else:
            self._sets.move_to_end(set_key)
        return found[0]

    def run(self, set_key: tuple, graph_key: tuple, body: Callable[[], None], device: torch.device) -> None:
        """Run ``body`` (which touches only the static buffers of ``set_key`` and keeps
        no tensor it allocates) through its graph on ``device``."""
        self.runs += 1
        found = self._sets.get(set_key)
        if found is None:  # the set was dropped meanwhile: nothing to replay into
            body()
            return
        graphs, seen = found[1], found[2]
        if graph_key in graphs:
            graphs.move_to_end(graph_key)
            graph = graphs[graph_key]
            if graph is None or graph is _EAGER:
                body()
            else:
                with torch.cuda.device(device):
                    graph.replay()
            self.replayed += graph is not _EAGER
            return
        if graph_key not in seen:  # first sighting: eager, remember it
            seen.add(graph_key)
            body()
            return
        seen.discard(graph_key)
        if self.capture:
            graphs[graph_key] = self._record(body, device)  # its warm-up run is this call's result
        else:
            body()
            graphs[graph_key] = None
        self.recorded += graphs[graph_key] is not _EAGER
        while len(graphs) > self.max_graphs:
            graphs.popitem(last=False)

    def _record(self, body: Callable[[], None], device: torch.device) -> Any:
        # the recording run is preceded by a real one: it warms the kernels up
        # (cuBLAS workspaces, lazy modules) on a side stream, as recording requires,
        # and produces this call's result; the recording then only records
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                body()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with _autocast_without_cache(), torch.cuda.graph(graph, pool=self._pool):
                    body()
            except RuntimeError as err:  # an operation that cannot be recorded
                self.failed += 1
                warnings.warn(f"anira: an inference iteration could not be recorded as a CUDA graph "
                              f"and runs eagerly: {err}", RuntimeWarning, stacklevel=4)
                return _EAGER
        if self._pool is None:
            self._pool = graph.pool()
        return graph

    def _forget_pool_if_empty(self) -> None:
        # a pool whose graphs are all gone is released: never hand its id to a new recording
        if not any(graphs for _, graphs, _ in self._sets.values()):
            self._pool = None

    def clear(self) -> None:
        self._sets.clear()
        self._pool = None


class _autocast_without_cache:
    """Under autocast, record with autocast's weight-cast cache off: a cast cached
    during recording would be freed when the recording ends, and the graph would
    read freed memory. With the cache off, the casts are kernels in the graph."""

    def __enter__(self) -> None:
        self._ctx = None
        if torch.is_autocast_enabled("cuda"):
            self._ctx = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
            self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def autocast_key(device: torch.device) -> tuple:
    """What of the autocast state changes the recorded kernels."""
    kind = device.type
    if torch.is_autocast_enabled(kind):
        return (True, torch.get_autocast_dtype(kind))
    return (False, None)
