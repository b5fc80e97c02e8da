"""Multi-scale residual VQ-VAE of VAR (Tian et al. 2024, "Visual Autoregressive Modeling:
Scalable Image Generation via Next-Scale Prediction", Alg. 1 and 2), written so the official
``vae_ch160v4096z32.pth`` loads key for key.

Owns: ``VQVAE`` (encoder, decoder, ``quant_conv`` / ``post_quant_conv``) and its quantizer
``VectorQuantizer2`` with the Phi refiners.

Residual quantization over scales k = 1..K with sides ``patch_nums`` (small to large), on a
latent f of side ``h = patch_nums[-1]``::

    r_k   = area_resize(f - f_hat_{k-1}, pn_k)          (no resize at the last scale)
    idx_k = nearest code of each cell of r_k
    f_hat_k = f_hat_{k-1} + phi_k(bicubic_resize(embed(idx_k), h))

``phi_k(x) = (1 - r) x + r conv3x3(x)`` with r = ``quant_resi``; with ``share_quant_resi = n > 1``
there are n Phi layers at "ticks" in [0, 1] and scale k uses the one nearest to
``k / (K - 1)`` (first on a tie), as official.

The transformer's view (``idxBl_to_var_input``, ``get_next_autoregressive_input``): the input
of scale k+1 is ``area_resize(f_hat_k, pn_{k+1})``, flattened row-major to ``[B, pn^2, Cvae]``.

Images are ``[B, 3, H, W]`` in [-1, 1]; index maps are ``[B, pn * pn]`` row-major.

Must never: keep generation state between calls (``get_next_autoregressive_input`` returns a
new ``f_hat`` rather than adding in place as the official code does) or print.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmaccel.image_ar.var.config import VQVAEConfig
from mmaccel.image_ar.var.vae_blocks import Decoder, Encoder


class Phi(nn.Conv2d):
    """``(1 - r) x + r conv3x3(x)``: the residual refiner applied to each upsampled scale."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        conv = super().forward(h_BChw.to(self.weight.dtype)).to(h_BChw.dtype)
        return h_BChw * (1 - self.resi_ratio) + conv * self.resi_ratio


def _ticks(k: int) -> np.ndarray:
    # official positions of k Phi layers in [0, 1]; numpy so ties resolve exactly as official
    return np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)


class QuantResi(nn.Module):
    """The Phi layers, registered under the official names for each sharing mode.

    ``share_quant_resi`` 0: children ``"0" .. "K-1"``; 1: ``qresi``; n > 1: ``qresi_ls.0 .. n-1``.
    """

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        C, r, share = cfg.z_channels, cfg.quant_resi, cfg.share_quant_resi

        def make() -> nn.Module:
            return Phi(C, r) if abs(r) > 1e-6 else nn.Identity()

        self.share = share
        if share == 0:
            for i in range(cfg.default_qresi_counts or len(cfg.patch_nums)):
                self.add_module(str(i), make())
        elif share == 1:
            self.qresi = make()
        else:
            self.qresi_ls = nn.ModuleList(make() for _ in range(share))
        # the Phi of each scale of this tokenizer's pyramid, chosen once here (plain ints, so a
        # compiled step never traces the numpy tie-breaking)
        S = len(cfg.patch_nums)
        self._scale_index = [self._index(si / (S - 1)) for si in range(S)] if S > 1 else [0]

    def _index(self, position: float) -> int:
        k = len(self._layers())
        return 0 if k == 1 else int(np.argmin(np.abs(_ticks(k) - position)))

    def _layers(self) -> list[nn.Module]:
        if self.share == 0:
            return list(self.children())
        if self.share == 1:
            return [self.qresi]
        return list(self.qresi_ls)

    def at(self, position: float) -> nn.Module:
        """The Phi for a scale at ``position`` in [0, 1] (scale k of K: ``k / (K - 1)``)."""
        if self.share == 1:
            return self.qresi
        layers = self._layers()
        return layers[int(np.argmin(np.abs(_ticks(len(layers)) - position)))]

    def for_scale(self, si: int, num_scales: int) -> nn.Module:
        if num_scales == len(self._scale_index):
            return self._layers()[self._scale_index[si]]
        return self.at(si / (num_scales - 1))


