"""What ``mmaccel.generate`` does to its inputs before any work: checks (each error names the
bad value), the defaults a model's generation config sets, and packing rows of different
lengths (real tokens first, in order).
"""

from __future__ import annotations

from typing import Any

import torch

from mmaccel.hf import generation_defaults
from mmaccel.models import CausalLM


def check_ids(name: str, ids: Any, mask: Any) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, length], got shape {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}); give at least one token per row")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
            raise ValueError(f"attention mask for {name} must be a tensor of shape {tuple(ids.shape)}")
        if (mask.sum(1) == 0).any():
            raise ValueError(f"attention mask for {name} leaves a row with no tokens")


def check_sampling(max_new_tokens, temperature, top_k, top_p, cfg_scale) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, int | float) or temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if cfg_scale is not None and cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale!r}")


# a model without a generation config: mmaccel's own defaults (sampling at temperature 1)
PROJECT_DEFAULTS = dict(max_new_tokens=64, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                        eos_token_id=None, pad_token_id=None)  # fmt: skip


def with_defaults(user: dict[str, Any], lm: CausalLM, prompt_T: int) -> dict[str, Any]:
    """The user's values; where None, the model's generation config as transformers reads it,
    else ``PROJECT_DEFAULTS``."""
    gen = getattr(lm, "generation_config", None)
    base = dict(PROJECT_DEFAULTS)
    if gen is not None:
        cfg = generation_defaults(gen)
        if "max_new_tokens" not in cfg and "max_length" in cfg:  # transformers' max_length is a total length
            cfg["max_new_tokens"] = max(int(cfg["max_length"]) - prompt_T, 1)
        base.update(cfg)
    return {k: v if v is not None else base[k] for k, v in user.items()}


def eos_ids_of(eos: Any) -> tuple[int, ...]:
    if eos is None:
        return ()
    if isinstance(eos, torch.Tensor):
        eos = eos.tolist()
    ids = [eos] if isinstance(eos, int) else eos
    try:
        return tuple(int(i) for i in ids)
    except (TypeError, ValueError):
        raise ValueError(f"eos_token_id must be an int or a list of ints, got {eos!r}") from None


def pack(ids_BT: torch.Tensor, mask_BT: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the front (order kept); return them and their counts."""
    if mask_BT is None:
        return ids_BT, torch.full((ids_BT.shape[0],), ids_BT.shape[1], dtype=torch.long, device=ids_BT.device)
    real_BT = mask_BT.bool()
    order_BT = torch.sort((~real_BT).int(), dim=1, stable=True).indices
    return ids_BT.gather(1, order_BT), real_BT.sum(1).long()


def pad_cat(a_BT: torch.Tensor, b_BT: torch.Tensor) -> torch.Tensor:
    T = max(a_BT.shape[1], b_BT.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, T - x.shape[1]))
    return torch.cat([pad(a_BT), pad(b_BT)])
