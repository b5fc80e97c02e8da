"""The model protocol the engine decodes, and adaptation of outside models to it.

Owns: the ``CausalLM`` protocol (what a project model implements), the family registry
(image/speech families register adapters here; the core never imports them), and
``as_causal_lm`` which turns a user's model into something the engine can drive.

A model's forward takes tokens, positions, cache slots, the cache and the attention mask
explicitly and has no side effect beyond writing the cache slots it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from mmaccel.cache import StaticKVCache


@runtime_checkable
class CausalLM(Protocol):
    """What the engine needs from a model.

    Attributes:
        vocab_size: size of the logits' last axis.
        max_seq_len: longest sequence (prompt + generated) the model supports.
        grid_width: tokens per raster row for image models, else None.
        family: short name used in error messages ("llama", "llamagen", ...).

    Optional: ``acceptance_profile``, the tokens per verify step a model measured per method
    and window at its default sampling (``mmaccel.window``; the default image model ships one).
    """

    vocab_size: int
    max_seq_len: int
    grid_width: int | None
    family: str

    def new_cache(self, batch: int, capacity: int) -> StaticKVCache:
        """A fresh cache for ``batch`` rows of ``capacity`` slots on the model's device."""
        ...

    def forward(
        self,
        tokens_BT: torch.Tensor,
        pos_BT: torch.Tensor,
        cache: StaticKVCache,
        slots_BT: torch.Tensor,
        mask_BTS: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``[B, T, V]``; writes this block's K/V at ``slots_BT`` of ``cache``."""
        ...


# (predicate, adapter) pairs; families add theirs with register_family.
_FAMILIES: list[tuple[Callable[[Any], bool], Callable[[Any], CausalLM]]] = []


def device_of(lm: CausalLM) -> torch.device:
    """The device a model runs on (its ``device`` attribute, else its first parameter's)."""
    if hasattr(lm, "device"):
        return torch.device(lm.device)
    return next(lm.parameters()).device


def weights_id(lm: CausalLM) -> int:
    """Identity of the module holding a model's weights: a per-call wrapper (a LlamaGen GPT bound
    to one batch's conditions, a transformers adapter) shares it across calls."""
    return id(getattr(lm, "gpt", None) or getattr(lm, "model", None) or lm)


def register_family(predicate: Callable[[Any], bool], adapter: Callable[[Any], CausalLM]) -> None:
    """Let ``as_causal_lm`` accept models for which ``predicate(model)`` holds."""
    _FAMILIES.append((predicate, adapter))


def is_project_model(model: Any) -> bool:
    return all(callable(getattr(model, name, None)) for name in ("new_cache", "forward")) and all(
        hasattr(model, name) for name in ("vocab_size", "max_seq_len")
    )


def as_causal_lm(model: Any) -> CausalLM:
    """Return ``model`` as a ``CausalLM``: a project model as is, a HF causal LM wrapped.

    Raises:
        TypeError: the model is neither; the message names the interfaces accepted.
    """
    if is_project_model(model):
        return model
    for predicate, adapter in _FAMILIES:
        if predicate(model):
            return adapter(model)
    from mmaccel.hf import HFCausalLM, is_hf_causal_lm

    if is_hf_causal_lm(model):
        return HFCausalLM(model)
    raise TypeError(
        f"mmaccel cannot decode a {type(model).__name__}: expected a project model implementing "
        "mmaccel.models.CausalLM (vocab_size, max_seq_len, new_cache(), forward(tokens, pos, cache, "
        "slots, mask) -> logits) or a Hugging Face transformers PreTrainedModel with a language-model "
        "head (e.g. LlamaForCausalLM)"
    )