class VectorQuantizer2(nn.Module):
    """Codebook ``embedding`` ``[V, Cvae]``, the Phi layers ``quant_resi`` and the training
    statistic ``ema_vocab_hit_SV`` ``[num_scales, V]`` (a buffer, saved in checkpoints)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.Cvae = cfg.vocab_size, cfg.z_channels
        self.v_patch_nums = tuple(cfg.patch_nums)
        self.quant_resi = QuantResi(cfg)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(cfg.patch_nums), cfg.vocab_size))
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        self.record_hit = 0

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index ``[N]`` of the nearest codebook row (cosine with ``using_znorm``, else Euclidean)."""
        e_VC = self.embedding.weight.detach().to(z_NC.dtype)
        if self.cfg.using_znorm:
            return (F.normalize(z_NC, dim=-1) @ F.normalize(e_VC, dim=-1).T).argmax(dim=1)
        # |z|^2 + |e|^2 - 2 z.e, the official expansion (argmin is sensitive to its rounding)
        d_NV = z_NC.square().sum(1, keepdim=True) + e_VC.square().sum(1)
        d_NV.addmm_(z_NC, e_VC.T, alpha=-2, beta=1)
        return d_NV.argmin(dim=1)

    def _sum_dtype(self) -> torch.dtype:
        # the official sums run in float32; float64 models keep float64
        return torch.promote_types(torch.float32, self.embedding.weight.dtype)

    def _upsampled(self, h_BChw: torch.Tensor, si: int, num_scales: int, side: int) -> torch.Tensor:
        if si != num_scales - 1:
            h_BChw = F.interpolate(h_BChw, size=(side, side), mode="bicubic")
        return self.quant_resi.for_scale(si, num_scales)(h_BChw)

    def f_to_idxBl_or_fhat(
        self, f_BChw: torch.Tensor, to_fhat: bool, patch_nums: tuple[int, ...] | None = None
    ) -> list[torch.Tensor]:
        """Quantize a latent scale by scale: index maps ``[B, pn*pn]`` or the running ``f_hat``
        ``[B, C, h, w]`` after each scale. ``patch_nums`` overrides the configured scales."""
        B, C, H, W = f_BChw.shape
        pns = tuple(patch_nums or self.v_patch_nums)
        if pns[-1] != H or pns[-1] != W:
            raise ValueError(f"the last scale {pns[-1]} must equal the latent side, got {H}x{W}")
        S = len(pns)
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        out = []
        for si, pn in enumerate(pns):
            r_BChw = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != S - 1 else f_rest
            idx_N = self.nearest_code(r_BChw.permute(0, 2, 3, 1).reshape(-1, C))
            h_BChw = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2).to(f_hat.dtype)
            h_BChw = self._upsampled(h_BChw.contiguous(), si, S, H)
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, pn * pn))
        return out

    def embed_to_fhat(
        self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool = True, last_one: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Sum the code maps of each scale (``[B, C, pn, pn]``) into ``f_hat`` (float32, or
        float64 for a float64 model).

        ``all_to_max_scale`` (the real decoding path) upsamples every scale to the last side;
        otherwise (experimental, official too) the running sum is resized scale by scale.
        Returns every partial sum, or only the last with ``last_one``.
        """
        B, S, H = ms_h_BChw[0].shape[0], len(self.v_patch_nums), self.v_patch_nums[-1]
        dtype = self._sum_dtype()
        outs = []
        if all_to_max_scale:
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, H, H, dtype=dtype)
            for si in range(S):
                f_hat = f_hat + self._upsampled(ms_h_BChw[si], si, S, H)
                outs.append(f_hat)
        else:
            pn0 = self.v_patch_nums[0]
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, pn0, pn0, dtype=dtype)
            for si, pn in enumerate(self.v_patch_nums):
                f_hat = F.interpolate(f_hat, size=(pn, pn), mode="bicubic")
                f_hat = f_hat + self.quant_resi.for_scale(si, S)(ms_h_BChw[si])
                outs.append(f_hat)
        return outs[-1] if last_one else outs

    def idxBl_to_var_input(self, gt_ms_idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input ``[B, L - first_l, Cvae]`` (float32, or float64 for a float64
        model): for each scale k >= 1,
        ``area_resize(f_hat_{k-1}, pn_k)`` flattened row-major, concatenated over scales."""
        B, C = gt_ms_idx_Bl[0].shape[0], self.Cvae
        pns, S, H = self.v_patch_nums, len(self.v_patch_nums), self.v_patch_nums[-1]
        f_hat = torch.zeros(B, C, H, H, dtype=self._sum_dtype(), device=gt_ms_idx_Bl[0].device)
        next_scales = []
        for si in range(S - 1):
            h_BChw = self.embedding(gt_ms_idx_Bl[si]).transpose(1, 2).reshape(B, C, pns[si], pns[si])
            f_hat = f_hat + self._upsampled(h_BChw.to(f_hat.dtype), si, S, H)
            nxt = F.interpolate(f_hat, size=(pns[si + 1], pns[si + 1]), mode="area")
            next_scales.append(nxt.reshape(B, C, -1).transpose(1, 2))
        return torch.cat(next_scales, dim=1)

    def get_next_autoregressive_input(
        self, si: int, SN: int, f_hat: torch.Tensor, h_BChw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add scale ``si``'s codes ``h_BChw`` (``[B, C, pn, pn]``) to ``f_hat``; return the new
        ``f_hat`` and the next scale's input map ``[B, C, pn_next, pn_next]`` (``f_hat`` itself
        after the last scale)."""
        H = self.v_patch_nums[-1]
        f_hat = f_hat + self._upsampled(h_BChw.to(f_hat.dtype), si, SN, H)
        if si == SN - 1:
            return f_hat, f_hat
        pn = self.v_patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")

    def forward(self, f_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: straight-through ``f_hat`` and the VQ loss (commitment ``beta`` + codebook),
        averaged over scales. Updates ``ema_vocab_hit_SV`` in training mode."""
        f = f_BChw.float()
        B, C, H, W = f.shape
        f_no_grad = f.detach()
        f_rest, f_hat = f_no_grad.clone(), torch.zeros_like(f_no_grad)
        S, loss = len(self.v_patch_nums), f.new_zeros(())
        for si, pn in enumerate(self.v_patch_nums):
            r_BChw = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != S - 1 else f_rest
            idx_N = self.nearest_code(r_BChw.permute(0, 2, 3, 1).reshape(-1, C))
            if self.training:
                hit_V = idx_N.bincount(minlength=self.vocab_size).float()
                rate = 1.0 if self.record_hit == 0 else (0.1 if self.record_hit < 100 else 0.01)
                self.ema_vocab_hit_SV[si].mul_(1 - rate).add_(hit_V * rate)
                self.record_hit += 1
            h_BChw = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2).float()
            h_BChw = self._upsampled(h_BChw.contiguous(), si, S, H)
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw.detach()
            loss = loss + F.mse_loss(f_hat.detach(), f) * self.cfg.beta + F.mse_loss(f_hat, f_no_grad)
        f_hat = (f_hat.detach() - f_no_grad) + f  # straight-through to the encoder
        return f_hat.to(f_BChw.dtype), loss / S


