"""The recurrent Transformer: Prelude -> shared core looped up to D times -> Coda.

Per-token exit with freezing (docs/paper.md §2): with candidate h~(d) = R(h(d-1)),

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
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from anira.aligned import AlignedLinear
from anira.config import ModelConfig
from anira.errors import AniraError
from anira.fast import InferenceLoop
from anira.graphs import GRAPH_MODES, IterationGraphs, autocast_key
from anira.halting import HaltingPolicy, LoopContext, PolicyOutputChecks, build_policy, expected_depth
from anira.layers import Block, LayerHooks, RMSNorm, Rotary, Segments, hook
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
        # padded to a multiple of 8 rows inside each product, sliced back to vocab_size
        # before anything reads the logits (anira/aligned.py)
        self.unembed = AlignedLinear(cfg.d_model, cfg.vocab_size, bias=False)
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
        #: which tokens' continue decisions get the straight-through gradient in training:
        #: "running" (those that ran on; the original engine) or "all" (see _surrogate)
        self.straight_through = "running"
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
        # per iteration, the points that fire without the core (running mask, states, signals)
        self._loop_points = [[it.hook_running, it.hook_resid_pre, it.hook_resid_post,
                              *(p for p in it.halt.modules() if isinstance(p, HookPoint))] for it in self.loop]

    def setup(self) -> None:
        super().setup()
        # TransformerLens names every submodule (``module.name = its path``): on the
        # policy that would hide its registered name (a class attribute) behind 'policy'
        self.policy.__dict__.pop("name", None)

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

    def check_tokens(self, tokens: Tensor, *, packed: bool = False) -> Tensor:
        """Validate token ids; returns a (b, p) long tensor on the model's device. A
        ``packed`` row may be longer than max_len (its examples' positions are checked)."""
        if not isinstance(tokens, Tensor):
            tokens = torch.as_tensor(tokens)
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise AniraError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2:
            raise AniraError(f"tokens must have shape (batch, pos), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.max_len and not packed:
            raise AniraError(f"sequence length {tokens.shape[1]} exceeds max_len {self.cfg.max_len}")
        # value checks read the device: under torch.compile each is a graph break and a sync
        # per step, so a compiled (training) forward trusts its own data pipeline's values
        if _checks_values() and tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.cfg.vocab_size)][0].item()
            raise AniraError(f"token id {bad} is outside the vocabulary of size {self.cfg.vocab_size}")
        return tokens.long().to(self.device)

    # ---------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, *, exit_depths: Tensor | None = None,
                features: dict[str, Tensor] | None = None, segments: Tensor | None = None) -> ModelOutput:
        """Run the model. ``exit_depths`` (b, p) in 1..D forces each token's depth
        (the policy still computes its signals and q). ``features``: per-token
        inputs (name -> (b, p) tensor, e.g. a task's per-token features) that
        policies read as ``ctx.features``; they also see the ids as ``ctx.tokens``.
        ``segments`` (b, p): several examples packed along each row (anira/packing.py),
        as ids non-decreasing along the row, one run per example; each example then
        has its own positions and attends only to itself (the masked path runs)."""
        tokens = self.check_tokens(tokens, packed=segments is not None)
        features = self._check_features(features, tokens.shape)
        packed = None if segments is None else self._check_segments(segments, tokens.shape)
        h0 = self.run_prelude(tokens, packed)
        forced = None if exit_depths is None else self._check_depths(exit_depths, tokens.shape)
        if forced is None and not self.training and self.policy.needs_full_distribution():
            with torch.no_grad():  # scouting pass, hooks off: choose depths from the full q
                enabled, self.hook_points_enabled = self.hook_points_enabled, False
                try:
                    all_d = torch.full(tokens.shape, self.cfg.max_iters, device=self.device)
                    scout = self.run_loop(h0, forced=all_d, tokens=tokens, features=features, segments=packed)
                finally:
                    self.hook_points_enabled = enabled
            check = PolicyOutputChecks(self.policy, tokens.shape)
            forced = check.depths(self.policy.depths_from_distribution(scout.q), "depths_from_distribution")
            check.verify()
        return self.run_loop(h0, forced=forced, tokens=tokens, features=features, segments=packed)

    def _check_segments(self, segments: Tensor, shape: torch.Size) -> Segments:
        segments = torch.as_tensor(segments, device=self.device)
        if tuple(segments.shape) != tuple(shape):
            raise AniraError(f"segments has shape {tuple(segments.shape)}, expected (batch, pos) = {tuple(shape)}")
        if segments.dtype.is_floating_point or segments.dtype == torch.bool:
            raise AniraError(f"segments must be integer ids, got dtype {segments.dtype}")
        checks = _checks_values()  # see check_tokens
        if checks and segments.shape[1] > 1 and bool((segments[:, 1:] < segments[:, :-1]).any()):
            raise AniraError("segments must be non-decreasing along each row (one run of equal ids per example)")
        packed = Segments.from_ids(segments)
        if checks and segments.numel() and int(packed.positions.max()) >= self.cfg.max_len:
            raise AniraError(f"a packed example of {int(packed.positions.max()) + 1} tokens exceeds max_len {self.cfg.max_len}")
        return packed

    def _check_depths(self, depths: Tensor, shape: torch.Size) -> Tensor:
        depths = torch.as_tensor(depths, device=self.device).long()
        if depths.shape != shape:
            raise AniraError(f"exit_depths has shape {tuple(depths.shape)}, expected {tuple(shape)}")
        if depths.numel() and (depths.min() < 1 or depths.max() > self.cfg.max_iters):
            raise AniraError(f"exit_depths must lie in 1..{self.cfg.max_iters}")
        return depths

    def _check_features(self, features: dict[str, Tensor] | None, shape: torch.Size) -> dict[str, Tensor]:
        if features is None:
            return {}
        if not isinstance(features, dict):
            raise AniraError(f"features must be a dict of name -> (batch, pos) tensor, got {type(features).__name__}")
        checked = {}
        for name, value in features.items():
            value = torch.as_tensor(value, device=self.device)
            if tuple(value.shape) != tuple(shape):
                raise AniraError(f"feature {name!r} has shape {tuple(value.shape)}, expected (batch, pos) = {tuple(shape)}")
            checked[name] = value
        return checked

    def run_prelude(self, tokens: Tensor, segments: Segments | None = None) -> Tensor:
        x = hook(self._h(self.hook_embed), self.embed(tokens))  # (b, p, d)
        for l, block in enumerate(self.prelude_blocks):
            x = block(x, self.rotary, self._h(self.prelude[l]), segments=segments)
        return x

    def run_loop(self, h0: Tensor, *, forced: Tensor | None = None, tokens: Tensor | None = None,
                 features: dict[str, Tensor] | None = None, segments: Segments | None = None) -> ModelOutput:
        """The recurrent core, up to D iterations with per-token exit and freezing:

            h_i(d) = a_i(d)·R(h(d-1))_i + (1 - a_i(d))·h_i(d-1),   a_i(d) = loop.{d-1}.hook_running

        ``forced`` (b, p): exit depths decided before the loop. Training runs every
        iteration on every token (a static graph); inference hands the computation
        to an :class:`~anira.fast.InferenceLoop` (same function, frozen tokens
        skipped) and stops once no token runs and no hook is left to change that.
        Packed rows (``segments``) take the masked path at inference too."""
        D = self.cfg.max_iters
        check = PolicyOutputChecks(self.policy, h0.shape[:2])
        readout = self.readout if segments is None else partial(self.readout, segments=segments)
        ctx = LoopContext(max_iters=D, stochastic=self.training and forced is None, readout=readout,
                          tokens=tokens, features=features or {})
        state = check.state(self.policy.begin(h0, ctx, self._emitter(self.halt)), "begin")
        if forced is None and not self.training and self.use_planned_depths:  # early policies decided already
            forced = check.depths(self.policy.planned_exit_depths(state, ctx, h0), "planned_exit_depths")
        executor = None if self.training or segments is not None else self._executor(h0, forced)
        h, keep, ran, iterations_run = h0, h0.new_ones(h0.shape[:2]), [], 0
        cont = keep
        for t in range(D):
            it = self._h(self.loop[t])
            running = hook(it and it.hook_running, cont > 0.5)
            # training (and inference asked to) computes every iteration, on every token
            computes = executor is None or not self.stop_when_all_exited or executor.runs_any(t, running)
            if not computes and not self._hooked_from(t):
                break  # nobody runs and no hook is left to change that: every later state is frozen
            h = self._watch(it and it.hook_resid_pre, h, executor)
            if executor is None:  # the freeze equation on every token (a static graph)
                a = running.to(h.dtype) if forced is not None else running + self._surrogate(keep, cont, running)
                h = self.iterate(h, t, a, segments=segments)
            elif computes:  # the same function, skipping frozen tokens
                h = executor.iterate(h, t, running)
            h = self._watch(it and it.hook_resid_post, h, executor)
            ran.append(running)
            iterations_run += computes
            state, keep = check.step(self.policy.step(state, h, t, ctx, self._emitter(self.loop[t].halt)),
                                     decides=forced is None)
            if forced is not None:  # exits decided before the loop: the policy's choice is not asked
                keep = (forced > t + 1).to(h.dtype)
            cont = keep * running  # nothing restarts a token that did not run (only a hook can)
        running_all = torch.stack(ran + [torch.zeros_like(ran[0])] * (D - len(ran)))  # (D, b, p)
        exit_depth = running_all.sum(0)  # the iterations each token actually ran
        q = check.distribution(self.policy.finish(state, ctx, h0))
        check.verify()
        exp_depth = expected_depth(q)
        logits = self.run_coda(self.policy.readout_state(state, h), exit_depth, exp_depth, segments)
        return ModelOutput(logits=logits, exit_depth=exit_depth, q=q, expected_depth=exp_depth,
                           running=running_all, iterations_run=iterations_run, state=state)

    def _surrogate(self, keep: Tensor, cont: Tensor, running: Tensor) -> Tensor:
        """The gradient carrier (value 0) of a(t): the policy's straight-through
        surrogate of its last continue decision ``keep``. ``"running"`` (the original
        engine): only where the token ran the previous iteration and runs this one, so
        a token that stopped never learns whether running on would have helped.
        ``"all"``: every token's decision gets the gradient of the freeze mix,
        <h~(t+1) - h(t), dL/dh(t+1)> (the candidate is computed for every token anyway)."""
        if self.straight_through == "all":
            return keep - keep.detach()
        return running * (cont - cont.detach())

    def _executor(self, h0: Tensor, depths: Tensor | None) -> InferenceLoop:
        # with known depths and nobody patching who runs or any state, the whole loop's
        # row layouts are read at once
        planned = depths is not None and not self._loop_patchable()
        return InferenceLoop(self, h0, depths, fast=self.uses_fast_path(h0), planned=planned)

    def _watch(self, point: HookPoint | None, h: Tensor, executor: InferenceLoop | None) -> Tensor:
        """Pass the state through a hook point; at inference, tell the executor which
        tokens' states a hook changed (it recomputes their keys and values)."""
        if point is None or executor is None or not point.fwd_hooks:
            return hook(point, h)
        before = h.clone()  # a hook may also edit its argument in place
        after = point(h)
        executor.patched((after != before).any(-1))
        return after

    def iterate(self, h: Tensor, t: int, active: Tensor, *, hooks: bool = True,
                segments: Segments | None = None) -> Tensor:
        """Exactly one iteration on every token (the masked path): the core, then
        freezing. ``active`` (b, p) is a_i(t+1) (0/1, possibly with a straight-through
        gradient). Only the core's own hook points fire here."""
        points = self._h(self.loop[t]) if hooks else None
        candidate = h
        for l, block in enumerate(self.core_blocks):
            candidate = block(candidate, self.rotary, points and points.core[l], segments=segments)
        a = active[..., None].to(h.dtype)
        return a * candidate + (1 - a) * h  # exact for a in {0, 1}

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
        # when recorded: in-place updates (however made) are seen by the next replay, a
        # replaced tensor changes the key; inference-mode tensors cannot be updated in
        # place outside it
        tensors = [*self.core_blocks.parameters(), self.rotary.cos, self.rotary.sin_signed]
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

    def _loop_patchable(self) -> bool:
        """Whether a hook sits where it could change who runs or a state between iterations."""
        return self.hook_points_enabled and any(
            point.fwd_hooks for it in self.loop for point in (it.hook_running, it.hook_resid_pre, it.hook_resid_post))

    def _hooked_from(self, t: int) -> bool:
        """Whether a forward hook sits on a loop point of iteration t or later that fires
        without the core (running masks, states, halting signals)."""
        return self.hook_points_enabled and any(point.fwd_hooks for points in self._loop_points[t:] for point in points)

    def uses_fast_path(self, h0: Tensor | None = None) -> bool:
        """Inference skips frozen tokens unless someone observes the core's internals
        (then the masked path runs, so every core hook sees every token), or the batch
        h0 (b, p, d) has fewer tokens than ``fast_path_min_tokens`` asks for on its
        device (too few to keep the device busy: skipping rows saves nothing there)."""
        if self.training or not self.fast_inference or self.cfg.n_core != 1:
            # with several core layers a frozen token's deeper keys/values still
            # depend on running tokens, so it cannot be skipped exactly
            return False
        if h0 is not None and h0.shape[0] * h0.shape[1] < self.fast_path_min_tokens.get(h0.device.type, 0):
            return False
        return not self._core_hooked()

    def _emitter(self, signals: SignalHooks):
        enabled = self.hook_points_enabled

        def emit(name: str, value: Tensor) -> Tensor:
            point = signals.point(name)
            return point(value) if enabled else value

        return emit

    def run_coda(self, exit_state: Tensor, exit_depth: Tensor, exp_depth: Tensor,
                 segments: Segments | None = None) -> Tensor:
        coda = self._h(self.coda)
        x = hook(coda and coda.hook_exit_state, exit_state)
        if coda is not None:  # observation points: patching them changes nothing downstream
            coda.hook_exit_depth(exit_depth)
            coda.hook_expected_depth(exp_depth)
        for l, block in enumerate(self.coda_blocks):
            x = block(x, self.rotary, coda and coda[l], segments=segments)
        return hook(self._h(self.hook_logits), self.unembed(self.ln_final(x)))

    def readout(self, state: Tensor, segments: Segments | None = None) -> Tensor:
        """Logits the Coda would give if every token exited with ``state``; no hooks fire."""
        x = state
        for block in self.coda_blocks:
            x = block(x, self.rotary, None, segments=segments)
        return self.unembed(self.ln_final(x))


def _checks_values() -> bool:
    """Whether input values are checked: always, except while torch.compile traces."""
    return not torch.compiler.is_compiling()


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
