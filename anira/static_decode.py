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
  dropped): a data-dependent stop would need a host synchronisation per iteration
  or conditional graph nodes, which this module does not do;
* nothing in the step reads a device value on the host (no ``.item()``, no
  ``bool(tensor)``): the host only keeps its own count of tokens fed, for the
  max-length check.

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
costs one gather per iteration that the full layout does not need, and both run
all D iterations, so in this static form the allocation-aware layout saves
memory, not time.

Decoding fires no hook points (as :mod:`anira.decode`); use ``run_with_cache`` on
the full sequence for activations (the same function: tested).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from anira.decode import _finish, _kv, no_hook, no_readout
from anira.errors import AniraError
from anira.graphs import _autocast_without_cache, autocast_key
from anira.halting import LoopContext
from anira.layers import Block

LAYOUTS = ("aware", "full")
GRAPH_CHOICES = ("auto", "off")


class StaticDecoder:
    """Static buffers and the decode step of one model, for ``batch`` sequences of
    up to ``max_len`` tokens (default the model's). ``graphs="auto"`` records the
    step as a CUDA graph on a GPU (the first step runs eagerly as warm-up and the
    recording follows it); ``"off"`` or a CPU runs it eagerly. The step reads the
    model's weights where they are: in-place updates are seen, but a model moved
    or given new tensors needs a new decoder (checked)."""

    def __init__(self, model: Any, batch: int, *, max_len: int | None = None, layout: str = "aware",
                 rows: int | None = None, graphs: str = "auto") -> None:
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
        self.graphs = graphs
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
        self.pos = torch.zeros((), dtype=torch.long, device=dev)  # the position the next token takes
        self.key_positions = torch.arange(max_len, device=dev)
        self.length = 0  # tokens fed, counted on the host (for the max-length check only)
        self._weights = self._weight_key()
        # the recorded step: its static input and outputs
        self._graph = None
        self._token_in = torch.zeros(batch, dtype=torch.long, device=dev)
        self._out: tuple[Tensor, Tensor] | None = None

    # -- state ------------------------------------------------------------------------
    def reset(self) -> None:
        """Start new sequences (in place: a recorded graph stays valid)."""
        self.pos.zero_()
        self.length = 0
        if self.layout == "aware":
            self.slots.fill_(self.rows)
            self.used.zero_()
            self.missed.zero_()

    def _weight_key(self) -> tuple:
        m = self.model
        return tuple(t.data_ptr() for t in (*m.parameters(), *m.buffers()))

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
            # step reads them afresh)
            if self._weight_key() != self._weights:
                raise AniraError("the model's weights were moved or replaced since this decoder was made; "
                                 "make a new one")
            out = self._graphed(token)
        else:
            out = self._body(token)
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

    @torch.no_grad()
    def _body(self, token: Tensor) -> tuple[Tensor, Tensor]:
        """One decode step: only device work, the same kernels every step."""
        model, cfg = self.model, self.model.cfg
        b = self.batch
        pos = self.pos.view(1)
        pos_b = pos.expand(b)[:, None]  # (b, 1) for rotary and the policy
        visible = self.key_positions <= pos  # (L,)
        x = model.embed(token[:, None])
        for block, (K, V) in zip(model.prelude_blocks, self.prelude_kv):
            x = self._plain(block, K, V, x, pos, pos_b, visible)
        h = x
        ctx = LoopContext(max_iters=cfg.max_iters, stochastic=False, readout=no_readout, positions=pos_b,
                          tokens=token[:, None])
        pstate = model.policy.begin(h, ctx, no_hook)
        core = model.core_blocks[0]
        running = torch.ones(b, dtype=torch.bool, device=h.device)
        ran_before = running  # iteration -1 "ran": the first iteration's state h(0) is new
        depth = torch.zeros(b, dtype=torch.long, device=h.device)
        for t in range(cfg.max_iters):
            q, k, v = _kv(model, core, h, pos_b)
            keys, values = self._core_kv(t, k, v, pos, ran_before)
            candidate = _finish(core, h, q, keys, values, visible)
            h = torch.where(running[:, None, None], candidate, h)  # freezing: exact for a in {0, 1}
            depth = depth + running.long()
            pstate, keep = model.policy.step(pstate, h, t, ctx, no_hook)
            ran_before = running
            running = running & (keep.reshape(b) > 0.5)
        x = model.policy.readout_state(pstate, h)
        for block, (K, V) in zip(model.coda_blocks, self.coda_kv):
            x = self._plain(block, K, V, x, pos, pos_b, visible)
        logits = model.unembed(model.ln_final(x))[:, 0]
        self.pos.add_(1)
        return logits, depth

    def _plain(self, block: Block, K: Tensor, V: Tensor, x: Tensor, pos: Tensor, pos_b: Tensor,
               visible: Tensor) -> Tensor:
        q, k, v = _kv(self.model, block, x, pos_b)
        K.index_copy_(1, pos, k.to(K.dtype))
        V.index_copy_(1, pos, v.to(V.dtype))
        return _finish(block, x, q, K, V, visible)

    def _core_kv(self, t: int, k: Tensor, v: Tensor, pos: Tensor, ran_before: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new token's keys/values (b, 1, h, e) of iteration t (computed from its
        state entering t) and return what every position offers at t (b, L, h, e)."""
        if self.layout == "full":
            self.core_k[t].index_copy_(1, pos, k.to(self.core_k.dtype))
            self.core_v[t].index_copy_(1, pos, v.to(self.core_v.dtype))
            return self.core_k[t], self.core_v[t]
        # a new row where the state is new (the token ran the previous iteration, or
        # t = 0); otherwise the slot of iteration t - 1 (its exit row) carries over
        fits = self.used < self.rows
        self.missed.add_((ran_before & ~fits).long())
        new = ran_before & fits
        row = torch.where(new, self.used, self.rows)  # not new: the spare row takes the write
        flat = self._row_base + row
        self.pool_k.view(-1, *self.pool_k.shape[2:]).index_copy_(0, flat, k[:, 0].to(self.pool_k.dtype))
        self.pool_v.view(-1, *self.pool_v.shape[2:]).index_copy_(0, flat, v[:, 0].to(self.pool_v.dtype))
        earlier = self.slots[t - 1].index_select(1, pos)[:, 0] if t > 0 else row
        self.slots[t].index_copy_(1, pos, torch.where(new, row, earlier)[:, None])
        self.used.add_(new.long())
        return self._gather(self.slots[t])

    # -- the CUDA graph -------------------------------------------------------------------
    def _graphed(self, token: Tensor) -> tuple[Tensor, Tensor]:
        self._token_in.copy_(token)
        if self._graph is not None:
            self._graph.replay()
            return self._out
        # first step: run it for real on a side stream (warms up cuBLAS and the
        # allocator, as recording requires, and is this step's result); then record
        # the same body, which records kernels without running them, so the state
        # it reads (position, caches) is the one the next replay should see
        side = torch.cuda.Stream(self.pos.device)
        side.wait_stream(torch.cuda.current_stream(self.pos.device))
        with torch.cuda.stream(side):
            logits, depth = self._body(self._token_in)
            result = logits.clone(), depth.clone()
        torch.cuda.current_stream(self.pos.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with _autocast_without_cache(), torch.cuda.graph(graph):
                self._out = self._body(self._token_in)
        except RuntimeError as err:  # an operation that cannot be recorded (e.g. a plugin policy's)
            self.graphs = "off"  # eager from now on; benchmarks report graphed: false
            warnings.warn(f"anira: the decode step could not be recorded as a CUDA graph and runs eagerly: {err}",
                          RuntimeWarning, stacklevel=4)
            return result
        self._graph = graph
        return result


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
    Each next token is chosen on the device (no host synchronisation per token)."""
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
