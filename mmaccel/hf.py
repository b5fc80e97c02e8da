"""Adapter: any Hugging Face decoder-only causal LM as an mmaccel ``CausalLM``.

Owns: a thin stand-in for transformers' ``Cache`` that writes each layer's keys/values into
our ``StaticKVCache`` at explicit per-row slots, and the call that hands the model per-row
``position_ids`` and a ready 4-D attention mask (transformers passes a 4-D mask through
unchanged, so rows at different lengths need no padding tricks).

Also owns what ``mmaccel.generate`` borrows from transformers' ``generate``: the defaults a
model's ``generation_config`` sets, and the refusal of transformers keywords we do not implement.

Must never: let transformers build its own mask or cache, or keep state between calls.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import nullcontext
from typing import Any

import torch

from mmaccel.cache import StaticKVCache
from mmaccel.cpu_linear import packed_linears

log = logging.getLogger(__name__)


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
        self._packed = packed_linears(model)  # None off a CPU (mmaccel.cpu_linear)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def generation_config(self) -> Any:
        """The wrapped model's ``generation_config`` (transformers' defaults for ``generate``), or None."""
        return getattr(self.model, "generation_config", None)

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
        packed = self._packed is not None and not torch.compiler.is_compiling()
        with self._packed.active() if packed else nullcontext():
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


# ---- transformers' generate() keywords -------------------------------------------------------

# what transformers applies when neither the user nor the model's generation config sets a
# field (``GenerationConfig._get_default_generation_params``; copied for the fields we read)
HF_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
# generation-config fields that are ours to read, or harmless to leave unread
# their values that change nothing (a shipped config often spells the defaults out)
_NEUTRAL = {"num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "length_penalty": 1.0,
            "no_repeat_ngram_size": 0, "min_length": 0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
            "encoder_repetition_penalty": 1.0, "output_scores": False, "return_dict_in_generate": False,
            "early_stopping": False, "remove_invalid_values": False, "num_beam_groups": 1, "diversity_penalty": 0.0}  # fmt: skip
# fields that change the output whenever set
_CHANGES = frozenset({"min_new_tokens", "min_p", "top_h", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                      "forced_bos_token_id", "forced_eos_token_id", "sequence_bias", "stop_strings", "guidance_scale",
                      "exponential_decay_length_penalty", "watermarking_config", "dola_layers", "penalty_alpha"})  # fmt: skip
# keywords of transformers' generate() that are not generation-config fields
_CALL_KEYWORDS = frozenset({"generation_config", "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn",
                            "synced_gpus", "assistant_model", "negative_prompt_ids", "negative_prompt_attention_mask",
                            "custom_generate", "tokenizer", "assistant_tokenizer", "inputs", "position_ids",
                            "token_type_ids", "past_key_values", "inputs_embeds", "use_model_defaults"})  # fmt: skip
SUPPORTED = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id", "pad_token_id",
             "attention_mask", "streamer")  # fmt: skip
_HINTS = {
    "prompt_lookup_num_tokens": "use method='prompt-lookup' (its window= is the number of drafted tokens)",
    "max_matching_ngram_size": "use method='prompt-lookup' with ngram_max=",
    "max_length": "give max_new_tokens (tokens after the prompt)",
    "num_return_sequences": "repeat the prompt rows instead (every row draws independently)",
    "use_cache": "mmaccel always decodes with its own static cache",
}


def transformers_keywords() -> frozenset[str]:
    """Every keyword transformers' ``generate`` understands (generation-config fields + call keywords)."""
    try:
        from transformers import GenerationConfig

        fields = set(GenerationConfig().to_dict())
    except ImportError:  # pragma: no cover - transformers is a dependency
        fields = set()
    return frozenset(fields | _CALL_KEYWORDS) - {"transformers_version", "_from_model_config"}


def refuse_unsupported(keywords: dict[str, Any], method_options: frozenset[str]) -> None:
    """``TypeError`` naming the first transformers keyword in ``keywords`` that mmaccel does not
    implement (and is not one of our method options): never ignore what a user asked for."""
    for name in sorted(set(keywords) & transformers_keywords() - method_options - set(SUPPORTED)):
        hint = f"; {_HINTS[name]}" if name in _HINTS else ""
        raise TypeError(
            f"mmaccel.generate does not support the transformers keyword {name!r}{hint}. Supported transformers "
            f"keywords: {', '.join(SUPPORTED)}; method options go with method= (see mmaccel.methods.OPTIONS)"
        )


def generation_defaults(generation_config: Any) -> dict[str, Any]:
    """What transformers' ``generate`` would use for our keywords when the user gives none:
    the model's ``generation_config`` where it sets a field, else transformers' global default.
    ``max_new_tokens`` is the config's own (or ``max_length`` as a total, key ``max_length``)
    and absent otherwise: mmaccel's default length applies then, not transformers' 20 in total.
    Fields of the config that change the output and are not implemented here are logged."""
    cfg = (
        generation_config.to_dict()
        if hasattr(generation_config, "to_dict")
        else dict(vars(generation_config))
    )
    out = {k: (cfg[k] if cfg.get(k) is not None else v) for k, v in HF_DEFAULTS.items()}
    for name in ("eos_token_id", "pad_token_id", "max_new_tokens", "max_length"):
        if cfg.get(name) is not None:
            out[name] = cfg[name]
    ignored = sorted(k for k, v in cfg.items() if v is not None and v not in ((), [], {})
                     and (k in _CHANGES or (k in _NEUTRAL and v != _NEUTRAL[k])))  # fmt: skip
    if ignored:
        log.warning("the model's generation_config sets %s, which mmaccel.generate does not apply",
                    ", ".join(f"{k}={cfg[k]!r}" for k in ignored))  # fmt: skip
    return out


class StreamFeed:
    """Feeds a transformers-style streamer (``put(tensor)``, ``end()``) as a call decodes: the
    prompt ids first (as transformers does), then, after each step, the new token columns that
    every row still running has committed (``[B, n]``; a stopped row shows ``pad``), ``end()``
    once every row has stopped. ``streamer=None``: does nothing."""

    def __init__(self, streamer: Any, input_ids_BT: torch.Tensor, history_BN: torch.Tensor, pad: int) -> None:
        self.streamer, self.history_BN, self.pad, self.sent = streamer, history_BN, pad, 0
        if streamer is not None:
            streamer.put(input_ids_BT.cpu())

    def put(self, done: list[int], counts: list[int], all_done: bool) -> None:
        """``done``/``counts``: each row's state and tokens generated after the last step."""
        if self.streamer is None:
            return
        running = [n for d, n in zip(done, counts, strict=True) if not d]
        ready = min(running) if running else max(counts)
        if ready > self.sent:
            cols_BN = self.history_BN[:, self.sent : ready].cpu()
            index_N = torch.arange(self.sent, ready)
            self.streamer.put(torch.where(index_N[None] < torch.tensor(counts)[:, None], cols_BN, self.pad))
            self.sent = ready
        if all_done:
            self.streamer.end()
