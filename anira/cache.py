"""Activation caches of a looped model.

A weight-shared loop fires the same computation D times, so every iteration
owns its hook names (``loop.{t}.<site>``). :func:`stack_iterations` turns those
D cache entries back into one tensor ``[iter, batch, pos, ...]`` together with
the running mask ``[iter, batch, pos]`` that says which entries were computed.
:class:`ActivationCache` (what ``run_with_cache`` returns) is the dict of hook
name -> tensor with TransformerLens' conveniences on top: ``cache["resid_post",
t]``, stacking a site over iterations by name, ``remove_batch_dim``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from anira.errors import AniraError

_LOOP_KEY = re.compile(r"^loop\.(\d+)\.")


def loop_names(site: str, max_iters: int) -> list[str]:
    """The hook names of ``site`` at every iteration, e.g. for a ``names_filter``."""
    return [f"loop.{t}.{site}" for t in range(max_iters)]


def names_filter_for(*sites: str, max_iters: int, with_running: bool = True):
    """A ``names_filter`` for ``run_with_cache`` keeping ``sites`` at every iteration
    (and the running mask, which :func:`stack_iterations` needs)."""
    wanted = {name for site in sites for name in loop_names(site, max_iters)}
    if with_running:
        wanted |= set(loop_names("hook_running", max_iters))
    return lambda name: name in wanted


def _n_iters(cache: Mapping[str, Tensor]) -> int:
    found = [int(m.group(1)) for key in cache.keys() if (m := _LOOP_KEY.match(key))]
    if not found:
        raise AniraError("the cache holds no loop.{t}. entries; cache a loop site first")
    return max(found) + 1


def stack_iterations(
    cache: Mapping[str, Tensor], site: str, *, max_iters: int | None = None, fill: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Stack ``loop.{t}.{site}`` over t.

    Returns ``(values, running)``: values ``[iter, batch, pos, ...]`` and the
    bool running mask ``[iter, batch, pos]`` (the token was still computing at
    that iteration). Iterations whose ``site`` was not recorded (the loop stopped
    early, or a policy emits no signal at that depth) are filled with ``fill``.
    """
    D = max_iters if max_iters is not None else _n_iters(cache)
    names = loop_names(site, D)
    present = [n for n in names if n in cache]
    if not present:
        raise AniraError(f"no iteration of site {site!r} is in the cache (e.g. {names[0]!r})")
    template = cache[present[0]]
    values = torch.stack([cache[n] if n in cache else torch.full_like(template, fill) for n in names])
    running_names = loop_names("hook_running", D)
    missing = [n for n in running_names if n not in cache]
    if missing:
        raise AniraError(f"the cache lacks {missing[0]!r}; include loop.{{t}}.hook_running in the names filter")
    running = torch.stack([cache[n] for n in running_names]).bool()
    recorded = torch.tensor([n in cache for n in names], device=running.device)
    # (iter, 1, ...) against (iter, batch, pos) or, without the batch dimension, (iter, pos)
    running = running & recorded.view(-1, *([1] * (running.dim() - 1)))
    return values, running


#: short site names of ``cache[site, t]`` (TransformerLens' names) and where they live
_ITERATION_SITES = ("resid_pre", "resid_post", "running")  # loop.{t}.hook_<site>
_LAYER_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")  # loop.{t}.core.{l}.hook_<site>
_ATTN_SITES = ("q", "k", "v", "z", "pattern", "attn_scores")  # loop.{t}.core.{l}.attn.hook_<site>


