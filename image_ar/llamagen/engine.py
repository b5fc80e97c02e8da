"""LlamaGen as an engine model: a GPT bound to the conditions of one batch.

Owns: ``ConditionedGPT``, the ``CausalLM`` the engine decodes for a LlamaGen generation call.
The engine feeds integer ids; condition slots (positions < cls_token_num) take their vectors
from the bound ``cond_embs_BLC`` (conditional rows first, unconditional rows after them when
guidance doubles the batch), image tokens from the token embedding. Positions equal slots,
which is LlamaGen's layout: condition slots 0..L-1, image token i at L + i.

Must never: hold anything but the bound conditions (with what the GPT derives from them once:
``condition_cell_map`` vectors) and the tokenizer's codebook; change them during a call.
"""

from __future__ import annotations

import torch

from mmaccel.cache import StaticKVCache
from mmaccel.image_ar.llamagen.gpt import GPT


class ConditionedGPT:
    """``CausalLM`` view of ``gpt`` with the condition embeddings of each row bound."""

    family = "llamagen"

    def __init__(
        self,
        gpt: GPT,
        cond_embs_BLC: torch.Tensor,
        codebook: torch.Tensor | None = None,
        acceptance_profile: dict | None = None,
    ) -> None:
        # codebook: the VQ's code vectors [vocab, dim] as it quantizes (latent-relaxed methods read it);
        # acceptance_profile: measured tokens per step per method and window (mmaccel.window)
        self.gpt, self.cond_embs_BLC, self.codebook = gpt, cond_embs_BLC, codebook
        self.acceptance_profile = acceptance_profile
        self.cells_BKC = gpt.cell_vectors(cond_embs_BLC)  # condition_cell_map: made once per binding
        self.vocab_size, self.max_seq_len, self.grid_width = gpt.vocab_size, gpt.max_seq_len, gpt.grid_width
        self.cls_token_num = gpt.cfg.cls_token_num

    @property
    def device(self) -> torch.device:
        return self.cond_embs_BLC.device

    def new_cache(self, batch: int, capacity: int) -> StaticKVCache:
        return self.gpt.new_cache(batch, capacity)

    def forward(self, tokens_BT, pos_BT, cache, slots_BT, mask_BTS) -> torch.Tensor:
        return self.gpt.forward(
            tokens_BT, pos_BT, cache, slots_BT, mask_BTS, self.cond_embs_BLC, self.cells_BKC
        )

    def placeholder_ids(self, batch: int) -> torch.Tensor:
        """The ``[batch, L]`` prompt ids of condition slots (ignored: their embeddings are bound)."""
        return torch.zeros(batch, self.cls_token_num, dtype=torch.long, device=self.device)
