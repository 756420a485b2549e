"""Autoregressive decoding with the allocation-aware key/value cache (docs/paper.md §2, Cost).

In the static graph, iteration t of the core feeds every token its state
h(min(t, d_i)): a halted token offers the keys and values of its exit state.
So a token only needs its core keys/values for the iterations it ran (computed
from its input states h(0) .. h(d_i − 1)) plus one entry for its exit state
h(d_i): d_i + 1 entries instead of D. (The exit entries are kept as one dense
tensor, so a token that ran all D iterations also has one, never served: D + 1 for
it. ``anira.static_decode``'s allocation-aware layout omits it.) Later tokens at
iteration t are served entry min(t, d_i). Cache memory therefore grows with the
mean exit depth, not with D.

``AllocationAwareCache(full=True)`` keeps all D entries per token instead (the
baseline a fixed-depth model would need) and serves the same values.

Decoding fires no hook points; use ``run_with_cache`` on the full sequence for
activations (it computes the same function: tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from anira.errors import AniraError
from anira.halting import LoopContext
from anira.layers import Block


@dataclass
class LayerCache:
    """Rotated keys and values (b, n, h, e) of an ordinary layer, grown per step."""

    k: Tensor | None = None
    v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=1)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=1)
        return self.k, self.v

    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes


@dataclass
class AllocationAwareCache:
    """Core keys/values: per iteration, only the tokens that ran it; plus exit entries."""

    max_iters: int
    full: bool = False  # True: keep every iteration for every token (the D·n baseline)
    iter_k: list[Tensor | None] = field(default_factory=list)  # t -> (rows, h, e)
    iter_v: list[Tensor | None] = field(default_factory=list)
    slots: list[Tensor | None] = field(default_factory=list)  # t -> (b, n) row index or -1
    exit_k: Tensor | None = None  # (b, n, h, e), entry of the exit state (not kept when full)
    exit_v: Tensor | None = None
    length: int = 0  # tokens stored

    def __post_init__(self) -> None:
        self.iter_k = [None] * self.max_iters
        self.iter_v = [None] * self.max_iters
        self.slots = [None] * self.max_iters

    def served(self, t: int) -> tuple[Tensor, Tensor] | None:
        """Keys/values (b, n, h, e) that the n past tokens offer at iteration t."""
        if self.length == 0:
            return None
        slot = self.slots[t][:, : self.length]  # past tokens only
        if self.full:  # every token stored every iteration
            return self.iter_k[t][slot], self.iter_v[t][slot]
        k, v = self.exit_k, self.exit_v
        stored = slot >= 0
        if bool(stored.any()):
            rows = slot.clamp_min(0)
            k = torch.where(stored[..., None, None], self.iter_k[t][rows], k)
            v = torch.where(stored[..., None, None], self.iter_v[t][rows], v)
        return k, v

    def store_iteration(self, t: int, k: Tensor, v: Tensor, ran: Tensor) -> None:
        """Keep the new token's keys/values (b, 1, h, e) of iteration t where it ran (b,)."""
        keep = torch.ones_like(ran) if self.full else ran
        b = ran.shape[0]
        n_old = 0 if self.iter_k[t] is None else self.iter_k[t].shape[0]
        new_slot = torch.full((b, 1), -1, dtype=torch.long, device=k.device)
        idx = keep.nonzero().squeeze(-1)
        new_slot[idx, 0] = n_old + torch.arange(idx.numel(), device=k.device)
        rows_k, rows_v = k[idx, 0], v[idx, 0]
        self.iter_k[t] = rows_k if self.iter_k[t] is None else torch.cat([self.iter_k[t], rows_k])
        self.iter_v[t] = rows_v if self.iter_v[t] is None else torch.cat([self.iter_v[t], rows_v])
        old = self.slots[t]
        if old is None:  # earlier tokens never stored this iteration
            old = torch.full((b, self.length), -1, dtype=torch.long, device=k.device)
        self.slots[t] = torch.cat([old, new_slot], dim=1)

    def store_exit(self, k: Tensor, v: Tensor) -> None:
        """Close the new token: append its exit-state keys/values (b, 1, h, e)."""
        if not self.full:
            self.exit_k = k if self.exit_k is None else torch.cat([self.exit_k, k], dim=1)
            self.exit_v = v if self.exit_v is None else torch.cat([self.exit_v, v], dim=1)
        self.length += 1
        for t, slot in enumerate(self.slots):  # iterations this token did not run: no entry
            have = 0 if slot is None else slot.shape[1]
            if have < self.length:
                pad = torch.full((k.shape[0], self.length - have), -1, dtype=torch.long, device=k.device)
                self.slots[t] = pad if slot is None else torch.cat([slot, pad], dim=1)

    def nbytes(self) -> int:
        """Bytes of stored keys and values (index tables excluded)."""
        total = 0 if self.exit_k is None else self.exit_k.nbytes + self.exit_v.nbytes
        for k, v in zip(self.iter_k, self.iter_v):
            if k is not None:
                total += k.nbytes + v.nbytes
        return total

    def entries(self) -> int:
        """Stored key/value entries (token × iteration), exit entries included."""
        n = 0 if self.exit_k is None else self.exit_k.shape[0] * self.exit_k.shape[1]
        return n + sum(0 if k is None else k.shape[0] for k in self.iter_k)


