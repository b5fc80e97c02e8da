"""A MAR model as the core's ``mmaccel.masked_set.MaskedSetModel``.

Owns: ``MARMaskedSet``, the thin view the decode loop drives: the class condition (the class
embedding, and ``fake_latent`` for the unconditional rows of guidance), one encoder-decoder
forward over the known tokens (MAR's ``forward_mae_encoder`` / ``forward_mae_decoder``, masked
positions dropped from the encoder), and the diffusion head's final-step Gaussian with every
earlier noise given (``DiffLoss.final_gaussian``; with guidance the head runs on the doubled rows
as the official ``forward_with_cfg`` does and the guided half is returned).

Must never: draw random numbers (the core hands in all noise) or change the model's weights.
"""

from __future__ import annotations

import torch

from mmaccel.acceptors.distributions import Gaussian


class MARMaskedSet:
    """``mar`` (an ``image_ar.mar.model.MAR``) seen through the masked-set protocol."""

    def __init__(self, mar: torch.nn.Module) -> None:
        self.mar = mar.eval()
        self.seq_len: int = mar.seq_len
        self.token_dim: int = mar.token_embed_dim

    @property
    def head_steps(self) -> int:
        """Denoising steps of the head's sampler (``set_head_steps`` changes them)."""
        return int(self.mar.diffloss.num_sampling_steps)

    def set_head_steps(self, n: int) -> None:
        """Respace the head's sampler to ``n`` evenly strided steps from t = 0 (official ``ddimN``;
        a respacing that keeps t = 999 diverges on briefly trained heads); weights unchanged."""
        self.mar.diffloss.set_sampling_steps(f"ddim{n}")

    @torch.no_grad()
    def condition(self, labels_B: torch.Tensor, guided: bool) -> torch.Tensor:
        cond_BD = self.mar.class_emb(labels_B)
        if guided:
            cond_BD = torch.cat([cond_BD, self.mar.fake_latent.expand(len(labels_B), -1)])
        return cond_BD

    @torch.no_grad()
    def conditions(
        self, tokens_BLC: torch.Tensor, known_BL: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        mask_BL = (~known_BL).float()  # MAR's mask: 1 = unknown
        x = self.mar.forward_mae_encoder(tokens_BLC, mask_BL, cond)
        return self.mar.forward_mae_decoder(x, mask_BL)

    @torch.no_grad()
    def head(self, z_ND: torch.Tensor, x_T_NC: torch.Tensor, inter_SNC: torch.Tensor, temperature: float,
             cfg: float | torch.Tensor) -> Gaussian:  # fmt: skip
        return Gaussian(*self.mar.diffloss.final_gaussian(z_ND, x_T_NC, inter_SNC, temperature, cfg))
