"""TransformerLens habits on a looped model.

:class:`LensMixin` gives :class:`anira.model.RecurrentTransformer` what a
TransformerLens user reaches for first, in the form that fits a loop:

* ``run_with_cache`` returns an :class:`anira.cache.ActivationCache` (still a
  dict keyed by hook name), with ``cache["resid_post", t]`` shorthand and
  stacking over iterations; ``incl_bwd=True`` back-propagates a scalar loss
  (by default next-token cross-entropy) and caches ``<name>_grad``;
* ``to_tokens`` / ``to_string`` / ``to_str_tokens`` through the task's
  tokenizer, which a model loaded from a checkpoint carries
  (:meth:`LensMixin.set_tokenizer` attaches one to a model built by hand);
* ``hook.layer()`` on every hook point gives the layer's index in the
  *unrolled* network (Prelude layers, then the D × n_core loop layers, then
  the Coda layers), and ``hook.location`` says stage, iteration and layer
  within the stage — so a hook function can never mistake Prelude layer 0,
  iteration 0 and Coda layer 0 for one another.

docs/hooks.md lists what remains different from TransformerLens, and why.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from anira.cache import ActivationCache
from anira.errors import AniraError

#: the loss that ``run_with_cache(..., incl_bwd=True)`` differentiates: (output, tokens) -> scalar
LossFn = Callable[[Any, Tensor], Tensor]

_LAYER = re.compile(r"^(prelude|coda)\.(\d+)\.")
_CORE = re.compile(r"^loop\.(\d+)\.core\.(\d+)\.")
_ITERATION = re.compile(r"^loop\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class HookLocation:
    """Where a hook point sits in the looped network.

    ``stage``: "embed", "prelude", "halt" (early halting signals, read from the
    Prelude output), "loop", "coda" or "logits"; ``iteration``: t for
    ``loop.{t}.*``; ``layer``: the layer inside its stage (Prelude, core or
    Coda); ``unrolled``: the layer's index in the unrolled network (Prelude
    layers, then iteration 0's core layers, iteration 1's, ..., then the Coda
    layers), None where the hook belongs to no layer.
    """

    name: str
    stage: str
    iteration: int | None
    layer: int | None
    unrolled: int | None


def hook_location(name: str, n_prelude: int, n_core: int, max_iters: int) -> HookLocation:
    """The :class:`HookLocation` of a hook name of this model's shape."""
    first_core = n_prelude
    first_coda = n_prelude + max_iters * n_core
    if m := _CORE.match(name):
        t, l = int(m.group(1)), int(m.group(2))
        return HookLocation(name, "loop", t, l, first_core + t * n_core + l)
    if m := _LAYER.match(name):
        stage, l = m.group(1), int(m.group(2))
        return HookLocation(name, stage, None, l, (0 if stage == "prelude" else first_coda) + l)
    if m := _ITERATION.match(name):
        t, rest = int(m.group(1)), m.group(2)
        # the iteration's own sites are its first core layer's input or its last one's output,
        # as blocks.{l}.hook_resid_pre / _post belong to layer l in TransformerLens
        last = first_core + t * n_core + n_core - 1
        unrolled = first_core + t * n_core if rest in ("hook_resid_pre", "hook_running") else last
        return HookLocation(name, "loop", t, None, unrolled)
    stage = ("embed" if name == "hook_embed" else "halt" if name.startswith("halt.")
             else "coda" if name.startswith("coda.") else "logits" if name == "hook_logits" else "other")
    return HookLocation(name, stage, None, None, None)


def _layer_of(location: HookLocation) -> int:
    # HookPoint.layer() in TransformerLens reads the number after the first dot, which
    # here would be Prelude layer l, iteration t and Coda layer l alike
    if location.unrolled is None:
        raise AniraError(f"hook {location.name!r} belongs to no layer (stage {location.stage}); "
                         "see hook.location")
    return location.unrolled


def next_token_loss(out: Any, tokens: Tensor) -> Tensor:
    """Mean cross-entropy of each position's prediction of the next token, over
    targets that are not padding (id 0 in every anira tokenizer)."""
    logits = out.logits[:, :-1].float()
    targets = tokens[:, 1:]
    keep = targets != 0
    if not keep.any():
        raise AniraError("no next-token target to differentiate: give sequences of at least two non-pad tokens")
    return torch.nn.functional.cross_entropy(logits[keep], targets[keep])


def full_depth_hooks(max_iters: int) -> list[tuple[str, Callable[[Tensor, Any], Tensor]]]:
    """``fwd_hooks`` that make every token run all ``max_iters`` iterations: each
    iteration's ``hook_running`` is patched to all True (a patch of ``hook_running`` is
    a(t), docs/hooks.md "Patching"). The model's own weights at full depth: how much
    accuracy its halting policy gives away (``scripts/halting_headroom.py``)."""
    if max_iters < 1:
        raise AniraError(f"max_iters must be >= 1, got {max_iters}")

    def run_on(running: Tensor, hook: Any) -> Tensor:
        return torch.ones_like(running)

    return [(f"loop.{t}.hook_running", run_on) for t in range(max_iters)]