@dataclass
class DecodeState:
    prelude: list[LayerCache]
    core: AllocationAwareCache
    coda: list[LayerCache]
    length: int = 0
    exit_depths: list[Tensor] = field(default_factory=list)  # per step (b,)


def _kv(model, block: Block, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rotated query and key and the value of one new token x (b, 1, d) at positions pos
    (b, 1). One rotation serves query and key (as in the forward without hooks): in a
    graphed decode step every rotation is a handful of small kernels and two table gathers."""
    return block.attn.project_rotated(block.ln_attn(x), model.rotary, pos)


def no_hook(name: str, value: Tensor) -> Tensor:  # decoding fires no hooks
    return value


def attend_one(q: Tensor, keys: Tensor, values: Tensor, visible: Tensor | None = None) -> Tensor:
    """Attention of one new query per sequence, q (b, 1, h, e), over keys/values (b, L, h, e):
    all of them, or those where ``visible`` (L,) is True. Returns z (b, 1, h, e).

    In float32 it is written out (:func:`written_one`): SDPA's float32 kernel for a single
    query (memory-efficient attention) took 31–36 µs a call over 256 keys on the H200,
    about 30 % of a graphed decode step's GPU time, and the graphed step is 1.17–1.23×
    faster without it. In bf16, SDPA's cuDNN kernel is the faster one (:func:`sdpa_one`;
    measured side by side: docs/benchmarks.md, "Where a decode step goes")."""
    one = written_one if keys.dtype == torch.float32 else sdpa_one
    return one(q, keys, values, visible)


def written_one(q: Tensor, keys: Tensor, values: Tensor, visible: Tensor | None = None) -> Tensor:
    """:func:`attend_one` as two products and a softmax in float32."""
    scores = torch.einsum("bqhe,bkhe->bhqk", q, keys).float() * q.shape[-1] ** -0.5
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhqk,bkhe->bqhe", scores.softmax(dim=-1).to(values.dtype), values)


def sdpa_one(q: Tensor, keys: Tensor, values: Tensor, visible: Tensor | None = None) -> Tensor:
    """:func:`attend_one` through SDPA's fused kernels."""
    mask = None if visible is None else visible[None, None, None, :]
    return F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                          attn_mask=mask).transpose(1, 2)


def _finish(block: Block, x: Tensor, q: Tensor, keys: Tensor, values: Tensor, visible: Tensor | None = None
            ) -> Tensor:
    """Finish a layer for one new token x (b, 1, d) whose query q attends over keys/values
    (b, L, h, e): all of them, or (static buffers) those where ``visible`` (L,) is True."""
    z = attend_one(q, keys, values, visible)
    x = x + block.attn.W_o(rearrange(z, "b p h e -> b p (h e)"))
    return x + block.mlp(block.ln_mlp(x))


def _plain_layer(model, block: Block, cache: LayerCache, x: Tensor, pos: Tensor) -> Tensor:
    q, k, v = _kv(model, block, x, pos)
    keys, values = cache.append(k, v)
    return _finish(block, x, q, keys, values)


def new_state(model, *, full_cache: bool = False) -> DecodeState:
    cfg = model.cfg
    if cfg.n_core != 1:
        raise AniraError("decoding with the allocation-aware cache needs n_core == 1")
    if model.policy.needs_full_distribution():
        raise AniraError(
            f"policy {model.policy.name!r} with a full-distribution rule cannot decide online; "
            "use a threshold rule to decode"
        )
    return DecodeState(
        prelude=[LayerCache() for _ in range(cfg.n_prelude)],
        core=AllocationAwareCache(cfg.max_iters, full=full_cache),
        coda=[LayerCache() for _ in range(cfg.n_coda)],
    )


