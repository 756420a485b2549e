"""Llama-style Transformer layers (RMSNorm pre-norm, rotary positions, SwiGLU,
causal attention, no biases) and the hook points that observe them.

Weights and hook points live in separate modules on purpose: the core's weights
are shared by every iteration, but each iteration owns its own hook points
(``loop.{t}.core.{l}.attn.hook_q``, ...), so a cache never overwrites one
iteration with the next.

Einsum letters: b batch, p query position, k key position, h head,
d model width, e head width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from anira.config import ModelConfig


def hook(point: HookPoint | None, x: Tensor) -> Tensor:
    """Pass ``x`` through a hook point, or straight through when hooks are bypassed."""
    return x if point is None else point(x)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in float32 for stability under bf16 autocast; x·rsqrt(mean(x²) + eps)
        # (fused on a GPU: one kernel instead of five)
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class Rotary(nn.Module):
    """Rotary position tables (half-split convention), built once for max_len.

    Dimension j < e/2 pairs with j + e/2; the pair turns by position·base^(−2j/e). The
    tables are full width so that the rotation is two products and a sum over whole rows:
    x·cos + partner(x)·sin_signed, where partner swaps the two halves and sin_signed carries
    the rotation's minus sign on the first half. That is the same arithmetic, value for
    value, as x1·cos − x2·sin, x1·sin + x2·cos on the halves, in 4 kernels instead of 7 on
    a float32 input."""

    def __init__(self, d_head: int, max_len: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (pos, e/2)
        self.register_buffer("cos", torch.cat([angles.cos(), angles.cos()], -1), persistent=False)  # (pos, e)
        self.register_buffer("sin_signed", torch.cat([-angles.sin(), angles.sin()], -1), persistent=False)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Rotate ``x`` of shape (b, p, h, e); ``positions`` (b, p) default 0..p-1."""
        if positions is None:
            cos = self.cos[: x.shape[1]][None, :, None, :]
            sin = self.sin_signed[: x.shape[1]][None, :, None, :]
        else:
            cos = self.cos[positions][:, :, None, :]
            sin = self.sin_signed[positions][:, :, None, :]
        # in float32, tables included: a model cast to bf16 holds bf16 tables (widening is
        # exact), and a product of mixed dtypes would add a cast per element
        wide = x.float()
        x1, x2 = wide.chunk(2, dim=-1)
        out = wide * cos.float() + torch.cat([x2, x1], dim=-1) * sin.float()
        return out.type_as(x)


@dataclass(frozen=True)
class Segments:
    """Several examples packed along each row (anira/packing.py): every token's position
    within its own example (b, p), and which keys each query may attend (b, 1, p, p):
    its own example's, up to itself."""

    positions: Tensor
    allowed: Tensor

    @classmethod
    def from_ids(cls, ids: Tensor) -> Segments:
        """From segment ids (b, p): non-decreasing along each row, one run per example."""
        p = ids.shape[1]
        index = torch.arange(p, device=ids.device)
        starts = torch.ones_like(ids, dtype=torch.bool)
        starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
        first = torch.where(starts, index, 0).cummax(dim=1).values  # where each token's run began
        same = ids[:, :, None] == ids[:, None, :]
        return cls(positions=index - first, allowed=(same & (index[:, None] >= index[None, :]))[:, None])


class AttnHooks(nn.Module):
    """Hook points inside one attention layer at one place in the network."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_q = HookPoint()  # (b, p, h, e) before rotary
        self.hook_k = HookPoint()  # (b, k, h, e) before rotary
        self.hook_v = HookPoint()  # (b, k, h, e)
        self.hook_attn_scores = HookPoint()  # (b, h, p, k) masked, before softmax
        self.hook_pattern = HookPoint()  # (b, h, p, k) softmax
        self.hook_z = HookPoint()  # (b, p, h, e) pattern-weighted values


class LayerHooks(nn.Module):
    """Hook points around one Transformer layer at one place in the network."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint()  # (b, p, d)
        self.attn = AttnHooks()
        self.hook_attn_out = HookPoint()  # (b, p, d)
        self.hook_resid_mid = HookPoint()  # (b, p, d)
        self.hook_mlp_out = HookPoint()  # (b, p, d)
        self.hook_resid_post = HookPoint()  # (b, p, d)


