"""LlamaGen GPT (Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable
Image Generation"), written here so official checkpoints load key for key.

Owns: the decoder (RMSNorm, SwiGLU, fused ``wqkv`` attention with grouped K/V heads, 2D RoPE),
the class / caption condition embedders, and the engine protocol (``new_cache``, ``forward``).
Config and presets live in ``config.py``; RoPE in ``rope.py``; checkpoint I/O in ``loader.py``.

Sequence layout. Position ``p < cls_token_num`` (``L``) is a condition slot; ``p >= L`` is image
token ``p - L`` of the raster (row-major) ``grid_width x grid_width`` grid. ``forward`` reads the
RoPE angles from ``pos_BT`` and writes K/V at ``slots_BT``; the two are independent.

How the condition enters. The engine feeds integer ids, so condition slots take their input
vectors from ``cond_embs_BLC`` (``[B, L, C]``, made by ``condition_embeddings``): in
``forward(..., cond_embs_BLC=...)`` every token whose position is ``< L`` uses
``cond_embs_BLC[b, pos]`` instead of an id embedding, and the id given there is ignored (pass
0). A block may mix condition and image positions. ``prefill_condition`` is the usual way in:
it writes the L condition slots of an empty cache, commits them and returns the logits of
image token 0; after it, plain ``forward`` calls with image ids at positions ``>= L`` decode.
Without ``cond_embs_BLC`` condition positions would embed their ids: do not do that.

Official quirk kept on purpose: the official RoPE table has all-zero (cos = sin = 0) rows
for condition positions, so q and k of condition tokens are zero; conditions reach image
tokens through values only, with attention logit 0. See ``rope.py``. (The project's
``condition_rope_gate`` option replaces those rows by a learned (g, 0), and its
``condition_cell_map`` adds a caption-made vector per image cell to image inputs; both off by
default.)

Caption padding (t2i): the official sampler masks padded caption slots out of every query
except their own slot; ``condition_padding_mask`` applies that to a mask built by the cache.

Must never: build its own mask inside ``forward``, keep state between calls, or sync with
the host inside ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmaccel.cache import StaticKVCache
from mmaccel.image_ar.llamagen.config import GPTConfig
from mmaccel.image_ar.llamagen.rope import apply_rope_2d, rope_2d


class RMSNorm(nn.Module):
    """RMS normalisation computed in float32, cast back, then scaled (official order)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        x = x_BTC.float()
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x_BTC) * self.weight


class FeedForward(nn.Module):
    """SwiGLU MLP: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        hidden = cfg.ffn_hidden_dim
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x_BTC)) * self.w3(x_BTC))


class Attention(nn.Module):
    """Fused QKV projection, rows ordered [q heads | k heads | v heads], each head contiguous."""

    def __init__(self, cfg: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(
        self,
        x_BTC: torch.Tensor,
        rope_BTP2: torch.Tensor,
        cache: StaticKVCache | None,
        slots_BT: torch.Tensor | None,
        mask_B1TS: torch.Tensor,
    ) -> torch.Tensor:
        B, T, C = x_BTC.shape
        kv = self.n_kv_head * self.head_dim
        q_BTC, k_BTC, v_BTC = self.wqkv(x_BTC).split([C, kv, kv], dim=-1)
        q_BHTD = q_BTC.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k_BHTD = k_BTC.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v_BHTD = v_BTC.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q_BHTD, k_BHTD = apply_rope_2d(q_BHTD, rope_BTP2), apply_rope_2d(k_BHTD, rope_BTP2)
        if cache is None:  # reference path: attend within this block only
            k_BHSD, v_BHSD = k_BHTD, v_BHTD
        else:
            k_BHSD, v_BHSD = cache.update(self.layer_idx, k_BHTD, v_BHTD, slots_BT)
            k_BHSD, v_BHSD = k_BHSD.to(q_BHTD.dtype), v_BHSD.to(q_BHTD.dtype)
        groups = self.n_head // self.n_kv_head
        if groups > 1:  # kv head h serves query heads h*groups .. h*groups + groups - 1
            k_BHSD = k_BHSD.repeat_interleave(groups, dim=1)
            v_BHSD = v_BHSD.repeat_interleave(groups, dim=1)
        y_BHTD = F.scaled_dot_product_attention(q_BHTD, k_BHSD, v_BHSD, attn_mask=mask_B1TS)
        return self.wo(y_BHTD.transpose(1, 2).reshape(B, T, C))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention = Attention(cfg, layer_idx)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x_BTC, rope_BTP2, cache, slots_BT, mask_B1TS) -> torch.Tensor:
        h_BTC = x_BTC + self.attention(self.attention_norm(x_BTC), rope_BTP2, cache, slots_BT, mask_B1TS)
        return h_BTC + self.feed_forward(self.ffn_norm(h_BTC))


class LabelEmbedder(nn.Module):
    """Class table; with class dropout it has one extra row, the null class ``num_classes``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(cfg.num_classes + int(cfg.class_dropout_prob > 0), cfg.dim)