class ActivationCache(dict):
    """Hook name -> activation, as ``run_with_cache`` recorded it, with
    TransformerLens-style access for a loop.

    * ``cache["loop.2.hook_resid_post"]``: any hook name, as in a plain dict;
    * ``cache["resid_post", t]``: ``loop.{t}.hook_resid_post`` (negative t counts
      from D); ``cache["pattern", t, l]``: core layer l's site at iteration t
      (l may be left out when the core has one layer); ``cache["halt.prob", t]``:
      a halting signal; any other dotted suffix is taken as written
      (``cache["core.0.attn.hook_q", t]``); add ``_grad`` for a gradient;
    * ``stack(site)`` -> ``(values [iter, batch, pos, ...], running [iter, batch, pos])``
      and ``stack_activation(site)`` -> values only;
    * ``accumulated_resid()``: the state before the loop and after each iteration;
    * ``remove_batch_dim()``, ``to(device)``.

    Prelude and Coda sites are reached by their full names
    (``cache["prelude.0.hook_resid_post"]``).
    """

    def __init__(self, cache_dict: dict[str, Tensor], *, max_iters: int, n_core: int = 1,
                 has_batch_dim: bool = True) -> None:
        super().__init__(cache_dict)
        self.max_iters = int(max_iters)
        self.n_core = int(n_core)
        self.has_batch_dim = has_batch_dim

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations, max_iters={self.max_iters}, n_core={self.n_core})"

    # --- names ------------------------------------------------------------------------------
    def act_name(self, site: str, t: int, layer: int | None = None) -> str:
        """The full hook name of ``site`` at iteration ``t`` (and core layer ``layer``)."""
        if isinstance(t, bool) or not isinstance(t, int) or not -self.max_iters <= t < self.max_iters:
            raise AniraError(f"iteration {t!r} is outside 0..{self.max_iters - 1}")
        t %= self.max_iters
        if not isinstance(site, str) or not site:
            raise AniraError(f"site must be a name such as 'resid_post', got {site!r}")
        grad = site.endswith("_grad")
        base = site[: -len("_grad")] if grad else site
        return f"loop.{t}.{self._suffix(base, layer)}" + ("_grad" if grad else "")

    def _suffix(self, site: str, layer: int | None) -> str:
        if site.startswith("halt."):  # a halting signal: "halt.prob" or "halt.hook_prob"
            name = site[len("halt."):]
            return f"halt.{name if name.startswith('hook_') else 'hook_' + name}"
        if "." in site or site.startswith("hook_"):  # a suffix as written
            if layer is not None:
                raise AniraError(f"give the layer inside the site name, not both: {site!r}, layer {layer}")
            return site
        if layer is None and site in _ITERATION_SITES:
            return f"hook_{site}"
        if site not in _LAYER_SITES and site not in _ATTN_SITES:
            known = sorted(set(_ITERATION_SITES + _LAYER_SITES + _ATTN_SITES))
            raise AniraError(f"unknown site {site!r}; short names: {', '.join(known)} (or 'halt.<signal>', "
                             "or a hook name's suffix after 'loop.{t}.')")
        if layer is None:
            if self.n_core != 1:
                raise AniraError(f"the core has {self.n_core} layers: say which, cache[{site!r}, t, layer]")
            layer = 0
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_core:
            raise AniraError(f"core layer {layer!r} is outside 0..{self.n_core - 1}")
        where = "attn." if site in _ATTN_SITES else ""
        return f"core.{layer}.{where}hook_{site}"

    def _key(self, key: Any) -> Any:
        if isinstance(key, tuple):
            if not 2 <= len(key) <= 3:
                raise AniraError(f"cache keys are names or (site, iteration[, layer]); got {key!r}")
            return self.act_name(*key)
        return key

    def __getitem__(self, key: Any) -> Tensor:
        name = self._key(key)
        try:
            return super().__getitem__(name)
        except KeyError:
            hint = " (not cached: widen names_filter)" if isinstance(name, str) else ""
            raise KeyError(f"{name!r}{hint}") from None

    def __contains__(self, key: Any) -> bool:
        try:
            return super().__contains__(self._key(key))
        except AniraError:
            return False

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    # --- over iterations --------------------------------------------------------------------
    def _loop_suffix(self, site: str, layer: int | None) -> str:
        return self.act_name(site, 0, layer)[len("loop.0."):]

    def stack(self, site: str, layer: int | None = None, *, fill: float = 0.0) -> tuple[Tensor, Tensor]:
        """``site`` at every iteration, ``(values [iter, batch, pos, ...], running
        [iter, batch, pos])`` (see :func:`stack_iterations`; without the batch
        dimension after :meth:`remove_batch_dim`)."""
        return stack_iterations(self, self._loop_suffix(site, layer), max_iters=self.max_iters, fill=fill)

    def stack_activation(self, site: str, layer: int | None = None, *, fill: float = 0.0) -> Tensor:
        """``site`` stacked over iterations, values only (TransformerLens' name;
        use :meth:`stack` for the running mask)."""
        name = self._loop_suffix(site, layer)
        present = [f"loop.{t}.{name}" for t in range(self.max_iters) if f"loop.{t}.{name}" in self]
        if not present:
            raise AniraError(f"no iteration of site {name!r} is in the cache (e.g. 'loop.0.{name}')")
        template = self[present[0]]
        return torch.stack([self[f"loop.{t}.{name}"] if f"loop.{t}.{name}" in self else torch.full_like(template, fill)
                            for t in range(self.max_iters)])

    def accumulated_resid(self, return_labels: bool = False) -> Tensor | tuple[Tensor, list[str]]:
        """The state entering the loop (the Prelude's output, h(0)) and after each
        iteration (h(t+1), halted tokens frozen): ``[D + 1, batch, pos, d_model]``."""
        names = ["loop.0.hook_resid_pre"] + [f"loop.{t}.hook_resid_post" for t in range(self.max_iters)]
        missing = [n for n in names if n not in self]
        if missing:
            raise AniraError(f"accumulated_resid needs {missing[0]!r} in the cache (cache resid_pre and resid_post)")
        stacked = torch.stack([self[n] for n in names])
        labels = ["h0"] + [f"after iteration {t}" for t in range(self.max_iters)]
        return (stacked, labels) if return_labels else stacked

    # --- shape and place --------------------------------------------------------------------
    def remove_batch_dim(self) -> "ActivationCache":
        """Drop the batch dimension of every activation (a batch of one); in place."""
        if not self.has_batch_dim:
            return self
        sizes = {tuple(v.shape[:1]) for v in self.values()}
        if any(size != (1,) for size in sizes):
            raise AniraError(f"remove_batch_dim needs a batch of one; the cache holds batch sizes {sorted(sizes)}")
        for name in list(self):
            super().__setitem__(name, super().__getitem__(name)[0])
        self.has_batch_dim = False
        return self

    def to(self, device: Any) -> "ActivationCache":
        """Move every activation to ``device``; in place."""
        for name in list(self):
            super().__setitem__(name, super().__getitem__(name).to(device))
        return self
