"""Decoding over a static key/value cache: one decode step is a fixed sequence of
kernels, so that on a GPU it can be recorded once as a CUDA graph and replayed
per token. :mod:`anira.decode` stays the readable reference; this
module computes the same function and is tested equal to it and to the full
forward (tests/test_static_decode.py).

What makes a step static:

* every buffer is allocated up front for a fixed batch and maximum length
  (``max_len``); the position of the next token is a device tensor, advanced in
  place at the end of the step, and keys/values are written with ``index_copy_``
  at that position (no ``torch.cat``, no Python int that changes per step);
* attention reads the whole buffer with a mask of the positions written so far;
* the core runs all D iterations on every token and freezes by mask, exactly the
  training path's freeze equation h(d) = a·R(h(d−1)) + (1−a)·h(d−1) with
  a = 1[the token still runs]; the policy's own inference rule decides ``a``
  after every iteration, as in :func:`anira.decode.step`. So a token that exits
  early still pays for D iterations of compute (its candidates are computed and
  dropped), unless ``skip_halted`` (below);
* nothing in the step reads a device value on the host (no ``.item()``, no
  ``bool(tensor)``; ``skip_halted`` reads one flag per iteration): the host only
  keeps its own count of tokens fed, for the max-length check.

Core cache layouts (``layout``):

* ``"full"``: one (b, max_len) buffer per iteration: D entries per token, what a
  fixed-depth model needs. Iteration t writes every token's k(h(min(t, d_i))) and
  attends over its own buffer directly.
* ``"aware"`` (allocation-aware): a per-sequence pool of rows plus a slot table
  (D, b, max_len) of row indices. A token takes a new row at iteration t only when
  its state there is new: every iteration it runs (states h(0) .. h(d_i − 1)) and
  the first one after it exits (its exit state h(d_i)); later iterations point at
  that exit row. So it uses min(d_i + 1, D) rows, as many as
  :class:`anira.decode.AllocationAwareCache` keeps; rows are handed out by a
  per-sequence counter on the device. Each iteration gathers the rows its slot
  table names.

The trade-off of the static allocation-aware layout: the pool's size is fixed
before decoding (``rows`` per sequence). The default, max_len·D, can never run
out, but then the memory *allocated* is that of the full layout (the rows in use
still follow the exit depths: :meth:`StaticDecoder.rows_used`); a smaller pool
(memory proportional to the expected depth, e.g. max_len·(d̄ + 1)) is the point
of the layout, and running out of it is detected on the device and raised as an
AniraError by :meth:`StaticDecoder.check` (which :func:`teacher_forced` and
:func:`generate` call before returning anything). Reading through the slot table
costs one gather per iteration that the full layout does not need.

Skipping the iterations nobody runs (``skip_halted=True``): the step is cut into
pieces — the Prelude with iteration 0, then one piece per further iteration, then
the close — each recorded as its own CUDA graph on a GPU. After each iteration the
host reads one device flag, "does any token still run" (one synchronisation per
iteration run), and once none does, the close after k iterations runs instead of
the remaining ones: it writes what the skipped depths k .. D − 1 offer later tokens
(every token's state there is its exit state, so depth k's entry, computed once,
stands for all of them: the aware layout takes the exit row only where the state
is new and points the later slots at it, the full layout copies the entry into
each skipped depth), then the policy's readout, the Coda and the logits. A step
thus runs max_i d_i iterations (over the batch) instead of D, and, like
:func:`anira.decode.step` and the model's forward, asks the policy nothing for the
skipped depths; it writes the same caches, exit depths and logits as the step that
runs all D (tested). It pays when a batch's deepest token often stops early (small
batches, d̄ well below D); a batch whose deepest token always runs to D pays only
the synchronisations, which is why it is not the default.

Skipping on the device (``skip_halted="device"``): the same step as one body in which
each iteration after the first runs under the condition "some token still runs", and
otherwise only stores what that depth offers later tokens (the exit state's entry:
computed again at each skipped depth, which the full layout needs and the aware layout
turns into a pointer to the exit row). Recorded on a GPU, every condition is a CUDA
graph conditional (IF) node that the device evaluates at each replay, so one graph
replay per step runs max_i d_i iterations with no host round trip. The state an
iteration leaves is written in place into buffers the rest of the graph reads, so a
policy's state must keep its tensors' shapes and dtypes across iterations (checked).
It needs a torch build with CUDA graph conditional nodes
(``torch.cuda.CUDAGraph.begin_capture_to_if_node``, CUDA 12.4 or later); eagerly (a CPU,
or ``graphs="off"``) the host evaluates each condition, one synchronisation per
iteration, as ``skip_halted=True`` does.

Decoding fires no hook points in either mode (as :mod:`anira.decode`); use
``run_with_cache`` on the full sequence for activations (the same function: tested).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves, tree_map, tree_structure

from anira.decode import _finish, _kv, no_hook, no_readout
from anira.errors import AniraError
from anira.graphs import _autocast_without_cache, autocast_key
from anira.halting import LoopContext
from anira.layers import Block

LAYOUTS = ("aware", "full")
GRAPH_CHOICES = ("auto", "off")


def conditional_nodes_available() -> bool:
    """Whether this torch build can record a CUDA graph conditional (IF) node."""
    graph = torch.cuda.CUDAGraph
    return (torch.cuda.is_available() and hasattr(graph, "begin_capture_to_if_node")
            and hasattr(graph, "get_currently_capturing_graph"))


@contextmanager
def _when(pred: Tensor):
    """Run the body of ``with _when(pred) as run: if run: ...`` only where ``pred`` (a bool
    scalar on the device) holds. While a CUDA graph is being recorded the body becomes a
    conditional node that the device evaluates at every replay (``run`` is True so that the
    body is recorded); otherwise the host reads ``pred`` (one synchronisation)."""
    if pred.is_cuda and torch.cuda.is_current_stream_capturing():
        graph = torch.cuda.CUDAGraph.get_currently_capturing_graph()
        graph.begin_capture_to_if_node(pred)
        try:
            yield True
        finally:
            graph.end_capture_to_conditional_node()
    else:
        yield bool(pred)


class StaticDecoder:
    """Static buffers and the decode step of one model, for ``batch`` sequences of
    up to ``max_len`` tokens (default the model's). ``graphs="auto"`` records the
    step as a CUDA graph on a GPU (the first step runs eagerly as warm-up and the
    recording follows it); ``"off"`` or a CPU runs it eagerly. ``skip_halted``:
    stop each step's loop once no token runs (see the module docstring): ``True`` (or
    ``"host"``) with the host reading a flag after each iteration, one graph per piece;
    ``"device"`` with the device deciding inside one graph (conditional nodes).
    ``compile``: run the all-D step through ``torch.compile`` (one graph, fullgraph), which
    fuses its many small element-wise kernels, before it is recorded. The step reads the
    model's weights where they are: in-place updates are seen, but a model moved or given
    new tensors needs a new decoder (checked)."""

    def __init__(self, model: Any, batch: int, *, max_len: int | None = None, layout: str = "aware",
                 rows: int | None = None, graphs: str = "auto", skip_halted: bool | str = False,
                 compile: bool = False) -> None:
        cfg = model.cfg
        if cfg.n_core != 1:
            raise AniraError("decoding with a static cache needs n_core == 1")
        if model.policy.needs_full_distribution():
            raise AniraError(f"policy {model.policy.name!r} with a full-distribution rule cannot decide online; "
                             "use a threshold rule to decode")
        if layout not in LAYOUTS:
            raise AniraError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if graphs not in GRAPH_CHOICES:
            raise AniraError(f"graphs must be one of {', '.join(GRAPH_CHOICES)}, got {graphs!r}")
        if skip_halted is False:
            skip = None
        elif skip_halted is True or skip_halted == "host":
            skip = "host"
        elif skip_halted == "device":
            skip = "device"
        else:
            raise AniraError(f"skip_halted must be False, True, 'host' or 'device', got {skip_halted!r}")
        if not isinstance(compile, bool):
            raise AniraError(f"compile must be True or False, got {compile!r}")
        if compile and skip is not None:
            raise AniraError("compile applies to the step that runs all D iterations; use skip_halted=False")
        if (skip == "device" and graphs == "auto" and model.device.type == "cuda"
                and not conditional_nodes_available()):
            raise AniraError("skip_halted='device' needs CUDA graph conditional nodes "
                             "(torch.cuda.CUDAGraph.begin_capture_to_if_node), which this torch build lacks; "
                             "use skip_halted=True")
        max_len = cfg.max_len if max_len is None else int(max_len)
        if not 1 <= max_len <= cfg.max_len:  # the rotary tables end at the model's max_len
            raise AniraError(f"max_len must be in 1..{cfg.max_len} (the model's max_len), got {max_len}")
        if batch < 1:
            raise AniraError(f"batch must be >= 1, got {batch}")
        D = cfg.max_iters
        rows = max_len * D if rows is None else int(rows)
        if layout == "aware" and rows < 1:
            raise AniraError(f"rows must be >= 1, got {rows}")
        self.model, self.batch, self.max_len, self.layout = model, batch, max_len, layout
        self.rows = rows if layout == "aware" else 0
        self.graphs, self.skip = graphs, skip  # skip: None, "host" or "device"
        self._compiled = torch.compile(self._body, fullgraph=True, dynamic=False) if compile else None
        self.skip_halted = skip is not None
        dev = model.device
        # under autocast the projections (and so the keys/values) come out in its dtype
        dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else model.embed.weight.dtype
        self.kv_dtype = dtype
        self._autocast = autocast_key(dev)
        shape = (batch, max_len, cfg.n_heads, cfg.d_head)

        def zeros(*lead: int) -> Tensor:  # zero, not empty: masked entries must stay finite
            return torch.zeros(*lead, *shape[2:], dtype=dtype, device=dev)

        self.prelude_kv = [(zeros(batch, max_len), zeros(batch, max_len)) for _ in range(cfg.n_prelude)]
        self.coda_kv = [(zeros(batch, max_len), zeros(batch, max_len)) for _ in range(cfg.n_coda)]
        if layout == "full":
            self.core_k, self.core_v = zeros(D, batch, max_len), zeros(D, batch, max_len)
        else:
            # row `rows` of each sequence is where writes that keep nothing go (a static
            # shape writes every step); unwritten slots point there too
            self.pool_k, self.pool_v = zeros(batch, rows + 1), zeros(batch, rows + 1)
            self.slots = torch.full((D, batch, max_len), rows, dtype=torch.long, device=dev)
            self.used = torch.zeros(batch, dtype=torch.long, device=dev)  # rows handed out per sequence
            self.missed = torch.zeros(batch, dtype=torch.long, device=dev)  # rows wanted once the pool was full
            self._row_base = torch.arange(batch, device=dev) * (rows + 1)  # flat row of each sequence's row 0
        # flat index of (depth 0, sequence i, position 0) in a (D, b, max_len) table: writes go
        # through the whole table's flat view (see _put)
        self._table_base = torch.arange(batch, device=dev) * max_len
        self.pos = torch.zeros((), dtype=torch.long, device=dev)  # the position the next token takes
        self.key_positions = torch.arange(max_len, device=dev)
        self.length = 0  # tokens fed, counted on the host (for the max-length check only)
        self._iterations = 0  # core iterations the steps ran, counted on the host (see iterations_run)
        self._iterations_on_device = torch.zeros((), dtype=torch.long, device=dev)  # skip "device"
        self._owners = _owners(model)
        self._weights = self._weight_key()
        # the recorded step: its static input, and the graph with its outputs (skip_halted:
        # one graph per piece, see _record_pieces)
        self._token_in = torch.zeros(batch, dtype=torch.long, device=dev)
        self._graph = None
        self._out: tuple[Tensor, Tensor] | None = None
        self._pieces: list[_Piece] | None = None
        self._closes: list[tuple[Any, tuple[Tensor, Tensor]]] | None = None

    # -- state ------------------------------------------------------------------------
    def reset(self) -> None:
        """Start new sequences (in place: a recorded graph stays valid)."""
        self.pos.zero_()
        self.length = 0
        self._iterations = 0
        self._iterations_on_device.zero_()
        if self.layout == "aware":
            self.slots.fill_(self.rows)
            self.used.zero_()
            self.missed.zero_()

    @property
    def iterations_run(self) -> int:
        """Core iterations the steps ran since the reset, each for the whole batch (with
        ``skip_halted="device"`` counted on the device: reading it synchronises)."""
        return self._iterations + int(self._iterations_on_device)

    @property
    def recorded(self) -> bool:
        """Whether the step replays recorded CUDA graphs (False on a CPU or with graphs="off")."""
        return self._graph is not None or self._pieces is not None

    def _weight_key(self) -> tuple:
        """The address of every parameter and buffer the step can read: a tensor moved,
        replaced or given new data changes it. Read from the modules that own them, listed
        once (walking the module tree, hook points included, takes hundreds of µs: longer
        than a compiled step)."""
        return tuple(None if t is None else t.data_ptr()
                     for m in self._owners for t in (*m._parameters.values(), *m._buffers.values()))

    def check(self) -> None:
        """Raise if the allocation-aware pool ran out of rows (one device synchronisation)."""
        if self.layout == "aware" and bool(self.missed.any()):
            need = int((self.used + self.missed).max())
            raise AniraError(f"the allocation-aware cache ran out of rows ({need} needed, {self.rows} per "
                             "sequence): pass a larger rows")

    def rows_used(self) -> Tensor:
        """Core key/value entries in use per sequence (b,): rows (aware) or D per token (full)."""
        if self.layout == "full":
            return torch.full((self.batch,), self.length * self.model.cfg.max_iters, device=self.pos.device)
        return self.used.clone()

    def entries(self) -> int:
        """Core key/value entries (token × iteration) in use, all sequences."""
        return int(self.rows_used().sum())

    def nbytes(self) -> int:
        """Bytes of core keys and values allocated (index tables excluded)."""
        if self.layout == "full":
            return self.core_k.nbytes + self.core_v.nbytes
        return self.pool_k.nbytes + self.pool_v.nbytes

    def nbytes_used(self) -> int:
        """Bytes of the core key/value entries in use."""
        cfg = self.model.cfg
        return self.entries() * cfg.n_heads * cfg.d_head * self.kv_dtype.itemsize * 2

    def served(self, t: int) -> tuple[Tensor, Tensor]:
        """Core keys/values (b, n, h, e) the n tokens fed so far offer at iteration t."""
        n = self.length
        if self.layout == "full":
            return self.core_k[t, :, :n], self.core_v[t, :, :n]
        return self._gather(self.slots[t][:, :n])

    def _gather(self, slot: Tensor) -> tuple[Tensor, Tensor]:
        flat = (slot + self._row_base[:, None]).reshape(-1)
        pool_shape = self.pool_k.shape
        k = self.pool_k.view(-1, *pool_shape[2:]).index_select(0, flat).view(*slot.shape, *pool_shape[2:])
        v = self.pool_v.view(-1, *pool_shape[2:]).index_select(0, flat).view(*slot.shape, *pool_shape[2:])
        return k, v

    # -- the step -----------------------------------------------------------------------
    def step(self, token: Tensor) -> tuple[Tensor, Tensor]:
        """Feed one token per sequence (b,); returns next-token logits (b, V) and its exit
        depth (b,). With a recorded graph these are its output buffers, overwritten by
        the next step: copy what you keep."""
        if self.length >= self.max_len:
            raise AniraError(f"sequence length would exceed max_len {self.max_len}")
        token = self._check_token(token)
        if autocast_key(self.pos.device) != self._autocast:
            raise AniraError("autocast changed since this decoder was made; make a new one")
        if self.graphs == "auto" and self.pos.is_cuda:
            # a recorded graph reads every weight at the address it had then (the eager
            # step reads them afresh): the module tree is checked once per sequence (a
            # module replaced by another), the addresses every step
            if (self.length == 0 and _owners(self.model) != self._owners) or self._weight_key() != self._weights:
                raise AniraError("the model's weights were moved or replaced since this decoder was made; "
                                 "make a new one")
            out = self._graphed(token)
        else:
            out = self._step_body()(token)
        if not self.skip_halted:
            self._iterations += self.model.cfg.max_iters
        self.length += 1
        return out

    def _check_token(self, token: Tensor) -> Tensor:
        if not isinstance(token, Tensor):
            token = torch.as_tensor(token)
        if token.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise AniraError(f"tokens must be integer ids, got dtype {token.dtype}")
        token = token.reshape(-1)
        if token.shape[0] != self.batch:
            raise AniraError(f"expected one token for each of the {self.batch} sequences, got {token.shape[0]}")
        if not token.is_cuda:  # a range check on a GPU would synchronise: callers check prompts up front
            vocab = self.model.cfg.vocab_size
            if token.numel() and (token.min() < 0 or token.max() >= vocab):
                raise AniraError(f"token ids must lie in 0..{vocab - 1}")
        return token.to(self.pos.device, torch.long)

    # -- the step, in pieces -------------------------------------------------------------
    def _step_body(self) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """The step this decoder runs eagerly, and records as one graph (all but "host")."""
        if self.skip == "host":
            return self._skipping
        if self.skip == "device":
            return self._conditional
        return self._body if self._compiled is None else self._compiled_body

    @torch.no_grad()
    def _body(self, token: Tensor) -> tuple[Tensor, Tensor]:
        """One decode step of all D iterations: only device work, the same kernels every step."""
        s = self._start(token)
        for t in range(self.model.cfg.max_iters):
            s = self._iterate(t, s)
        return self._close(self.model.cfg.max_iters, s)

    def _compiled_body(self, token: Tensor) -> tuple[Tensor, Tensor]:
        try:
            return self._compiled(token)
        except torch._dynamo.exc.Unsupported as err:  # e.g. a plugin policy's step that breaks the graph
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise AniraError(f"compile=True: the decode step could not be compiled as one graph ({reason}); "
                             "use compile=False") from err

    @torch.no_grad()
    def _skipping(self, token: Tensor) -> tuple[Tensor, Tensor]:
        """One decode step that stops once no token runs (one flag read per iteration)."""
        D = self.model.cfg.max_iters
        s = self._start(token)
        k = 0  # iterations run
        while k == 0 or (k < D and bool(s.running.any())):
            s = self._iterate(k, s)
            k += 1
        self._iterations += k
        return self._close(k, s)

    @torch.no_grad()
    def _conditional(self, token: Tensor) -> tuple[Tensor, Tensor]:
        """The skipping step as one straight body (``skip_halted="device"``): iteration t ≥ 1
        runs only if some token still runs; otherwise depth t gets the exit state's entry,
        as the close of :meth:`_skipping` writes it (the first skipped depth stores it, where
        the state is new; each later one stores it again, which the aware layout turns into
        a pointer to that row). The state lives in buffers updated in place, so that the
        rest of a recorded graph reads the same tensors whichever branch ran."""
        model = self.model
        s = self._own(self._iterate(0, self._start(token)))
        self._iterations_on_device.add_(1)
        for t in range(1, model.cfg.max_iters):
            anyone = s.running.any()
            with _when(anyone) as run:
                if run:
                    self._assign(s, self._iterate(t, s))
                    self._iterations_on_device.add_(1)
            with _when(~anyone) as run:
                if run:
                    _, key, value = _kv(model, model.core_blocks[0], s.h, s.pos_b)
                    self._store(t, key, value, s.pos, s.ran)
                    s.ran.zero_()  # from here on the state is not new: the aware layout points back
        return self._close(model.cfg.max_iters, s)

    @staticmethod
    def _state(s: _Loop) -> list[Any]:
        """What an iteration changes: the policy's state, h and the flags."""
        return [*tree_leaves(s.pstate), s.h, s.ran, s.running, s.depth]

    @staticmethod
    def _own(s: _Loop) -> _Loop:
        """``s`` with every tensor an iteration changes in a buffer of its own (none a view of
        another), so that :meth:`_assign` can overwrite them in place."""
        def own(x: Any) -> Any:
            return x.clone() if isinstance(x, Tensor) else x

        return replace(s, pstate=tree_map(own, s.pstate), h=own(s.h), ran=own(s.ran), running=own(s.running),
                       depth=own(s.depth))

    def _assign(self, s: _Loop, new: _Loop) -> None:
        """Overwrite ``s``'s buffers with what iteration ``new`` left."""
        targets, values = self._state(s), self._state(new)
        if tree_structure(s.pstate) != tree_structure(new.pstate):
            raise AniraError(f"policy {self.model.policy.name!r} changes the structure of its state between "
                             "iterations; skip_halted='device' needs it fixed (use skip_halted=True)")
        storages = {t.untyped_storage().data_ptr() for t in targets if isinstance(t, Tensor)}
        copies = []
        for target, value in zip(targets, values):
            if not isinstance(target, Tensor):
                if target != value:  # a Python value cannot change inside a recorded graph
                    raise AniraError(f"policy {self.model.policy.name!r} keeps a Python value in its state that "
                                     "changes between iterations; skip_halted='device' needs tensors "
                                     "(use skip_halted=True)")
                continue
            if not isinstance(value, Tensor) or value.shape != target.shape or value.dtype != target.dtype:
                raise AniraError(f"policy {self.model.policy.name!r} changes a state tensor's shape or dtype "
                                 "between iterations; skip_halted='device' needs them fixed (use skip_halted=True)")
            # a value sharing memory with a buffer about to be overwritten is copied first
            copies.append((target, value.clone() if value.untyped_storage().data_ptr() in storages else value))
        for target, value in copies:
            target.copy_(value)

    def _start(self, token: Tensor) -> _Loop:
        """Embedding, Prelude and the policy's ``begin`` for the new tokens (b,)."""
        model, b = self.model, self.batch
        pos = self.pos.view(1)
        pos_b = pos.expand(b)[:, None]  # (b, 1) for rotary and the policy
        visible = self.key_positions <= pos  # (L,)
        x = model.embed(token[:, None])
        for block, (K, V) in zip(model.prelude_blocks, self.prelude_kv):
            x = self._plain(block, K, V, x, pos, pos_b, visible)
        ctx = LoopContext(max_iters=model.cfg.max_iters, stochastic=False, readout=no_readout, positions=pos_b,
                          tokens=token[:, None], history=False)  # decoding never asks for q
        everyone = torch.ones(b, dtype=torch.bool, device=x.device)
        # iteration -1 "ran": the first iteration's state h(0) is new
        return _Loop(pos=pos, pos_b=pos_b, visible=visible, ctx=ctx, h=x, pstate=model.policy.begin(x, ctx, no_hook),
                     running=everyone, ran=everyone, depth=torch.zeros(b, dtype=torch.long, device=x.device))

    def _iterate(self, t: int, s: _Loop) -> _Loop:
        """Core iteration t on every token, frozen where the token no longer runs."""
        model = self.model
        core = model.core_blocks[0]
        q, k, v = _kv(model, core, s.h, s.pos_b)
        self._store(t, k, v, s.pos, s.ran)
        keys, values = self._offered(t)
        candidate = _finish(core, s.h, q, keys, values, s.visible)
        h = torch.where(s.running[:, None, None], candidate, s.h)  # freezing: exact for a in {0, 1}
        pstate, keep = model.policy.step(s.pstate, h, t, s.ctx, no_hook)
        running = s.running & (keep.reshape(self.batch) > 0.5)
        return replace(s, h=h, pstate=pstate, running=running, ran=s.running, depth=s.depth + s.running.long())

    def _close(self, k: int, s: _Loop) -> tuple[Tensor, Tensor]:
        """End a step after k iterations: if k < D (no token runs iteration k), the cache
        entries of the skipped depths k .. D − 1, all of the exit state; then the
        policy's readout, the Coda, the logits (b, V), and the exit depths (b,)."""
        model = self.model
        if k < model.cfg.max_iters:
            # what iteration k would store, computed once; later depths offer the same
            _, key, value = _kv(model, model.core_blocks[0], s.h, s.pos_b)
            self._store(k, key, value, s.pos, s.ran)
            self._carry(k, s.pos)
        x = model.policy.readout_state(s.pstate, s.h)
        for block, (K, V) in zip(model.coda_blocks, self.coda_kv):
            x = self._plain(block, K, V, x, s.pos, s.pos_b, s.visible)
        logits = model.unembed(model.ln_final(x))[:, 0]
        self.pos.add_(1)
        return logits, s.depth

    def _plain(self, block: Block, K: Tensor, V: Tensor, x: Tensor, pos: Tensor, pos_b: Tensor,
               visible: Tensor) -> Tensor:
        q, k, v = _kv(self.model, block, x, pos_b)
        K.index_copy_(1, pos, k.to(K.dtype))
        V.index_copy_(1, pos, v.to(V.dtype))
        return _finish(block, x, q, K, V, visible)

    # -- the core cache ---------------------------------------------------------------------
    def _store(self, t: int, k: Tensor, v: Tensor, pos: Tensor, fresh: Tensor) -> None:
        """Store the new token's keys/values (b, 1, h, e) of iteration t, computed from its
        state entering t; ``fresh`` (b,): that state is new (the token ran iteration
        t − 1, or t = 0)."""
        if self.layout == "full":
            self._put(self.core_k, t, pos, k[:, 0])
            self._put(self.core_v, t, pos, v[:, 0])
            return
        # a new row where the state is new; otherwise the slot of iteration t - 1 (its
        # exit row) carries over
        fits = self.used < self.rows
        self.missed.add_((fresh & ~fits).long())
        new = fresh & fits
        row = torch.where(new, self.used, self.rows)  # not new: the spare row takes the write
        flat = self._row_base + row
        self.pool_k.view(-1, *self.pool_k.shape[2:]).index_copy_(0, flat, k[:, 0].to(self.pool_k.dtype))
        self.pool_v.view(-1, *self.pool_v.shape[2:]).index_copy_(0, flat, v[:, 0].to(self.pool_v.dtype))
        earlier = self.slots[t - 1].index_select(1, pos)[:, 0] if t > 0 else row
        self._put(self.slots, t, pos, torch.where(new, row, earlier))
        self.used.add_(new.long())

    def _put(self, table: Tensor, t: int, pos: Tensor, value: Tensor) -> None:
        """table[t, i, pos] = value[i] for every sequence i, for a (D, b, max_len, ...) table.
        Written through the flat view of the whole table, not through table[t]: compiled
        (compile=True), an in-place write into a slice of a buffer becomes a copy of the
        slice per write and a copy back at the end, while a write into the whole buffer
        stays in place."""
        flat = t * self.batch * self.max_len + self._table_base + pos
        table.view(-1, *table.shape[3:]).index_copy_(0, flat, value.to(table.dtype))

    def _offered(self, t: int) -> tuple[Tensor, Tensor]:
        """What every position offers at iteration t (b, L, h, e)."""
        if self.layout == "full":
            return self.core_k[t], self.core_v[t]
        return self._gather(self.slots[t])

    def _carry(self, k: int, pos: Tensor) -> None:
        """The new token offers at depths k + 1 .. D − 1 what it offers at depth k: its
        entry (full) or its slot (aware)."""
        later = self.model.cfg.max_iters - k - 1
        if later == 0:
            return
        tables = (self.core_k, self.core_v) if self.layout == "full" else (self.slots,)
        for table in tables:  # (D, b, L, ...)
            column = table[k].index_select(1, pos)  # (b, 1, ...)
            table[k + 1:].index_copy_(2, pos, column.expand(later, *column.shape))

    # -- CUDA graphs ------------------------------------------------------------------------
    def _graphed(self, token: Tensor) -> tuple[Tensor, Tensor]:
        self._token_in.copy_(token)
        if self._graph is not None:
            self._graph.replay()
            return self._out
        if self._pieces is not None:
            return self._replay_pieces()
        # first step: run it for real on a side stream (warms up cuBLAS and the
        # allocator, as recording requires, and is this step's result); then record
        # the same body, which records kernels without running them, so the state
        # it reads (position, caches) is the one the next replay should see
        dev = self.pos.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            logits, depth = self._step_body()(self._token_in)
            result = logits.clone(), depth.clone()
        torch.cuda.current_stream(dev).wait_stream(side)
        try:
            with _autocast_without_cache():
                if self.skip == "host":
                    self._record_pieces()
                else:  # all D iterations, or skipping on the device: one graph
                    self._graph, self._out = _record(partial(self._step_body(), self._token_in))
        except RuntimeError as err:  # an operation that cannot be recorded (e.g. a plugin policy's)
            self.graphs = "off"  # eager from now on; benchmarks report graphed: false
            self._graph = self._pieces = self._closes = None
            warnings.warn(f"anira: the decode step could not be recorded as a CUDA graph and runs eagerly: {err}",
                          RuntimeWarning, stacklevel=4)
        return result

    @torch.no_grad()
    def _record_pieces(self) -> None:
        """Record the skipping step's pieces: iteration t (t = 0 with the Prelude) and its
        flag "any token still runs", for t = 0 .. D − 1; then the close after k
        iterations, for k = 1 .. D. They share one memory pool: every piece's outputs
        are kept (so no later recording reuses them), and the memory a recording
        frees (its temporaries) is reused only by later recordings, whose pieces run
        later in a step (the iterations in their order, the closes, which end a step,
        last)."""
        D = self.model.cfg.max_iters
        pieces: list[_Piece] = []
        pool = None
        for t in range(D):
            def piece(t: int = t) -> tuple[_Loop, Tensor]:
                s = self._start(self._token_in) if t == 0 else pieces[t - 1].state
                s = self._iterate(t, s)
                return s, s.running.any()

            graph, (s, anyone) = _record(piece, pool)
            pool = graph.pool()
            pieces.append(_Piece(graph, s, anyone))
        closes = [_record(partial(self._close, k, pieces[k - 1].state), pool) for k in range(1, D + 1)]
        self._pieces, self._closes = pieces, closes

    def _replay_pieces(self) -> tuple[Tensor, Tensor]:
        """The skipping step over the recorded pieces (as :meth:`_skipping`)."""
        D = self.model.cfg.max_iters
        k = 0
        while k == 0 or (k < D and bool(self._pieces[k - 1].anyone)):
            self._pieces[k].graph.replay()
            k += 1
        self._iterations += k
        graph, out = self._closes[k - 1]
        graph.replay()
        return out