class LensMixin:
    """TransformerLens conveniences for :class:`anira.model.RecurrentTransformer`
    (module doc). Mixed in before ``HookedRootModule``."""

    #: the task's tokenizer (anira.task.Tokenizer) or None; set by anira.load / set_tokenizer
    tokenizer: Any = None

    # --- hook points ----------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()  # type: ignore[misc]  # names every hook point and fills hook_dict
        cfg = self.cfg  # type: ignore[attr-defined]
        for name, point in self.hook_dict.items():  # type: ignore[attr-defined]
            location = hook_location(name, cfg.n_prelude, cfg.n_core, cfg.max_iters)
            point.location = location
            point.layer = functools.partial(_layer_of, location)

    def hook_location(self, name: str) -> HookLocation:
        """Where the hook ``name`` sits (stage, iteration, layer, unrolled layer)."""
        point = self.hook_dict.get(name)  # type: ignore[attr-defined]
        if not isinstance(point, HookPoint):
            raise AniraError(f"no hook point named {name!r}")
        return point.location

    # --- caching ----------------------------------------------------------------------------
    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: Any = None,
        device: Any = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        loss_fn: LossFn | None = None,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        return_cache_object: bool = True,
        **model_kwargs: Any,
    ) -> tuple[Any, ActivationCache | dict[str, Tensor]]:
        """Run the model, caching activations: ``(output, cache)``.

        As in TransformerLens, with two differences that a looped model needs:
        ``incl_bwd=True`` back-propagates ``loss_fn(output, tokens)`` (default
        :func:`next_token_loss`) — the output is a :class:`ModelOutput`, not a
        scalar — and caches each hook's gradient as ``<name>_grad``; the cache
        is an :class:`ActivationCache` (``return_cache_object=False``: a plain dict).
        """
        if not model_args:
            raise AniraError("run_with_cache needs the tokens as its first argument")
        # packed rows (``segments``) may be longer than max_len; forward checks their examples
        tokens = self.check_tokens(model_args[0], packed=model_kwargs.get("segments") is not None)  # type: ignore[attr-defined]
        if remove_batch_dim and tokens.shape[0] != 1:
            raise AniraError(f"remove_batch_dim needs a batch of one sequence, got {tokens.shape[0]}")
        cache_dict, fwd, bwd = self.get_caching_hooks(  # type: ignore[attr-defined]
            names_filter, incl_bwd, device, remove_batch_dim=remove_batch_dim, pos_slice=pos_slice)
        with self.hooks(fwd_hooks=fwd, bwd_hooks=bwd, reset_hooks_end=reset_hooks_end,  # type: ignore[attr-defined]
                        clear_contexts=clear_contexts):
            if incl_bwd:
                with torch.enable_grad():
                    out = self(tokens, *model_args[1:], **model_kwargs)  # type: ignore[operator]
                    loss = (loss_fn or next_token_loss)(out, tokens)
                    if not (isinstance(loss, Tensor) and loss.numel() == 1 and loss.requires_grad):
                        raise AniraError("loss_fn must return a scalar tensor that depends on the model's output")
                    loss.backward()
            else:
                out = self(tokens, *model_args[1:], **model_kwargs)  # type: ignore[operator]
        if not return_cache_object:
            return out, cache_dict
        cfg = self.cfg  # type: ignore[attr-defined]
        return out, ActivationCache(cache_dict, max_iters=cfg.max_iters, n_core=cfg.n_core,
                                    has_batch_dim=not remove_batch_dim)

    # --- tokenizer --------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer: Any) -> Any:
        """Attach a task's tokenizer (a Task or its ``tokenizer``); returns the model."""
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        if not (hasattr(tok, "encode") and hasattr(tok, "decode") and hasattr(tok, "vocab")):
            raise AniraError(f"set_tokenizer needs a task or a tokenizer, got {type(tokenizer).__name__}")
        vocab_size = self.cfg.vocab_size  # type: ignore[attr-defined]
        if len(tok.vocab) != vocab_size:
            raise AniraError(f"the tokenizer has {len(tok.vocab)} tokens but the model's vocabulary is {vocab_size}")
        self.tokenizer = tok
        return self

    def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise AniraError("this model has no tokenizer: load it with anira.load(checkpoint), "
                             "or attach one with model.set_tokenizer(task)")
        return self.tokenizer

    def to_str_tokens(self, text: str | Tensor | Sequence[int]) -> list[str]:
        """One sequence as its list of token strings (text is split on whitespace)."""
        tok = self._tokenizer()
        if isinstance(text, str):
            words = text.split()
            tok.encode(words)  # an unknown token is an error here, not later
            return words
        ids = torch.as_tensor(text).reshape(-1).tolist()
        return [tok.vocab[i] if 0 <= i < len(tok.vocab) else _bad_id(i, len(tok.vocab)) for i in ids]

    def to_tokens(self, text: str | Sequence[str]) -> Tensor:
        """Token ids (batch, pos) on the model's device.

        ``text``: one string of space-separated tokens, as ``to_string`` and the
        task's ``decode`` write them (e.g. ``"<bos> 3 + 4 = 7 <eos>"``), or a list
        of such strings, right-padded with the pad id 0 to the longest. Nothing is
        added: the text is encoded exactly as written.
        """
        tok = self._tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise AniraError("to_tokens needs a string or a non-empty list of strings")
        rows = [tok.encode(t.split()) for t in texts]
        n = max(len(r) for r in rows)
        if n == 0:
            raise AniraError("to_tokens got no tokens (empty text)")
        out = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out.to(self.device)  # type: ignore[attr-defined]

    def to_string(self, tokens: Tensor | Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
        """Readable text of token ids: one string for a sequence, a list of
        strings for a batch (padding dropped)."""
        tok = self._tokenizer()
        ids = torch.as_tensor(tokens)
        if ids.dim() <= 1:
            return tok.decode(ids.reshape(-1).tolist())
        if ids.dim() == 2:
            return [tok.decode(row.tolist()) for row in ids]
        raise AniraError(f"to_string needs (pos,) or (batch, pos) ids, got shape {tuple(ids.shape)}")


def _bad_id(i: int, n: int) -> str:
    raise AniraError(f"token id {i} is outside the vocabulary of {n}")