class VQVAE(nn.Module):
    """The VAR tokenizer: ``img_to_idxBl`` (image -> index map per scale) and
    ``idxBl_to_img`` / ``fhat_to_img`` (back to an image in [-1, 1])."""

    family = "var"

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.V, self.Cvae, self.vocab_size = cfg.vocab_size, cfg.z_channels, cfg.vocab_size
        self.downsample = cfg.downsample
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer2(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, 1, ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, 1, ks // 2)

    def forward(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: reconstruction (not clamped) and the VQ loss."""
        f_hat, vq_loss = self.quantize(self.img_to_f(img_B3HW))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss

    def img_to_f(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Continuous latent ``[B, Cvae, h, w]`` before quantization."""
        return self.quant_conv(self.encoder(img_B3HW))

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decode a summed latent ``[B, Cvae, h, w]`` to an image in [-1, 1]."""
        p = self.post_quant_conv.weight
        return self.decoder(self.post_quant_conv(f_hat.to(p.dtype))).clamp(-1, 1)

    @torch.no_grad()
    def img_to_idxBl(
        self, img_B3HW: torch.Tensor, patch_nums: tuple[int, ...] | None = None
    ) -> list[torch.Tensor]:
        """Index maps ``[B, pn * pn]`` (int64, row-major) of each scale, small to large."""
        return self.quantize.f_to_idxBl_or_fhat(self.img_to_f(img_B3HW), False, patch_nums)

    def idxBl_to_img(
        self, ms_idx_Bl: list[torch.Tensor], same_shape: bool = True, last_one: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Images after each scale (or only the final one with ``last_one``), in [-1, 1]."""
        B = ms_idx_Bl[0].shape[0]
        ms_h_BChw = []
        for idx_Bl in ms_idx_Bl:
            pn = round(idx_Bl.shape[1] ** 0.5)
            ms_h_BChw.append(self.quantize.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn))
        return self.embed_to_img(ms_h_BChw, all_to_max_scale=same_shape, last_one=last_one)

    def embed_to_img(
        self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool, last_one: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Code maps per scale (``[B, Cvae, pn, pn]``) -> image(s) in [-1, 1]."""
        f_hats = self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=all_to_max_scale, last_one=last_one)
        if last_one:
            return self.fhat_to_img(f_hats)
        return [self.fhat_to_img(f) for f in f_hats]

    @torch.no_grad()
    def img_to_reconstructed_img(
        self, img_B3HW: torch.Tensor, patch_nums: tuple[int, ...] | None = None, last_one: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Quantize then decode: the image after each scale, or only the final one."""
        f_hats = self.quantize.f_to_idxBl_or_fhat(self.img_to_f(img_B3HW), True, patch_nums)
        if last_one:
            return self.fhat_to_img(f_hats[-1])
        return [self.fhat_to_img(f) for f in f_hats]