def _owners(model: Any) -> list[Any]:
    """The modules that hold parameters or buffers of their own, in the model's order."""
    return [m for m in model.modules() if m._parameters or m._buffers]


@dataclass
class _Loop:
    """One step's state between its pieces (with graphs: a recorded piece's outputs)."""

    pos: Tensor  # (1,) the new tokens' position
    pos_b: Tensor  # (b, 1)
    visible: Tensor  # (L,) positions written so far, the new one included
    ctx: LoopContext
    h: Tensor  # (b, 1, d) the state entering the next iteration
    pstate: dict  # the policy's state
    running: Tensor  # (b,) bool: the token runs the next iteration
    ran: Tensor  # (b,) bool: the token ran the last iteration (so its state is new)
    depth: Tensor  # (b,) iterations the token ran


@dataclass
class _Piece:
    graph: Any  # torch.cuda.CUDAGraph
    state: _Loop  # what the piece leaves
    anyone: Tensor  # () bool: some token runs the next iteration


def _record(fn: Callable[[], Any], pool: Any = None) -> tuple[Any, Any]:
    """Record ``fn`` as a CUDA graph (its kernels are not run); returns the graph and
    ``fn``'s outputs, the buffers each replay overwrites."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


@torch.no_grad()
def teacher_forced(decoder: StaticDecoder, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Reset ``decoder`` and step through ``tokens`` (b, n); returns logits (b, n, V) and
    exit depths (b, n)."""
    model = decoder.model
    tokens = model.check_tokens(tokens)
    if tokens.shape[0] != decoder.batch:
        raise AniraError(f"tokens have batch {tokens.shape[0]}, the decoder was made for {decoder.batch}")
    if tokens.shape[1] > decoder.max_len:
        raise AniraError(f"sequence length {tokens.shape[1]} exceeds the decoder's max_len {decoder.max_len}")
    decoder.reset()
    logits, depths = [], []
    for j in range(tokens.shape[1]):
        lg, d = decoder.step(tokens[:, j])
        logits.append(lg.clone())  # a graph's outputs are overwritten by the next step
        depths.append(d.clone())
    decoder.check()
    return torch.stack(logits, 1), torch.stack(depths, 1)