def no_readout(state: Tensor) -> Tensor:
    """``LoopContext.readout`` while decoding: refused. In the full forward the readout runs
    the Coda over every token's *current* state, attending to the earlier tokens' states at
    the same iteration; a decode step has only the new token's state (the Coda's cache holds
    the earlier tokens' exit states), so the logits, and a policy's decision on them, would
    silently differ from ``model(tokens)``."""
    raise AniraError("decoding does not support a policy that reads the Coda's logits inside the loop "
                     "(ctx.readout, e.g. exit-kl / exit-entropy): run the whole sequence with model(tokens)")


@torch.no_grad()
def step(model, state: DecodeState, token: Tensor) -> tuple[Tensor, Tensor]:
    """Feed one token per sequence (b,); returns next-token logits (b, V) and its exit depth (b,)."""
    cfg = model.cfg
    if state.length >= cfg.max_len:
        raise AniraError(f"sequence length would exceed max_len {cfg.max_len}")
    token = model.check_tokens(token.reshape(-1, 1))
    b = token.shape[0]
    pos = torch.full((b, 1), state.length, dtype=torch.long, device=token.device)
    x = model.embed(token)
    for block, cache in zip(model.prelude_blocks, state.prelude):
        x = _plain_layer(model, block, cache, x, pos)
    h = x
    ctx = LoopContext(max_iters=cfg.max_iters, stochastic=False, readout=no_readout, positions=pos, tokens=token,
                      history=False)  # decoding never asks for q
    pstate = model.policy.begin(h, ctx, no_hook)
    running = torch.ones(b, dtype=torch.bool, device=h.device)
    core = model.core_blocks[0]
    depth = torch.zeros(b, dtype=torch.long, device=h.device)
    for t in range(cfg.max_iters):
        if not bool(running.any()):
            if state.core.full:  # the full cache stores every iteration anyway
                _, k, v = _kv(model, core, h, pos)
                state.core.store_iteration(t, k, v, running)
            continue
        q, k, v = _kv(model, core, h, pos)
        state.core.store_iteration(t, k, v, running)
        served = state.core.served(t)
        keys = k if served is None else torch.cat([served[0], k], dim=1)
        values = v if served is None else torch.cat([served[1], v], dim=1)
        candidate = _finish(core, h, q, keys, values)
        a = running[:, None, None].to(h.dtype)
        h = a * candidate + (1 - a) * h
        depth += running.long()
        pstate, keep = model.policy.step(pstate, h, t, ctx, no_hook)
        running = running & (keep[:, 0] > 0.5)
    if state.core.full:
        state.core.store_exit(h, h)  # nothing kept: every iteration is already stored
    else:
        _, k_exit, v_exit = _kv(model, core, h, pos)  # the exit state's entry
        state.core.store_exit(k_exit, v_exit)
    x = model.policy.readout_state(pstate, h)
    for block, cache in zip(model.coda_blocks, state.coda):
        x = _plain_layer(model, block, cache, x, pos)
    logits = model.unembed(model.ln_final(x))[:, 0]
    state.length += 1
    state.exit_depths.append(depth)
    return logits, depth


@torch.no_grad()
def teacher_forced(model, tokens: Tensor, *, full_cache: bool = False) -> tuple[Tensor, Tensor, DecodeState]:
    """Step through ``tokens`` (b, n); returns logits (b, n, V), exit depths (b, n), the state."""
    tokens = model.check_tokens(tokens)
    state = new_state(model, full_cache=full_cache)
    logits, depths = [], []
    for j in range(tokens.shape[1]):
        lg, d = step(model, state, tokens[:, j])
        logits.append(lg)
        depths.append(d)
    return torch.stack(logits, 1), torch.stack(depths, 1), state


@torch.no_grad()
def generate(model, prompt: Tensor, max_new_tokens: int, *, full_cache: bool = False) -> tuple[Tensor, DecodeState]:
    """Greedy decoding: returns prompt + generated tokens (b, n + max_new_tokens)."""
    if max_new_tokens < 0:
        raise AniraError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompt = model.check_tokens(prompt)
    state = new_state(model, full_cache=full_cache)
    out = [prompt]
    logits = None
    for j in range(prompt.shape[1]):
        logits, _ = step(model, state, prompt[:, j])
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)
        out.append(nxt[:, None])
        logits, _ = step(model, state, nxt)
    return torch.cat(out, dim=1), state
