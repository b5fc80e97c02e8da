"""Reference next-scale sampler of VAR with classifier-free guidance, equivalent in semantics
(and in its random-number consumption) to the official ``VAR.autoregressive_infer_cfg`` with
``more_smooth=False``.

Owns: ``autoregressive_infer_cfg`` (the plain loop the engine's ``code`` / ``ar`` paths are
checked against), ``sample_with_top_k_top_p`` (the official filter + multinomial draw) and
``GrowingKVCache`` (keys/values appended by concatenation, nothing preallocated).

Per scale k of K (``ratio = k / (K - 1)``): one forward of the doubled batch (conditional rows
first, null-class rows after), ``t = cfg * ratio`` and
``logits = (1 + t) * logits_cond - t * logits_uncond``, top-k / top-p filtering, one
multinomial draw per token, then the VQ-VAE turns the codes into the next scale's input.

Must never: be used for speed (it re-allocates the cache each scale and syncs freely); it is
the correctness reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmaccel.image_ar.var.config import check_compatible
from mmaccel.image_ar.var.model import VAR
from mmaccel.image_ar.var.vqvae import VQVAE


class GrowingKVCache:
    """Per-layer keys/values ``[B, H, S, D]`` that grow by concatenation (slots are ignored)."""

    def __init__(self, num_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers

    def update(
        self, layer: int, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor, slots_BT: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this block's keys/values to ``layer``; return all of them."""
        if self.k[layer] is not None:
            k_BHTD = torch.cat((self.k[layer], k_BHTD), dim=2)
            v_BHTD = torch.cat((self.v[layer], v_BHTD), dim=2)
        self.k[layer], self.v[layer] = k_BHTD, v_BHTD
        return k_BHTD, v_BHTD


def sample_with_top_k_top_p(
    logits_BlV: torch.Tensor,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
) -> torch.Tensor:
    """Codes ``[B, l, num_samples]`` drawn from ``softmax(filtered logits)``.

    top-k (``top_k > 0``): drop logits below the k-th largest (ties with it stay).
    top-p (``top_p > 0``): sort ascending, drop the tokens whose cumulative probability is
    ``<= 1 - top_p`` (the largest always stays). ``num_samples < 0`` draws ``|num_samples|``
    without replacement. Does not modify ``logits_BlV``.
    """
    B, n, V = logits_BlV.shape
    logits = logits_BlV.clone()
    if top_k > 0:
        kth_Bl1 = logits.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits = logits.masked_fill(logits < kth_Bl1, -torch.inf)
    if top_p > 0:
        sorted_BlV, order_BlV = logits.sort(dim=-1, descending=False)
        drop_sorted = sorted_BlV.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits = logits.masked_fill(drop_sorted.scatter(-1, order_BlV, drop_sorted), -torch.inf)
    probs_NV = logits.softmax(dim=-1).view(-1, V)
    idx_N = torch.multinomial(probs_NV, abs(num_samples), replacement=num_samples >= 0, generator=generator)
    return idx_N.view(B, n, abs(num_samples))


@dataclass
class VARSample:
    """Output of ``autoregressive_infer_cfg``.

    Attributes:
        idx_Bl: sampled codes per scale, ``[B, pn * pn]`` each.
        f_hat: the summed VQ-VAE latent ``[B, Cvae, h, w]``.
        images: decoded images ``[B, 3, H, W]`` in [0, 1] (None with ``decode=False``).
        logits_BlV: the guided logits each scale was sampled from (only with ``keep_logits``).
        labels_B: the class ids used.
    """

    idx_Bl: list[torch.Tensor]
    f_hat: torch.Tensor
    images: torch.Tensor | None
    logits_BlV: list[torch.Tensor] | None
    labels_B: torch.Tensor


@torch.no_grad()
def autoregressive_infer_cfg(
    var: VAR,
    vqvae: VQVAE,
    B: int,
    label_B: int | torch.Tensor | None,
    g_seed: int | None = None,
    cfg: float = 1.5,
    top_k: int = 0,
    top_p: float = 0.0,
    decode: bool = True,
    keep_logits: bool = False,
) -> VARSample:
    """Sample ``B`` images scale by scale with classifier-free guidance.

    Args:
        var, vqvae: the transformer and its tokenizer (scales, vocabulary and code width must
            match, else ``ValueError`` before any work).
        B: images.
        label_B: class ids ``[B]``; an int for all rows (negative = the null class); None =
            uniform random classes drawn from the sampler's generator.
        g_seed: seed of a fresh generator on the model's device (None: the global RNG).
        cfg: guidance strength at the last scale; scale k uses ``cfg * k / (K - 1)``.
        top_k, top_p: filters as ``sample_with_top_k_top_p`` (0 = off).
        decode: decode ``f_hat`` to images.
        keep_logits: return the guided logits of every scale.
    """
    check_compatible(var.cfg, vqvae.cfg)
    device = var.head.weight.device
    rng = None if g_seed is None else torch.Generator(device=device).manual_seed(g_seed)
    if label_B is None:
        uniform_1K = torch.full((1, var.num_classes), 1.0 / var.num_classes, device=device)
        label_B = torch.multinomial(uniform_1K, B, replacement=True, generator=rng).reshape(B)
    elif isinstance(label_B, int):
        label_B = torch.full((B,), var.num_classes if label_B < 0 else label_B, device=device)
    label_B = label_B.to(device=device, dtype=torch.long)

    quant = vqvae.quantize
    S, last = len(var.patch_nums), var.patch_nums[-1]
    cond_2BD = var.condition(torch.cat((label_B, torch.full_like(label_B, var.num_classes))))
    x_2BlC = var.first_scale_input(cond_2BD)
    cache = GrowingKVCache(var.cfg.depth)
    f_hat = cond_2BD.new_zeros(B, var.Cvae, last, last)
    idx_list, logits_list = [], []
    for si, (_, end) in enumerate(var.begin_ends):
        pn = var.patch_nums[si]
        logits_2BlV = var.forward_scale(x_2BlC, cond_2BD, cache, None, None)
        t = cfg * (si / var.num_stages_minus_1)
        logits_BlV = (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]
        idx_Bl = sample_with_top_k_top_p(logits_BlV, top_k=top_k, top_p=top_p, generator=rng)[:, :, 0]
        idx_list.append(idx_Bl)
        if keep_logits:
            logits_list.append(logits_BlV)
        h_BChw = quant.embedding(idx_Bl).transpose(1, 2).reshape(B, var.Cvae, pn, pn)
        f_hat, next_BChw = quant.get_next_autoregressive_input(si, S, f_hat, h_BChw)
        if si != S - 1:
            next_BlCv = next_BChw.reshape(B, var.Cvae, -1).transpose(1, 2)
            x_2BlC = var.scale_input(next_BlCv, end).repeat(2, 1, 1)
    images = vqvae.fhat_to_img(f_hat).add(1).mul(0.5) if decode else None
    return VARSample(idx_list, f_hat, images, logits_list if keep_logits else None, label_B)