@torch.no_grad()
def generate(decoder: StaticDecoder, prompt: Tensor, max_new_tokens: int) -> Tensor:
    """Reset ``decoder``; greedy decoding: returns prompt + generated tokens (b, n + max_new_tokens).
    Each next token is chosen on the device (no host synchronisation per token, other
    than ``skip_halted``'s flag reads)."""
    if max_new_tokens < 0:
        raise AniraError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompt = decoder.model.check_tokens(prompt)
    if prompt.shape[1] < 1:
        raise AniraError("the prompt must hold at least one token")
    if prompt.shape[1] + max_new_tokens > decoder.max_len + 1:  # the last token is never fed
        raise AniraError(f"prompt of {prompt.shape[1]} plus {max_new_tokens} new tokens exceeds the decoder's "
                         f"max_len {decoder.max_len}")
    if prompt.shape[0] != decoder.batch:
        raise AniraError(f"prompt has batch {prompt.shape[0]}, the decoder was made for {decoder.batch}")
    decoder.reset()
    out = torch.empty(prompt.shape[0], prompt.shape[1] + max_new_tokens, dtype=torch.long, device=prompt.device)
    out[:, : prompt.shape[1]] = prompt
    logits = None
    for j in range(prompt.shape[1]):
        logits, _ = decoder.step(prompt[:, j])
    for i in range(max_new_tokens):
        j = prompt.shape[1] + i
        out[:, j] = logits.argmax(-1)
        if i + 1 < max_new_tokens:  # the last generated token needs no step
            logits, _ = decoder.step(out[:, j])
    decoder.check()
    return out