#: the separate projections of checkpoints written before the fused layout (2026-12-02):
#: fused parameter -> its parts in output order
LEGACY_PARTS = {
    "attn.W_qkv.weight": ("attn.W_q.weight", "attn.W_k.weight", "attn.W_v.weight"),
    "mlp.W_gate_up.weight": ("mlp.W_gate.weight", "mlp.W_up.weight"),
}


def merge_legacy_projections(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with the old separate q/k/v and gate/up weights concatenated into
    the fused parameters (any prefix); other entries pass unchanged."""
    out = dict(tensors)
    for fused, parts in LEGACY_PARTS.items():
        first = "." + parts[0]
        for key in [k for k in tensors if k.endswith(first) or k == parts[0]]:
            prefix = key[: len(key) - len(parts[0])]
            names = [prefix + part for part in parts]
            if all(name in out for name in names) and prefix + fused not in out:
                out[prefix + fused] = torch.cat([out.pop(name) for name in names])
    return out


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        # queries, keys and values stacked along the outputs (rows 0..d-1 queries, then
        # keys, then values): one matrix product computes all three, and as a single
        # parameter no derived copy of the weights can go stale
        self.W_qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.W_o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values (b, p, h, e) of x (b, p, d), from one matrix product."""
        q, k, v = self.W_qkv(x).chunk(3, dim=-1)
        return tuple(rearrange(t, "b p (h e) -> b p h e", h=self.n_heads) for t in (q, k, v))

    def forward(self, x: Tensor, rotary: Rotary, hooks: AttnHooks | None, cache: RowCache | None = None,
                segments: Segments | None = None) -> Tensor:
        """Causal self-attention over x (b, p, d); with ``cache``, every rotated key and
        value is also stored there (the fast path's iterations in which every token runs);
        with ``segments``, within each packed example only."""
        positions = None if segments is None else segments.positions
        if hooks is None:
            q, k, v = self.project_rotated(x, rotary, positions)
        else:
            q, k, v = self.project(x)
            q = rotary(hook(hooks.hook_q, q), positions)
            k = rotary(hook(hooks.hook_k, k), positions)
            v = hook(hooks.hook_v, v)
        if cache is not None:
            cache.write_all(k, v)
        z = attend(q, k, v, hooks, allowed=None if segments is None else segments.allowed)
        return self.W_o(rearrange(z, "b p h e -> b p (h e)"))

    def project_rotated(self, x: Tensor, rotary: Rotary, positions: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated queries and keys and the values of x (b, p, d) at ``positions``: the
        queries and keys sit side by side in the fused product's output, so one
        rotation serves both (no hooks can have replaced either)."""
        qkv = self.W_qkv(x)
        d = qkv.shape[-1] // 3
        qk = rotary(rearrange(qkv[..., : 2 * d], "b p (h e) -> b p h e", h=2 * self.n_heads), positions)
        v = rearrange(qkv[..., 2 * d:], "b p (h e) -> b p h e", h=self.n_heads)
        return qk[:, :, : self.n_heads], qk[:, :, self.n_heads:], v

    def forward_rows(self, x: Tensor, run: Packed, rotary: Rotary, cache: RowCache,
                     refresh: Packed | None = None) -> Tensor:
        """Attention for a subset of tokens. x (b, m [+ r], d) are the normalised states
        of the ``run`` tokens, followed by those of the ``refresh`` tokens when given:
        every row's key and value are written into ``cache`` (refresh rows first), then
        the run tokens attend causally over every cached key. One projection serves
        both sets of rows (refresh rows' queries are computed and dropped: cheaper than
        a second product); refresh rows get no output. Returns (b, m, d)."""
        m = run.pos.shape[1]
        positions = run.pos if refresh is None else torch.cat([run.pos, refresh.pos], 1)
        q, k, v = self.project_rotated(x, rotary, positions)
        q = q[:, :m]
        if refresh is not None:
            cache.write(refresh, k[:, m:], v[:, m:])
        cache.write(run, k[:, :m], v[:, :m])
        q = q.to(cache.k.dtype)
        n = cache.k.shape[1]
        if 2 * m >= n:
            # half the tokens or more run: the causal kernel over every position (rows of
            # halted tokens computed and dropped) skips the upper triangle and costs
            # less than the masked kernel over m rows and every key
            q_all = put_rows(torch.zeros_like(cache.k), run.flat, q, in_place=True)
            z = take_rows(attend(q_all, cache.k, cache.v, None), run.flat, m)
        else:
            allowed = run.pos[:, :, None] >= torch.arange(n, device=x.device)  # (b, m, n)
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), cache.k.transpose(1, 2), cache.v.transpose(1, 2),
                attn_mask=allowed[:, None],
            ).transpose(1, 2)
        return self.W_o(rearrange(z, "b m h e -> b m (h e)"))


def _wants_pattern(hooks: AttnHooks | None) -> bool:
    """Materialise the attention pattern only when someone listens to it."""
    if hooks is None:
        return False
    return bool(hooks.hook_pattern.fwd_hooks or hooks.hook_attn_scores.fwd_hooks
                or hooks.hook_pattern.bwd_hooks or hooks.hook_attn_scores.bwd_hooks)


def attend(q: Tensor, k: Tensor, v: Tensor, hooks: AttnHooks | None,
           q_pos: Tensor | None = None, allowed: Tensor | None = None) -> Tensor:
    """Causal attention. q (b, p, h, e) at positions ``q_pos`` (p,) [default 0..p-1],
    k and v (b, k, h, e) at positions 0..k-1; ``allowed`` (b, 1, p, k), when given,
    replaces the causal mask (packed rows: :class:`Segments`). Returns z (b, p, h, e)."""
    n_q, n_k = q.shape[1], k.shape[1]
    if allowed is None and q_pos is None and n_q == n_k and not _wants_pattern(hooks):
        # is_causal lets SDPA pick its flash kernel (an explicit mask rules it out); same function
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        ).transpose(1, 2)
        return hook(hooks and hooks.hook_z, z)
    if allowed is None:
        if q_pos is None:
            q_pos = torch.arange(n_k - n_q, n_k, device=q.device)
        allowed = q_pos[:, None] >= torch.arange(n_k, device=q.device)[None, :]  # (p, k)
    if _wants_pattern(hooks):
        scale = q.shape[-1] ** -0.5
        scores = torch.einsum("bphe,bkhe->bhpk", q.float(), k.float()) * scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        scores = hook(hooks.hook_attn_scores, scores)
        pattern = hook(hooks.hook_pattern, scores.softmax(dim=-1))
        z = torch.einsum("bhpk,bkhe->bphe", pattern, v.float()).type_as(v)
    else:
        # fused kernel; same function as the explicit branch above
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed
        ).transpose(1, 2)
    return hook(hooks and hooks.hook_z, z)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # gate rows first, then up rows: one product for both
        self.W_gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)
        self.W_down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.W_gate_up(x).chunk(2, dim=-1)
        return self.W_down(F.silu(gate) * up)


class Block(nn.Module):
    """One pre-norm Transformer layer (weights only; hook points are passed in)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_attn = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ln_mlp = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # state dicts written before the fused layout keep separate projections
        for fused, parts in LEGACY_PARTS.items():
            names = [prefix + part for part in parts]
            if prefix + fused not in state_dict and all(name in state_dict for name in names):
                state_dict[prefix + fused] = torch.cat([state_dict.pop(name) for name in names])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, rotary: Rotary, hooks: LayerHooks | None, cache: RowCache | None = None,
                segments: Segments | None = None) -> Tensor:
        """The layer on every token; with ``cache``, its keys and values are stored too;
        with ``segments``, attention stays within each packed example."""
        x = hook(hooks and hooks.hook_resid_pre, x)
        attn_out = hook(hooks and hooks.hook_attn_out,
                        self.attn(self.ln_attn(x), rotary, hooks and hooks.attn, cache, segments))
        x = hook(hooks and hooks.hook_resid_mid, x + attn_out)
        mlp_out = hook(hooks and hooks.hook_mlp_out, self.mlp(self.ln_mlp(x)))
        return hook(hooks and hooks.hook_resid_post, x + mlp_out)

    def forward_rows(self, x: Tensor, run: Packed, rotary: Rotary, cache: RowCache,
                     refresh: tuple[Tensor, Packed] | None = None) -> Tensor:
        """The layer on the packed tokens x (b, m, d) at ``run``; ``refresh`` = (states
        (b, r, d), packing) of tokens that only get their keys and values recomputed
        (see :meth:`Attention.forward_rows`)."""
        both = x if refresh is None else torch.cat([x, refresh[0]], 1)
        x = x + self.attn.forward_rows(self.ln_attn(both), run, rotary, cache, refresh and refresh[1])
        return x + self.mlp(self.ln_mlp(x))


def flat_rows(pos: Tensor, n: int) -> Tensor:
    """Row indices into a (b·n, ...) view for positions ``pos`` (b, m): shape (b·m,)."""
    return (pos + torch.arange(pos.shape[0], device=pos.device)[:, None] * n).reshape(-1)


def take_rows(x: Tensor, flat: Tensor, m: int) -> Tensor:
    """Rows of x (b, n, ...) at the flat indices: (b, m, ...). Whole-row copies
    (index_select), several times faster on a CPU than an element-wise gather."""
    b, n = x.shape[:2]
    return x.reshape(b * n, *x.shape[2:]).index_select(0, flat).view(b, m, *x.shape[2:])


def put_rows(x: Tensor, flat: Tensor, rows: Tensor, *, in_place: bool = False) -> Tensor:
    """x (b, n, ...) with the rows at the flat indices replaced by ``rows`` (b, m, ...);
    out of place (differentiable) unless ``in_place``."""
    b, n = x.shape[:2]
    src = rows.reshape(-1, *x.shape[2:])
    if in_place:
        x.view(b * n, *x.shape[2:]).index_copy_(0, flat, src)
        return x
    return x.reshape(b * n, *x.shape[2:]).index_copy(0, flat, src).view_as(x)


@dataclass(frozen=True)
class Packed:
    """Where packed rows (b, m, ...) come from: token positions (b, m), the flat row
    index into a (b·n, ...) view (b·m,), which rows are real tokens (b, m; the rest is
    padding), and whether all are (known without a device sync)."""

    pos: Tensor
    flat: Tensor
    valid: Tensor
    all_valid: bool


@dataclass
class RowCache:
    """Rotated keys and values (b, n, h, e) of every token for one core layer, updated
    in place for the tokens that run (inference) or out of place (with gradients)."""

    k: Tensor
    v: Tensor
    #: set when k and v are CUDA graphs' static buffers (RecurrentTransformer.row_cache):
    #: the key of their set and the set's buffers
    graph_key: tuple | None = None
    graph_buffers: dict[str, Tensor] | None = None
    #: with planned exit depths (b, n): the depths, and once the second iteration asks
    #: for them (so their kernels overlap the first), each sequence's tokens sorted by
    #: depth, deepest first (b, n), and for every iteration t the counts (running,
    #: exiting at t) per sequence (D, 2, b): an iteration's packing is then a slice
    depths: Tensor | None = None
    order: Tensor | None = None
    counts: Tensor | None = None
    #: the state a graphed iteration last returned, its version and the graph store's
    #: run count then: if the next iteration gets that very tensor unchanged and no
    #: graph ran in between, the static buffer still holds it (no copy needed)
    last_state: tuple[Tensor, int | None, int] | None = None

    def _in_place(self, k: Tensor, v: Tensor) -> bool:
        # in inference the cache is private to one forward pass (and may be a CUDA
        # graph's buffers): update it in place; with gradients, out of place so
        # autograd can differentiate through the fast path
        return not (torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self.k.requires_grad))

    def write_all(self, k: Tensor, v: Tensor) -> None:
        """Store the keys and values (b, n, h, e) of every token."""
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        if self._in_place(k, v):
            self.k.copy_(k)
            self.v.copy_(v)
        else:
            self.k, self.v = k, v

    def write(self, rows: Packed, k: Tensor, v: Tensor) -> None:
        """Store the keys and values (b, m, h, e) of the packed rows; padding rows
        rewrite what is there."""
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)  # under autocast projections may be bf16
        m = rows.pos.shape[1]
        if not rows.all_valid:
            keep = rows.valid[..., None, None]
            k = torch.where(keep, k, take_rows(self.k, rows.flat, m))
            v = torch.where(keep, v, take_rows(self.v, rows.flat, m))
        in_place = self._in_place(k, v)
        self.k = put_rows(self.k, rows.flat, k, in_place=in_place)
        self.v = put_rows(self.v, rows.flat, v, in_place=in_place)
