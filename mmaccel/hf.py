"""Adapter: any Hugging Face decoder-only causal LM as an mmaccel ``CausalLM``.

Owns: a thin stand-in for transformers' ``Cache`` that writes each layer's keys/values into
our ``StaticKVCache`` at explicit per-row slots, and the call that hands the model per-row
``position_ids`` and a ready 4-D attention mask (transformers passes a 4-D mask through
unchanged, so rows at different lengths need no padding tricks).

Must never: let transformers build its own mask or cache, or keep state between calls.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from mmaccel.cache import StaticKVCache


def is_hf_causal_lm(model: Any) -> bool:
    """True for a transformers ``PreTrainedModel`` that has a language-model head."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    if not isinstance(model, PreTrainedModel):
        return False
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head is not None and not model.config.is_encoder_decoder


class _SlotCache:
    """Duck-typed transformers cache: ``update`` scatters into a ``StaticKVCache``."""

    is_compileable = True

    def __init__(self, cache: StaticKVCache, slots_BT: torch.Tensor) -> None:
        self.cache = cache
        self.slots_BT = slots_BT

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        return self.cache.update(layer_idx, key_states, value_states, self.slots_BT)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # only consulted when no position_ids / 4-D mask is given; we always give both

    def __len__(self) -> int:
        return len(self.cache.k)


class HFCausalLM:
    """Wraps a transformers causal LM so the engine can decode it with a static cache."""

    family = "hf"
    grid_width = None

    def __init__(self, model: Any) -> None:
        self.model = model
        cfg = model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_seq_len = int(getattr(text_cfg, "max_position_embeddings", 1 << 30))
        self.num_layers = text_cfg.num_hidden_layers
        self.num_kv_heads = getattr(text_cfg, "num_key_value_heads", None) or text_cfg.num_attention_heads
        self.head_dim = (
            getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
        )
        self.family = f"hf:{cfg.model_type}"
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def new_cache(self, batch: int, capacity: int) -> StaticKVCache:
        return StaticKVCache(
            self.num_layers, batch, self.num_kv_heads, capacity, self.head_dim, self.dtype, self.device
        )

    def forward(self, tokens_BT, pos_BT, cache, slots_BT, mask_BTS):
        # Additive float mask: every attention backend of transformers accepts it.
        bias_B1TS = torch.zeros(mask_BTS.shape, dtype=self.dtype, device=mask_BTS.device)
        bias_B1TS = bias_B1TS.masked_fill(~mask_BTS, torch.finfo(self.dtype).min)[:, None]
        kwargs = {self._cache_kw: _SlotCache(cache, slots_BT)}
        out = self.model(
            input_ids=tokens_BT,
            position_ids=pos_BT,
            attention_mask=bias_B1TS,
            use_cache=True,
            return_dict=True,
            **kwargs,
        )
        return out.logits

    __call__ = forward
