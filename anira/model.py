"""The recurrent Transformer: Prelude -> shared core looped up to D times -> Coda.

Per-token exit with freezing (PAPER.md §2): with candidate h~(d) = R(h(d-1)),

    h_i(d) = a_i(d)·h~_i(d) + (1 - a_i(d))·h_i(d-1),   a_i(d) = 1[d <= d_i]

so after its exit depth a token's state, and so its key and value, stop
changing while it stays visible to attention. Every token runs iteration 1.
The Coda reads each token's exit state.

Training (``model.train()``) unrolls all D iterations as a static graph and the
policy samples exits. Inference (``model.eval()``) uses the policy's
deterministic rule and stops the loop once every token has exited.

Hook names (see docs/hooks.md for shapes): ``hook_embed``, ``prelude.{l}.*``,
``halt.hook_*`` (early-policy signals), ``loop.{t}.hook_resid_pre``,
``loop.{t}.core.{l}.*``, ``loop.{t}.hook_resid_post`` (after freezing),
``loop.{t}.hook_running``, ``loop.{t}.halt.hook_*``, ``coda.hook_exit_state``,
``coda.hook_exit_depth``, ``coda.hook_expected_depth``, ``coda.{l}.*``,
``hook_logits``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.graphs import GRAPH_MODES, IterationGraphs, autocast_key, row_bucket
from anira.halting import HaltingPolicy, LoopContext, build_policy, expected_depth
from anira.layers import Block, LayerHooks, Packed, RMSNorm, RowCache, Rotary, flat_rows, hook, put_rows, take_rows
from anira.lens import LensMixin

#: default of ``RecurrentTransformer.fast_path_min_tokens["cuda"]`` (H200 sweep, docs/benchmarks.md)
FAST_PATH_MIN_TOKENS_CUDA = 2048


@dataclass
class ModelOutput:
    """Everything one forward pass produced."""

    logits: Tensor  # (b, p, vocab)
    exit_depth: Tensor  # (b, p) long, 1..D: iterations each token ran
    q: Tensor  # (b, p, D) the policy's exit-depth distribution
    expected_depth: Tensor  # (b, p) Σ_d d·q(d)
    running: Tensor  # (D, b, p) bool: token computed at iteration t
    iterations_run: int  # iterations the loop actually executed (< D if it stopped early)
    state: dict[str, Any] = field(default_factory=dict)  # the policy's final state

    @property
    def execution_cost(self) -> Tensor:
        """Σ_d |A_d| per sequence: token-iterations executed, shape (b,)."""
        return self.running.sum(dim=(0, 2))


class SignalHooks(nn.Module):
    """One hook point per halting signal a policy emits (``hook_<name>``)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.signal_names = list(names)
        for name in names:
            self.add_module(f"hook_{name}", HookPoint())

    def point(self, name: str) -> HookPoint:
        if name not in self.signal_names:
            raise AniraError(f"policy emitted undeclared signal {name!r}; declared: {self.signal_names}")
        return getattr(self, f"hook_{name}")


