"""Helpers for activation caches of a looped model.

A weight-shared loop fires the same computation D times, so every iteration
owns its hook names (``loop.{t}.<site>``). :func:`stack_iterations` turns those
D cache entries back into one tensor ``[iter, batch, pos, ...]`` together with
the running mask ``[iter, batch, pos]`` that says which entries were computed.
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
    running = running & recorded[:, None, None]
    return values, running