class MLP(nn.Module):
    """Caption projection ``fc2(gelu_tanh(fc1 x))``, no biases."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    """Caption projection plus the learned null caption (a persistent buffer, as official)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cap_proj = MLP(cfg.caption_dim, cfg.dim, cfg.dim)
        uncond = torch.randn(cfg.caption_len, cfg.caption_dim) / cfg.caption_dim**0.5
        self.register_buffer("uncond_embedding", uncond)


def onehot_code(logits_BKX: torch.Tensor, groups: tuple[int, ...]) -> torch.Tensor:
    """Per cell, each group of the code logits as the one-hot of its largest logit (the first
    on a tie; float, same shape); a cell whose first group picks index 0 ("empty") reads index
    0 in every group."""
    index_BKG = torch.stack([p.argmax(-1) for p in logits_BKX.split(groups, dim=-1)], -1)
    index_BKG = index_BKG.masked_fill(index_BKG[..., :1] == 0, 0)
    hot = [F.one_hot(index_BKG[..., j], g) for j, g in enumerate(groups)]
    return torch.cat(hot, -1).to(logits_BKX.dtype)


class GPT(nn.Module):
    """LlamaGen Transformer speaking the engine protocol (see the module docstring)."""

    family = "llamagen"

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.max_seq_len = cfg.max_seq_len
        self.grid_width: int | None = cfg.grid_size
        self.cls_token_num = cfg.cls_token_num
        if cfg.model_type == "c2i":
            self.cls_embedding: nn.Module = LabelEmbedder(cfg)
        else:
            self.cls_embedding = CaptionEmbedder(cfg)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.image_pos_embedding:  # project variant (see GPTConfig); starts at zero
            self.image_pos_embedding = nn.Embedding(cfg.block_size, cfg.dim)
        if cfg.condition_rope_gate:  # project variant (see GPTConfig); starts at zero
            self.condition_rope_gate = nn.Parameter(torch.zeros(()))
        if cfg.condition_cell_map:  # project variant (see GPTConfig); output starts at zero
            n = cfg.condition_cell_map
            hidden = 2 * cfg.dim
            self.cell_map = nn.Sequential(
                nn.Linear(cfg.cls_token_num * cfg.dim, hidden), nn.GELU(),
                nn.Linear(hidden, hidden), nn.GELU(),
                nn.Linear(hidden, n * n * cfg.condition_cell_code),
            )  # fmt: skip
            self.cell_embed = nn.Linear(cfg.condition_cell_code, cfg.dim, bias=False)
        self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, zero_output: bool = True) -> None:
        """Official init: N(0, initializer_range) for linears and embeddings, output zeroed."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, self.cfg.initializer_range)
        if zero_output:
            self.output.weight.zero_()
        if self.cfg.image_pos_embedding:  # zero: a model gains it without changing its function
            self.image_pos_embedding.weight.zero_()
        if self.cfg.condition_rope_gate:  # likewise: at zero it is the official all-zero row
            self.condition_rope_gate.zero_()
        if self.cfg.condition_cell_map:  # likewise: a zero map adds nothing
            # unit-scale layers (with N(0, 0.02) the map's output stayed ~0.01, measured); the
            # code -> vector map is zero
            for layer in self.cell_map[::2]:
                layer.weight.normal_(0.0, layer.in_features**-0.5)
            self.cell_embed.weight.zero_()

    # --- conditions -------------------------------------------------------------------------

    def condition_embeddings(self, cond: torch.Tensor, drop_B: torch.Tensor | None = None) -> torch.Tensor:
        """Condition vectors ``[B, L, C]`` for the L condition slots.

        Args:
            cond: c2i: class ids ``[B]`` (``num_classes`` is the null class); t2i: caption
                features ``[B, Lc, caption_dim]`` with ``Lc >= L`` (padded slots zeroed, as
                the official sampler does).
            drop_B: optional bool ``[B]``; True rows get the null condition (CFG dropout).
        """
        p = self.tok_embeddings.weight
        if self.cfg.model_type == "c2i":
            labels_B = cond.reshape(-1).long()
            if drop_B is not None:
                self._require_null_class()
                labels_B = torch.where(drop_B.bool(), self.cfg.num_classes, labels_B)
            return self.cls_embedding.embedding_table(labels_B)[:, None, :]
        if cond.dim() != 3 or cond.shape[1] < self.cls_token_num or cond.shape[2] != self.cfg.caption_dim:
            raise ValueError(
                f"t2i condition must be caption features [B, >= {self.cls_token_num}, {self.cfg.caption_dim}], "
                f"got {tuple(cond.shape)}"
            )
        caption_BLK = cond.to(p.dtype)
        if drop_B is not None:
            uncond_LK = self.cls_embedding.uncond_embedding.to(p.dtype)
            if caption_BLK.shape[1] != uncond_LK.shape[0]:
                raise ValueError(
                    f"dropping a caption needs {uncond_LK.shape[0]} caption slots, got {caption_BLK.shape[1]}"
                )
            caption_BLK = torch.where(drop_B.bool()[:, None, None], uncond_LK, caption_BLK)
        return self.cls_embedding.cap_proj(caption_BLK)[:, : self.cls_token_num]

    def null_condition(self, batch: int) -> torch.Tensor:
        """The unconditional input for CFG, in the form ``condition_embeddings`` takes.

        c2i: ``[batch]`` filled with ``num_classes``; t2i: the learned ``uncond_embedding``
        expanded to ``[batch, caption_len, caption_dim]``.
        """
        if self.cfg.model_type == "c2i":
            self._require_null_class()
            return torch.full(
                (batch,), self.cfg.num_classes, dtype=torch.long, device=self.output.weight.device
            )
        uncond_LK = self.cls_embedding.uncond_embedding
        return uncond_LK[None].expand(batch, -1, -1).clone()

    def _require_null_class(self) -> None:
        if self.cfg.class_dropout_prob <= 0:
            raise ValueError(
                "this c2i model was built with class_dropout_prob=0, so it has no null class row"
            )

    # --- engine protocol --------------------------------------------------------------------

    def new_cache(self, batch: int, capacity: int) -> StaticKVCache:
        """A fresh cache for ``batch`` rows of ``capacity`` slots, in the weights' dtype/device."""
        p = self.output.weight
        return StaticKVCache(
            self.cfg.n_layer, batch, self.cfg.kv_heads, capacity, self.cfg.head_dim, p.dtype, p.device
        )

    def forward(
        self,
        tokens_BT: torch.Tensor,
        pos_BT: torch.Tensor,
        cache: StaticKVCache,
        slots_BT: torch.Tensor,
        mask_BTS: torch.Tensor,
        cond_embs_BLC: torch.Tensor | None = None,
        cells_BKC: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, T, V]`` (float32); writes this block's K/V at ``slots_BT`` of ``cache``.

        ``mask_BTS`` is True where query t may attend slot s. Positions ``< L`` take their
        input from ``cond_embs_BLC`` (see the module docstring). With ``condition_cell_map``
        image positions need the condition too: pass ``cells_BKC = cell_vectors(cond_embs_BLC)``
        (made once per bound condition), or ``cond_embs_BLC`` and it is made in this call.
        """
        x_BTC = self._embed(tokens_BT, pos_BT, cond_embs_BLC, cells_BKC)
        return self._run(x_BTC, pos_BT, cache, slots_BT, mask_BTS[:, None])

    def cell_vectors(self, cond_embs_BLC: torch.Tensor) -> torch.Tensor | None:
        """The ``condition_cell_map`` vectors ``[B, n*n, C]`` of a condition (None without the map)."""
        if not self.cfg.condition_cell_map:
            return None
        logits_BKX = self.cell_codes(cond_embs_BLC)
        if self.cfg.condition_cell_read == "sigmoid":
            return self.cell_embed(logits_BKX.sigmoid())
        return self.cell_embed(onehot_code(logits_BKX, self.cfg.condition_cell_groups))

    def cell_codes(self, cond_embs_BLC: torch.Tensor) -> torch.Tensor:
        """Each cell's code logits ``[B, n*n, condition_cell_code]`` (the map's MLP output)."""
        # every slot, layer-normalised, concatenated
        slots_BX = F.layer_norm(cond_embs_BLC, (cond_embs_BLC.shape[-1],)).flatten(1)
        return self.cell_map(slots_BX).view(cond_embs_BLC.shape[0], -1, self.cfg.condition_cell_code)

    def prefill_condition(
        self, cond_embs_BLC: torch.Tensor, cache: StaticKVCache, cond_valid_BL: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Write the condition into slots ``0..L-1`` of an empty cache and commit them.

        Returns the logits ``[B, V]`` of image token 0. ``cond_valid_BL`` (t2i caption padding,
        True = real token) masks padded condition slots as the official sampler does; decode
        steps must then pass their masks through ``condition_padding_mask`` too.
        """
        B, L = cond_embs_BLC.shape[0], self.cls_token_num
        slots_BT = cache.slots(L)
        pos_BT = torch.arange(L, device=slots_BT.device).expand(B, L)
        mask_BTS = cache.attn_mask(L)
        if cond_valid_BL is not None:
            mask_BTS = condition_padding_mask(mask_BTS, slots_BT, cond_valid_BL)
        tokens_BT = torch.zeros(B, L, dtype=torch.long, device=slots_BT.device)
        logits_BTV = self.forward(tokens_BT, pos_BT, cache, slots_BT, mask_BTS, cond_embs_BLC)
        cache.commit(torch.full((B,), L, dtype=torch.int32, device=slots_BT.device))
        return logits_BTV[:, -1]

    def full_logits(
        self, cond: torch.Tensor, image_tokens_BN: torch.Tensor, cond_valid_BL: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits ``[B, N + 1, V]`` with no persistent cache (test reference).

        Row i is the distribution of image token i given the condition and tokens ``< i``
        (the official training forward's ``logits[:, L - 1:]``). ``cond`` is raw (class ids
        or caption features, see ``condition_embeddings``).
        """
        cond_embs_BLC = self.condition_embeddings(cond)
        B, N, L = image_tokens_BN.shape[0], image_tokens_BN.shape[1], self.cls_token_num
        pos_BT = torch.arange(L + N, device=image_tokens_BN.device).expand(B, -1)
        image_BNC = self._image_embed(image_tokens_BN, pos_BT[:, L:], self.cell_vectors(cond_embs_BLC))
        x_BTC = torch.cat([cond_embs_BLC, image_BNC], dim=1)
        mask_BTS = (
            torch.ones(L + N, L + N, dtype=torch.bool, device=x_BTC.device).tril()[None].expand(B, -1, -1)
        )
        if cond_valid_BL is not None:
            mask_BTS = condition_padding_mask(mask_BTS, pos_BT, cond_valid_BL)
        return self._run(x_BTC, pos_BT, None, None, mask_BTS[:, None])[:, L - 1 :]

    # --- internals --------------------------------------------------------------------------

    def _embed(
        self,
        tokens_BT: torch.Tensor,
        pos_BT: torch.Tensor,
        cond_embs_BLC: torch.Tensor | None,
        cells_BKC: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.cfg.condition_cell_map and cells_BKC is None:
            if cond_embs_BLC is None:
                raise ValueError(
                    "a model with condition_cell_map needs cond_embs_BLC in every forward (image steps too)"
                )
            cells_BKC = self.cell_vectors(cond_embs_BLC)
        x_BTC = self._image_embed(tokens_BT.clamp(0, self.vocab_size - 1), pos_BT, cells_BKC)
        if cond_embs_BLC is None:
            return x_BTC
        L = self.cls_token_num
        idx_BTC = pos_BT.clamp(0, L - 1)[..., None].expand(-1, -1, x_BTC.shape[-1])
        cond_BTC = cond_embs_BLC.to(x_BTC.dtype).gather(1, idx_BTC)
        return torch.where((pos_BT < L)[..., None], cond_BTC, x_BTC)

    def _image_embed(
        self, tokens_BT: torch.Tensor, pos_BT: torch.Tensor, cells_BKC: torch.Tensor | None = None
    ) -> torch.Tensor:
        x_BTC = self.tok_embeddings(tokens_BT)
        idx_BT = (pos_BT - self.cls_token_num).clamp(0, self.cfg.block_size - 1)
        if self.cfg.image_pos_embedding:
            x_BTC = x_BTC + self.image_pos_embedding(idx_BT).to(x_BTC.dtype)
        if cells_BKC is not None:  # condition_cell_map: the predicted token's cell (+ lookahead rows)
            n, side = self.cfg.condition_cell_map, self.grid_width
            next_BT = (idx_BT + 1).clamp(max=side * side - 1)
            row_BT = (next_BT // side + self.cfg.condition_cell_lookahead).clamp(max=side - 1)
            cell_BT = (row_BT * n // side) * n + next_BT % side * n // side
            x_BTC = x_BTC + cells_BKC.to(x_BTC.dtype).gather(
                1, cell_BT[..., None].expand(-1, -1, x_BTC.shape[-1])
            )
        return x_BTC

    def _run(self, x_BTC, pos_BT, cache, slots_BT, mask_B1TS) -> torch.Tensor:
        rope_BTP2 = rope_2d(pos_BT, self.cfg)
        if self.cfg.condition_rope_gate:  # condition rows (0, 0) become (g, 0)
            g = self.condition_rope_gate.float()
            rope_BTP2 = rope_BTP2 + (pos_BT < self.cls_token_num)[..., None, None] * torch.stack([g, g * 0])
        for layer in self.layers:
            x_BTC = layer(x_BTC, rope_BTP2, cache, slots_BT, mask_B1TS)
        return self.output(self.norm(x_BTC)).float()


def condition_padding_mask(
    mask_BTS: torch.Tensor, slots_BT: torch.Tensor, cond_valid_BL: torch.Tensor
) -> torch.Tensor:
    """Hide padded condition slots (``cond_valid_BL`` False) from every query but their own.

    Assumes the condition occupies cache slots ``0..L-1`` (``prefill_condition`` puts it
    there). Mirrors the official sampler: ``mask[:, :, :L] *= valid`` then the diagonal is
    set back to True.
    """
    B, _, S = mask_BTS.shape
    L = cond_valid_BL.shape[1]
    valid_BS = torch.ones(B, S, dtype=torch.bool, device=mask_BTS.device)
    valid_BS[:, : min(L, S)] = cond_valid_BL[:, : min(L, S)].bool()
    own_BTS = torch.arange(S, device=mask_BTS.device)[None, None, :] == slots_BT[..., None]
    return mask_BTS & (valid_BS[:, None, :] | own_BTS)