class StageHooks(nn.Module):
    """Hook points of a stack of layers (``{l}.``) plus extra named points."""

    def __init__(self, n_layers: int, extra: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.n_layers = n_layers
        for l in range(n_layers):
            self.add_module(str(l), LayerHooks())
        for name in extra:
            self.add_module(name, HookPoint())

    def __getitem__(self, l: int) -> LayerHooks:
        return getattr(self, str(l))


class IterationHooks(nn.Module):
    """Every hook point owned by one iteration ``t`` of the loop (``loop.{t}.``)."""

    def __init__(self, n_core: int, signal_names: list[str]) -> None:
        super().__init__()
        self.hook_running = HookPoint()  # (b, p) bool: still computing at t
        self.hook_resid_pre = HookPoint()  # (b, p, d)
        self.core = StageHooks(n_core)
        self.hook_resid_post = HookPoint()  # (b, p, d) after freezing
        self.halt = SignalHooks(signal_names)


class RecurrentTransformer(LensMixin, HookedRootModule):
    """A looped, weight-shared Transformer with per-token adaptive depth.

    TransformerLens conveniences (``run_with_cache`` returning an ActivationCache,
    ``to_tokens`` / ``to_string``, ``hook.layer()``) come from :class:`LensMixin`."""

    def __init__(self, cfg: ModelConfig, policy: HaltingPolicy) -> None:
        super().__init__()
        self.cfg = cfg
        # -- weights
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.d_head, cfg.max_len, cfg.rope_base)
        self.prelude_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_prelude))
        self.core_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_core))
        self.coda_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_coda))
        self.ln_final = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.policy = policy
        # -- hook points (no weights)
        self.hook_embed = HookPoint()  # (b, p, d)
        self.prelude = StageHooks(cfg.n_prelude)
        self.halt = SignalHooks(list(policy.begin_signals))
        self.loop = nn.ModuleList(IterationHooks(cfg.n_core, list(policy.step_signals)) for _ in range(cfg.max_iters))
        self.coda = StageHooks(cfg.n_coda, extra=("hook_exit_state", "hook_exit_depth", "hook_expected_depth"))
        self.hook_logits = HookPoint()  # (b, p, vocab)
        #: when False every hook point is skipped (benchmarks compare against this)
        self.hook_points_enabled = True
        #: inference stops the loop once every token has exited
        self.stop_when_all_exited = True
        #: inference computes only the running tokens (see :meth:`iterate_rows`)
        self.fast_inference = True
        #: per device type, the fewest tokens (batch x positions) for which inference skips
        #: halted tokens; smaller batches take the masked path (the same function). On a
        #: GPU a small batch's iteration costs the same whatever its row count, and the
        #: fast path's extra kernels make it slower (docs/benchmarks.md, H200 sweep)
        self.fast_path_min_tokens: dict[str, int] = {"cuda": FAST_PATH_MIN_TOKENS_CUDA}
        #: inference takes early policies' exit depths as a plan (HaltingPolicy.planned_exit_depths)
        self.use_planned_depths = True
        #: inference runs each iteration as a CUDA graph ("auto": on CUDA; "off"; "static":
        #: the graphs' static buffers without recording, on any device, for tests)
        self.loop_graphs = "auto"
        self._graph_store: IterationGraphs | None = None
        self._init_weights()
        self.setup()
        # the core-internal hook points of every iteration, checked before each forward
        self._core_points = [p for it in self.loop for p in it.core.modules() if isinstance(p, HookPoint)]

    def _init_weights(self) -> None:
        deciders = self._decider_linears()
        for module in self.modules():
            if isinstance(module, nn.Linear) and module not in deciders:
                nn.init.normal_(module.weight, std=self.cfg.init_std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.cfg.init_std)

    def _decider_linears(self) -> set[nn.Module]:
        # deciders keep their own (PyTorch default) initialisation
        return {m for m in self.policy.modules() if isinstance(m, nn.Linear)}

    # ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _h(self, point: nn.Module | None) -> Any:
        return point if self.hook_points_enabled else None

    def check_tokens(self, tokens: Tensor) -> Tensor:
        """Validate token ids; returns a (b, p) long tensor on the model's device."""
        if not isinstance(tokens, Tensor):
            tokens = torch.as_tensor(tokens)
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise AniraError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2:
            raise AniraError(f"tokens must have shape (batch, pos), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.max_len:
            raise AniraError(f"sequence length {tokens.shape[1]} exceeds max_len {self.cfg.max_len}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.cfg.vocab_size)][0].item()
            raise AniraError(f"token id {bad} is outside the vocabulary of size {self.cfg.vocab_size}")
        return tokens.long().to(self.device)

    # ---------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, *, exit_depths: Tensor | None = None) -> ModelOutput:
        """Run the model. ``exit_depths`` (b, p) in 1..D forces each token's depth
        (the policy still computes its signals and q)."""
        tokens = self.check_tokens(tokens)
        h0 = self.run_prelude(tokens)
        forced = None if exit_depths is None else self._check_depths(exit_depths, tokens.shape)
        if forced is None and not self.training and self.policy.needs_full_distribution():
            with torch.no_grad():  # scouting pass, hooks off: choose depths from the full q
                enabled, self.hook_points_enabled = self.hook_points_enabled, False
                try:
                    all_d = torch.full(tokens.shape, self.cfg.max_iters, device=self.device)
                    scout = self.run_loop(h0, forced=all_d)
                finally:
                    self.hook_points_enabled = enabled
            forced = self.policy.depths_from_distribution(scout.q)
        return self.run_loop(h0, forced=forced)

    def _check_depths(self, depths: Tensor, shape: torch.Size) -> Tensor:
        depths = torch.as_tensor(depths, device=self.device).long()
        if depths.shape != shape:
            raise AniraError(f"exit_depths has shape {tuple(depths.shape)}, expected {tuple(shape)}")
        if depths.numel() and (depths.min() < 1 or depths.max() > self.cfg.max_iters):
            raise AniraError(f"exit_depths must lie in 1..{self.cfg.max_iters}")
        return depths

    def run_prelude(self, tokens: Tensor) -> Tensor:
        x = hook(self._h(self.hook_embed), self.embed(tokens))  # (b, p, d)
        for l, block in enumerate(self.prelude_blocks):
            x = block(x, self.rotary, self._h(self.prelude[l]))
        return x

    def iterate(self, h: Tensor, t: int, active: Tensor) -> Tensor:
        """Exactly one iteration on every token (the masked path): the core, then freezing.
        ``active`` (b, p) is a_i(t+1) (0/1, possibly with a straight-through gradient)."""
        hooks = self._h(self.loop[t])
        h = hook(hooks and hooks.hook_resid_pre, h)
        if self._graphs_usable(h) and not self._core_hooked():
            h_next = self._graphed_dense(h, active)
        else:
            h_next = self._dense_body(h, active, hooks)
        return hook(hooks and hooks.hook_resid_post, h_next)

    def _dense_body(self, h: Tensor, active: Tensor, hooks: IterationHooks | None) -> Tensor:
        candidate = h
        for l, block in enumerate(self.core_blocks):
            candidate = block(candidate, self.rotary, hooks and hooks.core[l])
        a = active[..., None].to(h.dtype)
        return a * candidate + (1 - a) * h  # exact for a in {0, 1}

    def _graphed_dense(self, h: Tensor, active: Tensor) -> Tensor:
        key = ("dense", *self._graph_key(h), active.dtype)
        bufs = self.graphs.buffers(key, lambda: {
            "h": torch.empty_like(h), "active": torch.empty_like(active), "out": torch.empty_like(h)})
        bufs["h"].copy_(h)
        bufs["active"].copy_(active)
        self.graphs.run(key, (), lambda: bufs["out"].copy_(self._dense_body(bufs["h"], bufs["active"], None)),
                        h.device)
        return bufs["out"].clone()

    def iterate_rows(
        self, h: Tensor, t: int, running: Tensor, refresh: Tensor | None, cache: RowCache,
        layouts: tuple[RowLayout, RowLayout | None] | None = None,
    ) -> Tensor:
        """Exactly one iteration computing only the running tokens (the fast path).

        Same function as :meth:`iterate` with hard exits, for a one-layer core: a
        halted token's key and value are those of its exit state, so they are
        computed once, at the iteration after it exits (``refresh``), and then
        served from ``cache`` (from :meth:`row_cache`). Running tokens are gathered
        into rows (b, m, d), m = the most running tokens of any sequence (rounded
        up to a bucket when the iteration runs as a CUDA graph). ``layouts`` are
        the row counts of ``running`` and ``refresh`` if already known (else read
        here, with one device synchronisation).
        """
        if layouts is None:
            layouts = iteration_layouts(running, refresh)
        run_layout, refresh_layout = layouts
        if refresh is None or refresh_layout is None or refresh_layout.most == 0:
            refresh, refresh_layout = None, None
        hooks = self._h(self.loop[t])
        h = hook(hooks and hooks.hook_resid_pre, h)
        counts = self._planned_counts(cache, t) if cache.depths is not None and t > 0 else None
        if cache.graph_key is not None:
            h = self._graphed_rows(h, running, refresh, cache, run_layout, refresh_layout, counts)
        else:
            h = self._rows_body(h, running, refresh, cache, (run_layout.rows, run_layout.full),
                                refresh_layout and (refresh_layout.rows, refresh_layout.full), counts=counts)
        return hook(hooks and hooks.hook_resid_post, h)

    def _rows_body(self, h: Tensor, running: Tensor, refresh: Tensor | None, cache: RowCache,
                   run_rows: tuple[int, bool], refresh_rows: tuple[int, bool] | None,
                   in_place: bool = False, counts: Tensor | None = None) -> Tensor:
        """The fast iteration on ``h``; ``*_rows`` are (packed row count m, every row real).
        ``in_place``: the running rows are written back into ``h`` itself (a graph's
        static buffer), saving a copy of the whole state. ``counts`` (2, b): this
        iteration's running and exiting tokens per sequence with planned depths, whose
        order ``cache.order`` then holds (the packing is read off it)."""
        if refresh_rows is None and run_rows == (h.shape[1], True):
            # every token runs (the first iteration; fixed depth until the exit):
            # the dense layer, no packing, causal kernel; it also fills the cache
            return self.core_blocks[0](h, self.rotary, None, cache)
        planned = counts is not None
        run = _slice_pack(cache.order, counts[0], *run_rows) if planned else _pack(running, *run_rows)
        rows = take_rows(h, run.flat, run_rows[0])  # (b, m, d)
        extra = None
        if refresh_rows is not None:
            if planned:  # the tokens exiting now sit right after the running ones
                ref = _slice_pack(cache.order, counts[1], *refresh_rows, offset=counts[0])
            else:
                ref = _pack(refresh, *refresh_rows)
            extra = (take_rows(h, ref.flat, refresh_rows[0]), ref)  # their exit states
        x = self.core_blocks[0].forward_rows(rows, run, self.rotary, cache, extra)  # (b, m, d)
        if not run.all_valid:
            x = torch.where(run.valid[..., None], x, rows)  # padding rows stay as they were
        return put_rows(h, run.flat, x, in_place=in_place)

    def _graphed_rows(self, h: Tensor, running: Tensor, refresh: Tensor | None, cache: RowCache,
                      run_layout: RowLayout, refresh_layout: RowLayout | None,
                      counts: Tensor | None) -> Tensor:
        b, n = h.shape[:2]
        # buckets bound the padding of the whole batch (step·b rows at most): fine
        # buckets, hence more distinct recordings, only where padding is costly
        m_run = row_bucket(run_layout.rows, n, step=max(1, 8 // b))
        run_rows = (m_run, run_layout.least == m_run)
        refresh_rows = None
        if refresh is not None and refresh_layout is not None:
            # coarser buckets and always the padding-safe write: refresh counts vary
            # more than running counts, and each distinct key is a recording
            refresh_rows = (row_bucket(refresh_layout.rows, n, step=max(1, 32 // b)), False)
        bufs = cache.graph_buffers
        if not _holds(cache.last_state, h, self.graphs.runs):
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

        self.graphs.run(cache.graph_key, (run_rows, refresh_rows, planned), body, h.device)
        state = bufs["h"].clone()
        cache.last_state = (state, _version(state), self.graphs.runs)
        return state

    def row_cache(self, h0: Tensor, depths: Tensor | None = None) -> RowCache:
        """An empty key/value cache for the fast path over h0's tokens: fresh tensors,
        or, where iterations run as CUDA graphs, the zeroed static buffers. With the
        planned exit ``depths`` (b, n) it also holds their order (see RowCache), and
        the loop must then follow exactly those depths."""
        b, n = h0.shape[:2]
        kv_shape = (b, n, self.cfg.n_heads, self.cfg.d_head)
        if not self._graphs_usable(h0):
            return RowCache(h0.new_zeros(kv_shape), h0.new_zeros(kv_shape), depths=depths)
        key = ("rows", *self._graph_key(h0))
        bufs = self.graphs.buffers(key, lambda: {
            "h": torch.empty_like(h0),
            "k": h0.new_zeros(kv_shape), "v": h0.new_zeros(kv_shape),
            "running": torch.zeros(b, n, dtype=torch.bool, device=h0.device),
            "refresh": torch.zeros(b, n, dtype=torch.bool, device=h0.device),
            "order": torch.zeros(b, n, dtype=torch.long, device=h0.device),
            "counts": torch.zeros(2, b, dtype=torch.long, device=h0.device)})
        bufs["k"].zero_()
        bufs["v"].zero_()
        return RowCache(bufs["k"], bufs["v"], graph_key=key, graph_buffers=bufs, depths=depths)

    def _planned_counts(self, cache: RowCache, t: int) -> Tensor:
        """Iteration t's (running, exiting) counts per sequence (2, b) from the planned
        depths; their order is computed at the first call (iteration 1, after the
        first has been queued) and, for graphs, placed in the static buffer."""
        if cache.counts is None:
            order, cache.counts = _depth_order(cache.depths, self.cfg.max_iters)
            if cache.graph_buffers is not None:
                order = cache.graph_buffers["order"].copy_(order)
            cache.order = order
        return cache.counts[t]

    # -- CUDA graphs of single iterations (anira/graphs.py) ---------------------------
    @property
    def graphs(self) -> IterationGraphs:
        mode = self.loop_graphs
        if self._graph_store is None or self._graph_store.capture != (mode == "auto"):
            self._graph_store = IterationGraphs(capture=mode == "auto")
        return self._graph_store

    def _graphs_usable(self, h: Tensor) -> bool:
        """Iterations run as recorded graphs: inference without gradients, on CUDA
        (``loop_graphs="auto"``) or anywhere in the test mode ``"static"``."""
        mode = self.loop_graphs
        if mode not in GRAPH_MODES:
            raise AniraError(f"loop_graphs must be one of {', '.join(GRAPH_MODES)}, got {mode!r}")
        if mode == "off" or self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return False
        if mode == "static":
            return True
        return h.is_cuda and not torch.cuda.is_current_stream_capturing()

    def _graph_key(self, h: Tensor) -> tuple:
        # graphs read every core weight and the rotary tables at the addresses they had
        # when recorded; inference-mode tensors cannot be updated in place outside it
        # (the fused projections are rebuilt here if stale, never while recording)
        fused = [f.refresh() for block in self.core_blocks for f in (block.attn.qkv, block.mlp.gate_up)]
        tensors = [*self.core_blocks.parameters(), *fused, self.rotary.cos, self.rotary.sin]
        return (tuple(h.shape), h.dtype, h.device, tuple(t.data_ptr() for t in tensors), tensors[0].dtype,
                autocast_key(h.device), torch.is_inference_mode_enabled())

    def _drop_graphs(self) -> None:
        if self._graph_store is not None:
            self._graph_store.clear()
        self._graph_store = None

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(), ...: recordings are stale
        self._drop_graphs()
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> RecurrentTransformer:
        if mode:  # training never replays them: give their memory back
            self._drop_graphs()
        return super().train(mode)

    def __getstate__(self) -> dict[str, Any]:  # copy / pickle: CUDA graphs do not travel
        state = dict(super().__getstate__())
        state["_graph_store"] = None
        return state

    def _core_hooked(self) -> bool:
        return self.hook_points_enabled and any(point.fwd_hooks or point.bwd_hooks for point in self._core_points)

    def uses_fast_path(self, h0: Tensor | None = None) -> bool:
        """Inference skips halted tokens unless someone observes the core's internals
        (then the masked path runs, so every core hook sees every token), or the batch
        h0 (b, p, d) has fewer tokens than ``fast_path_min_tokens`` asks for on its
        device (too few to keep the device busy: skipping rows saves nothing there)."""
        if self.training or not self.fast_inference or self.cfg.n_core != 1:
            # with several core layers a halted token's deeper keys/values still
            # depend on running tokens, so it cannot be skipped exactly
            return False
        if h0 is not None and h0.shape[0] * h0.shape[1] < self.fast_path_min_tokens.get(h0.device.type, 0):
            return False
        return not self._core_hooked()

    def run_loop(self, h0: Tensor, *, forced: Tensor | None = None) -> ModelOutput:
        D = self.cfg.max_iters
        ctx = LoopContext(max_iters=D, stochastic=self.training and forced is None, readout=self.readout)
        state = self.policy.begin(h0, ctx, self._emitter(self.halt))
        if forced is None and not self.training and self.use_planned_depths:
            # early and fixed-depth policies have decided every exit already
            forced = self.policy.planned_exit_depths(state, ctx, h0)
        cont = torch.ones(h0.shape[:2], dtype=h0.dtype, device=h0.device)
        h = h0
        running_masks: list[Tensor] = []
        iterations_run = 0
        fast = self.uses_fast_path(h0)
        # known depths and nobody patching the running masks: every iteration's row
        # layout (and when every token has exited) in one device synchronisation
        plan = None
        if forced is not None and not self.training and not self._running_hooked() \
                and (fast or self.stop_when_all_exited):
            plan = self.plan_layouts(forced)
        cache = self.row_cache(h0, depths=forced if plan is not None else None) if fast else None
        # every state is new before the first iteration: a token a hook keeps from running
        # it still needs its keys and values (from h0) in the cache, as a refresh row
        # (with a plan every token runs the first iteration: nothing to refresh)
        previous = None
        if fast and plan is None:
            previous = torch.ones(h0.shape[:2], dtype=torch.bool, device=h0.device)
        for t in range(D):
            hooks = self._h(self.loop[t])
            running = (t < forced) if forced is not None else cont > 0.5
            running = hook(hooks and hooks.hook_running, running)
            layouts, any_running = None, True
            if fast:
                refresh = None if previous is None else previous & ~running  # exited last iteration
                layouts = plan[t] if plan is not None else iteration_layouts(running, refresh)
                any_running = layouts[0].most > 0
            elif not self.training and self.stop_when_all_exited:
                any_running = plan[t][0].most > 0 if plan is not None else bool(running.any())
            if not self.training and self.stop_when_all_exited and not any_running:
                self._fire_skipped(h, t)
                break
            if fast:
                h = self.iterate_rows(h, t, running, refresh, cache, layouts)
                previous = running
            else:
                active = running.to(h.dtype) if forced is not None else cont * running.to(h.dtype)
                h = self.iterate(h, t, active)
            running_masks.append(running)
            iterations_run += 1
            state, cont = self.policy.step(state, h, t, ctx, self._emitter(self.loop[t].halt))
            cont = cont * running.to(cont.dtype)  # a stopped token never restarts
        while len(running_masks) < D:
            running_masks.append(torch.zeros_like(running_masks[0]))
        running_all = torch.stack(running_masks)  # (D, b, p)
        exit_depth = running_all.sum(0)
        q = self.policy.finish(state, ctx, h0)
        exp_depth = expected_depth(q)
        logits = self.run_coda(self.policy.readout_state(state, h), exit_depth, exp_depth)
        return ModelOutput(
            logits=logits,
            exit_depth=exit_depth,
            q=q,
            expected_depth=exp_depth,
            running=running_all,
            iterations_run=iterations_run,
            state=state,
        )

    def _running_hooked(self) -> bool:
        return self.hook_points_enabled and any(
            it.hook_running.fwd_hooks or it.hook_running.bwd_hooks for it in self.loop)

    def plan_layouts(self, depths: Tensor) -> LayoutPlan:
        """Row layouts of every iteration's running and refresh masks for known depths
        (1..D): running at t is ``t < d``, refresh (exited at the previous iteration)
        is ``d == t``. The counts travel to the host while the first iteration, in
        which every token runs, is already computing (see :class:`LayoutPlan`)."""
        return LayoutPlan(depths, self.cfg.max_iters, self.policy.name)

    def _fire_skipped(self, h: Tensor, t0: int) -> None:
        """Iterations after the loop stopped: every token is frozen, so their
        residual states and running masks are known exactly; report them."""
        if not self.hook_points_enabled:
            return
        none_running = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
        for t in range(t0, self.cfg.max_iters):
            hooks = self.loop[t]
            if t > t0:
                hooks.hook_running(none_running)
            hooks.hook_resid_pre(h)
            hooks.hook_resid_post(h)

    def _emitter(self, signals: SignalHooks):
        enabled = self.hook_points_enabled

        def emit(name: str, value: Tensor) -> Tensor:
            point = signals.point(name)
            return point(value) if enabled else value

        return emit

    def run_coda(self, exit_state: Tensor, exit_depth: Tensor, exp_depth: Tensor) -> Tensor:
        coda = self._h(self.coda)
        x = hook(coda and coda.hook_exit_state, exit_state)
        if coda is not None:  # observation points: patching them changes nothing downstream
            coda.hook_exit_depth(exit_depth)
            coda.hook_expected_depth(exp_depth)
        for l, block in enumerate(self.coda_blocks):
            x = block(x, self.rotary, coda and coda[l])
        return hook(self._h(self.hook_logits), self.unembed(self.ln_final(x)))

    def readout(self, state: Tensor) -> Tensor:
        """Logits the Coda would give if every token exited with ``state``; no hooks fire."""
        x = state
        for block in self.coda_blocks:
            x = block(x, self.rotary, None)
        return self.unembed(self.ln_final(x))


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


def _holds(last: tuple[Tensor, int | None, int] | None, h: Tensor, runs: int) -> bool:
    """Whether ``h`` is the very state a graphed iteration returned, unchanged since,
    with no graph run in between (which could have written the static buffers)."""
    if last is None or last[0] is not h or last[2] != runs:
        return False
    version = _version(h)
    return version is not None and version == last[1]


def _version(t: Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter: never trust them
        return None


def _extremes(counts: Tensor) -> Tensor:
    """(k, 2): the most and fewest selected entries of any row, from counts (k, b)."""
    return torch.stack([counts.amax(1), counts.amin(1)], dim=1)


def mask_layouts(masks: list[Tensor]) -> list[RowLayout]:
    """The RowLayouts of several (b, n) masks, with one device synchronisation."""
    counts = torch.stack([mask.sum(1) for mask in masks])  # (k, b)
    return [RowLayout(int(hi), int(lo)) for hi, lo in _extremes(counts).tolist()]


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


def iteration_layouts(running: Tensor, refresh: Tensor | None) -> tuple[RowLayout, RowLayout | None]:
    """The row layouts of one iteration's running and refresh masks (one device sync)."""
    if refresh is None:
        return mask_layouts([running])[0], None
    run, ref = mask_layouts([running, refresh])
    return run, ref


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


def build_model(
    config: ModelConfig,
    policy: str = "anira-o",
    *,
    registry: Any = None,
    seed: int | None = None,
    **policy_options: Any,
) -> RecurrentTransformer:
    """Build a model with the named halting policy (found through the plugin registry)."""
    from anira.registry import default_registry

    if not isinstance(config, ModelConfig):
        raise AniraError(f"config must be a ModelConfig, got {type(config).__name__}")
    registry = registry or default_registry()
    policy_cls = registry.policy(policy)
    if seed is not None:
        torch.manual_seed(seed)
    return RecurrentTransformer(config, build_policy(policy_cls, config, policy_options))
