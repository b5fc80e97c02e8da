"""VAR transformer (Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image
Generation via Next-Scale Prediction"), written so official ``var_d{16,20,24,30}.pth`` load
key for key.

Owns: ``VAR`` (class / start / position / level embeddings, AdaLN blocks, AdaLN head), the
teacher-forced ``forward`` and the per-scale engine hook ``forward_scale``. The reference
sampler lives in ``sample.py``; checkpoint I/O in ``loader.py``.

Sequence layout. Position p in ``0 .. L-1`` runs over the scales small to large, each scale
row-major (``begin_ends``). The input of scale 0 (``first_l`` positions) is
``class_emb(label) + pos_start``; the input of scale k >= 1 is ``word_embed(f_k)`` where
``f_k = area_resize(f_hat_{k-1}, pn_k)`` comes from the VQ-VAE (``idxBl_to_var_input`` /
``get_next_autoregressive_input``); every position then adds ``lvl_embed(level) + pos_1LC[p]``.
The logits at the positions of scale k predict the codes of scale k.

Block-causal attention: a query of scale k sees every key of scales <= k (its own scale
included, in both directions); ``block_causal_mask`` builds it from the level ids ``lvl_1L``.

Condition: ``cond_BD = class_emb(label)`` (row ``num_classes`` is the null class) drives the
AdaLN of every block and of the head. CFG doubles the batch: conditional rows first, the null
class after them (``sample.py``).

Must never: keep state between calls (no cache toggled on modules), build masks from anything
but the level ids, or sync with the host inside ``forward_scale``.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mmaccel.cache import StaticKVCache
from mmaccel.image_ar.var.config import VARConfig

_MAX_SCALE_MUL = math.log(100.0)  # official clamp of the l2-norm attention scale


class KVStore(Protocol):
    """Where attention layers put keys/values: ``StaticKVCache`` or the sampler's growing cache."""

    def update(
        self, layer: int, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor, slots_BT: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def _drop_path(x_BTC: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if p == 0.0 or not training:
        return x_BTC
    keep_B11 = x_BTC.new_empty(x_BTC.shape[0], 1, 1).bernoulli_(1 - p)
    return x_BTC * keep_B11 / (1 - p)


class FFN(nn.Module):
    """``fc2(gelu_tanh(fc1 x))`` with biases."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_hidden)
        self.fc2 = nn.Linear(cfg.ffn_hidden, cfg.embed_dim)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x_BTC), approximate="tanh"))


class SelfAttention(nn.Module):
    """Fused ``mat_qkv`` (rows q | k | v, no bias) plus learned ``q_bias`` / ``v_bias`` and the
    zero ``zero_k_bias`` buffer; with ``attn_l2_norm`` q and k are l2-normalised and q is scaled
    by ``exp(min(scale_mul_1H11, log 100))`` per head (softmax scale 1)."""

    def __init__(self, cfg: VARConfig, layer_idx: int) -> None:
        super().__init__()
        C, H = cfg.embed_dim, cfg.num_heads
        self.layer_idx, self.num_heads, self.head_dim = layer_idx, H, cfg.head_dim
        self.attn_l2_norm = cfg.attn_l2_norm
        if cfg.attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
        else:
            self.scale = 0.25 / math.sqrt(cfg.head_dim)
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.proj = nn.Linear(C, C)

    def forward(
        self,
        x_BTC: torch.Tensor,
        cache: KVStore | None,
        slots_BT: torch.Tensor | None,
        mask_B1TS: torch.Tensor | None,
    ) -> torch.Tensor:
        B, T, C = x_BTC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BTC, self.mat_qkv.weight, bias).view(B, T, 3, self.num_heads, self.head_dim)
        q_BHTD, k_BHTD, v_BHTD = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            scale_mul_1H11 = self.scale_mul_1H11.clamp_max(_MAX_SCALE_MUL).exp()
            q_BHTD = F.normalize(q_BHTD, dim=-1) * scale_mul_1H11
            k_BHTD = F.normalize(k_BHTD, dim=-1)
        if cache is not None:  # keys are cached after normalisation, as official
            k_BHTD, v_BHTD = cache.update(self.layer_idx, k_BHTD, v_BHTD, slots_BT)
            k_BHTD, v_BHTD = k_BHTD.to(q_BHTD.dtype), v_BHTD.to(q_BHTD.dtype)
        y_BHTD = F.scaled_dot_product_attention(q_BHTD, k_BHTD, v_BHTD, attn_mask=mask_B1TS, scale=self.scale)
        return self.proj(y_BHTD.transpose(1, 2).reshape(B, T, C))


class AdaLNSelfAttn(nn.Module):
    """Pre-norm block, affine-free LayerNorm modulated by the condition::

        x += gamma1 * attn(ln(x) * (1 + scale1) + shift1)
        x += gamma2 * ffn(ln(x) * (1 + scale2) + shift2)

    ``(gamma1, gamma2, scale1, scale2, shift1, shift2)`` (that order) come from
    ``ada_lin(cond)`` (``Sequential(SiLU, Linear(D, 6C))``), or with ``shared_aln`` from the
    shared projection plus this block's ``ada_gss`` ``[1, 1, 6, C]``.
    """

    def __init__(self, cfg: VARConfig, layer_idx: int, drop_path: float) -> None:
        super().__init__()
        C = cfg.embed_dim
        self.C, self.shared_aln, self.drop_path = C, cfg.shared_aln, drop_path
        self.attn = SelfAttention(cfg, layer_idx)
        self.ffn = FFN(cfg)
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x_BTC, cond_BD_or_gss, cache, slots_BT, mask_B1TS) -> torch.Tensor:
        if self.shared_aln:
            ada_B16C = self.ada_gss + cond_BD_or_gss
        else:
            ada_B16C = self.ada_lin(cond_BD_or_gss).view(-1, 1, 6, self.C)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada_B16C.unbind(2)
        h = self.attn(self.ln_wo_grad(x_BTC) * (scale1 + 1) + shift1, cache, slots_BT, mask_B1TS)
        x_BTC = x_BTC + _drop_path(h * gamma1, self.drop_path, self.training)
        h = self.ffn(self.ln_wo_grad(x_BTC) * (scale2 + 1) + shift2)
        return x_BTC + _drop_path(h * gamma2, self.drop_path, self.training)


class AdaLNBeforeHead(nn.Module):
    """``ln(x) * (1 + scale) + shift`` with ``(scale, shift) = ada_lin(cond)``."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        C = cfg.embed_dim
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x_BTC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BTC) * (scale + 1) + shift


class VAR(nn.Module):
    """The VAR transformer (see the module docstring for the sequence layout)."""

    family = "var"

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, S = cfg.embed_dim, cfg.num_scales
        self.vocab_size, self.num_classes, self.Cvae = cfg.vocab_size, cfg.num_classes, cfg.Cvae
        self.patch_nums, self.L, self.first_l = tuple(cfg.patch_nums), cfg.L, cfg.first_l
        self.begin_ends, self.num_stages_minus_1 = cfg.begin_ends, S - 1

        self.word_embed = nn.Linear(cfg.Cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.empty(1, cfg.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, cfg.L, C))
        self.lvl_embed = nn.Embedding(S, C)
        self.shared_ada_lin = (
            nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        )
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(AdaLNSelfAttn(cfg, i, dpr[i]) for i in range(cfg.depth))
        # official buffers (saved in checkpoints): level id per position and the additive
        # training mask; our masks are built from lvl_1L
        lvl_L = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(cfg.patch_nums)])
        self.register_buffer("lvl_1L", lvl_L[None].clone())
        bias_LL = torch.where(lvl_L[:, None] >= lvl_L[None, :], 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", bias_LL[None, None].contiguous())
        self.head_nm = AdaLNBeforeHead(cfg)
        self.head = nn.Linear(C, cfg.vocab_size)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(
        self,
        init_adaln: float = 0.5,
        init_adaln_gamma: float = 1e-5,
        init_head: float = 0.02,
        init_std: float = -1.0,
    ) -> None:
        """The official initialisation (``build_vae_var`` defaults; ``init_std < 0``: sqrt(1/3C))."""
        C, depth = self.cfg.embed_dim, self.cfg.depth
        std = (1 / C / 3) ** 0.5 if init_std < 0 else init_std
        for p in (self.pos_start, self.pos_1LC):  # the constructor's init, never redone officially
            nn.init.trunc_normal_(p, mean=0, std=(1 / C / 3) ** 0.5)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.zero_()
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
            block.attn.q_bias.zero_()
            block.attn.v_bias.zero_()
            if block.attn.attn_l2_norm:
                block.attn.scale_mul_1H11.fill_(math.log(4.0))
            if self.cfg.shared_aln:
                block.ada_gss.normal_().div_(C**0.5)
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                lin = block.ada_lin[-1]
                lin.weight[2 * C :].mul_(init_adaln)
                lin.weight[: 2 * C].mul_(init_adaln_gamma)
                lin.bias.zero_()

    # --- inputs -----------------------------------------------------------------------------

    def condition(self, label_B: torch.Tensor, drop_B: torch.Tensor | None = None) -> torch.Tensor:
        """``cond_BD = class_emb(label)``; rows with ``drop_B`` True get the null class."""
        if drop_B is not None:
            label_B = torch.where(drop_B.bool(), self.num_classes, label_B)
        return self.class_emb(label_B)

    def lvl_pos(self, start: int, stop: int) -> torch.Tensor:
        """``lvl_embed(level) + pos_1LC`` of positions ``start:stop``, ``[1, T, C]``."""
        return self.lvl_embed(self.lvl_1L[:, start:stop]) + self.pos_1LC[:, start:stop]

    def first_scale_input(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Transformer input of scale 0, ``[B, first_l, C]``."""
        B = cond_BD.shape[0]
        sos_BlC = cond_BD[:, None, :].expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
        return sos_BlC + self.lvl_pos(0, self.first_l)

    def scale_input(self, f_BTCv: torch.Tensor, start: int) -> torch.Tensor:
        """Transformer input ``[B, T, C]`` of VQ-VAE features ``[B, T, Cvae]`` at positions
        ``start .. start + T - 1`` (one or more whole scales, ``start >= first_l``)."""
        x_BTC = self.word_embed(f_BTCv.to(self.word_embed.weight.dtype))
        return x_BTC + self.lvl_pos(start, start + f_BTCv.shape[1])

    def block_causal_mask(self, start: int, stop: int) -> torch.Tensor:
        """Bool ``[stop - start, stop]``: may position ``start + t`` attend position ``s``?
        True iff ``level(s) <= level(start + t)``."""
        lvl_L = self.lvl_1L[0, :stop]
        return lvl_L[None, :] <= lvl_L[start:stop, None]

    def shared_cond(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """What blocks read: ``cond_BD`` itself, or ``[B, 1, 6, C]`` with ``shared_aln``."""
        if not self.cfg.shared_aln:
            return cond_BD
        return self.shared_ada_lin(cond_BD).view(-1, 1, 6, self.cfg.embed_dim)

    # --- forwards ---------------------------------------------------------------------------

    def forward(
        self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor, drop_B: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits ``[B, L, V]`` (float32) for every scale.

        Args:
            label_B: class ids ``[B]`` (``num_classes`` = null class).
            x_BLCv_wo_first_l: ``[B, L - first_l, Cvae]`` from ``idxBl_to_var_input``.
            drop_B: bool ``[B]``, rows whose label becomes the null class. None: in training
                mode drawn with ``cond_drop_rate``, in eval mode no dropout.
        """
        B = label_B.shape[0]
        if drop_B is None and self.training and self.cfg.cond_drop_rate > 0:
            drop_B = torch.rand(B, device=label_B.device) < self.cfg.cond_drop_rate
        cond_BD = self.condition(label_B, drop_B)
        sos_BlC = cond_BD[:, None, :].expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
        x_BLC = torch.cat((sos_BlC, self.word_embed(x_BLCv_wo_first_l.to(sos_BlC.dtype))), dim=1)
        x_BLC = x_BLC + self.lvl_pos(0, self.L)
        mask_11LL = self.block_causal_mask(0, self.L)[None, None]
        return self._run(x_BLC, cond_BD, None, None, mask_11LL)

    def forward_scale(
        self,
        x_BTC: torch.Tensor,
        cond_BD: torch.Tensor,
        cache: KVStore,
        slots_BT: torch.Tensor | None,
        mask_BTS: torch.Tensor | None,
    ) -> torch.Tensor:
        """Engine hook: logits ``[B, T, V]`` (float32) of a block of positions; writes the
        block's K/V into ``cache`` at ``slots_BT`` and attends where ``mask_BTS`` is True.

        With a ``StaticKVCache`` holding positions ``0 .. start-1`` (``lens_B == start``), run
        positions ``start .. stop-1`` (one scale, or several whole scales in one prefill) as::

            x = model.first_scale_input(cond) if start == 0 else model.scale_input(f, start)
            slots, mask = model.cache_step_inputs(cache, start, stop)
            logits = model.forward_scale(x, cond, cache, slots, mask)
            cache.commit(torch.full_like(cache.lens_B, stop - start))

        Slots equal positions in this usage; rollback is ``cache.rollback``. ``cond_BD`` is
        ``[B, D]`` (for CFG: conditional rows, then null-class rows). With a cache that only
        appends (the reference sampler's) pass ``slots_BT = mask_BTS = None``.
        """
        mask_B1TS = None if mask_BTS is None else mask_BTS[:, None]
        return self._run(x_BTC, cond_BD, cache, slots_BT, mask_B1TS)

    def cache_step_inputs(
        self, cache: StaticKVCache, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``slots_BT`` and ``mask_BTS`` for running positions ``start:stop`` after the cache's
        committed slots: committed slots are all visible (they hold earlier scales), and inside
        the block the block-causal rule applies. The slots are ``lens_B .. lens_B + T - 1``, so
        every row's ``lens_B`` must equal ``start`` (not checked: that would sync)."""
        T, B = stop - start, cache.batch
        block_BTT = self.block_causal_mask(start, stop)[:, start:].to(cache.device)
        return cache.slots(T), cache.attn_mask(T, block_BTT[None].expand(B, -1, -1))

    def new_cache(self, batch: int, capacity: int | None = None) -> StaticKVCache:
        """A zeroed cache for ``batch`` rows (2x the images under CFG) of ``capacity`` slots
        (default ``L``), in the weights' dtype and device."""
        p = self.head.weight
        return StaticKVCache(
            self.cfg.depth,
            batch,
            self.cfg.num_heads,
            capacity or self.L,
            self.cfg.head_dim,
            p.dtype,
            p.device,
        )

    def get_logits(self, h_BTC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """``head(head_nm(h, cond))`` as float32 (the head reads ``cond_BD``, never the shared one)."""
        return self.head(self.head_nm(h_BTC, cond_BD)).float()

    def _run(self, x_BTC, cond_BD, cache, slots_BT, mask_B1TS) -> torch.Tensor:
        cond_BD = cond_BD.to(x_BTC.dtype)
        cond_or_gss = self.shared_cond(cond_BD)
        for block in self.blocks:
            x_BTC = block(x_BTC, cond_or_gss, cache, slots_BT, mask_B1TS)
        return self.get_logits(x_BTC, cond_BD)
