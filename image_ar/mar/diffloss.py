"""MAR's Diffusion Loss (Li et al. 2024): a small AdaLN MLP that denoises one token given the
transformer's output ``z`` for it, in the official layout (LTH14/mar ``models/diffloss.py``).

Owns: ``DiffLoss`` (the training loss over tokens, the official sampler, ``final_gaussian``
for decoders that bring their own noise, and the sampling step count), ``SimpleMLPAdaLN`` and
its parts, with the official parameter names (``net.time_embed.mlp.{0,2}``, ``net.cond_embed``,
``net.input_proj``, ``net.res_blocks.i.{in_ln, mlp.{0,2}, adaLN_modulation.1}``,
``net.final_layer.{linear, adaLN_modulation.1}``; ``norm_final`` has no affine weights).

CFG rows: with ``cfg != 1`` the batch is ``[cond; uncond]``, both halves starting from the same
noise. ``forward_with_cfg`` runs the network on the first half's input under both conditions,
writes the guided eps ``uncond + cfg * (cond - uncond)`` into both halves and leaves each half
its own variance channels; only the first half of the result is a guided sample.

Must never: draw noise in ``final_gaussian``, or change weights in ``set_sampling_steps``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmaccel.image_ar.mar.diffusion import GaussianDiffusion, create_diffusion


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: ``x * (1 + scale) + shift``."""
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the (original, 0..999) timestep through ``Linear-SiLU-Linear``."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t_N: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """``[cos(t f_j), sin(t f_j)]`` with ``f_j = max_period ** (-j / (dim // 2))`` (a zero
        column appended when ``dim`` is odd), float32 ``[N, dim]``."""
        half = dim // 2
        freqs_H = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_N.device) / half
        )
        args_NH = t_N[:, None].float() * freqs_H[None]
        emb_ND = torch.cat([torch.cos(args_NH), torch.sin(args_NH)], dim=-1)
        if dim % 2:
            emb_ND = torch.cat([emb_ND, torch.zeros_like(emb_ND[:, :1])], dim=-1)
        return emb_ND

    def forward(self, t_N: torch.Tensor) -> torch.Tensor:
        t_freq_ND = self.timestep_embedding(t_N, self.frequency_embedding_size)
        return self.mlp(t_freq_ND.to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """``x + gate * MLP(modulate(LN(x), shift, scale))``, ``shift, scale, gate`` from the condition."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels, bias=True),
            nn.SiLU(),
            nn.Linear(channels, channels, bias=True),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels, bias=True))

    def forward(self, x_NW: torch.Tensor, y_NW: torch.Tensor) -> torch.Tensor:
        shift_NW, scale_NW, gate_NW = self.adaLN_modulation(y_NW).chunk(3, dim=-1)
        h_NW = self.mlp(modulate(self.in_ln(x_NW), shift_NW, scale_NW))
        return x_NW + gate_NW * h_NW


class FinalLayer(nn.Module):
    """DiT's final layer: ``linear(modulate(LN(x), shift, scale))`` (LN without affine weights)."""

    def __init__(self, model_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(model_channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(model_channels, out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(model_channels, 2 * model_channels, bias=True)
        )

    def forward(self, x_NW: torch.Tensor, c_NW: torch.Tensor) -> torch.Tensor:
        shift_NW, scale_NW = self.adaLN_modulation(c_NW).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x_NW), shift_NW, scale_NW))


class SimpleMLPAdaLN(nn.Module):
    """The denoiser: ``input_proj(x)`` through ``num_res_blocks`` AdaLN blocks conditioned on
    ``time_embed(t) + cond_embed(c)``; output ``[eps, v]`` (``out_channels = 2 * in_channels``)."""

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        z_channels: int,
        num_res_blocks: int,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.grad_checkpointing = grad_checkpointing
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = FinalLayer(model_channels, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official init: xavier-uniform linears with zero bias, N(0, 0.02) timestep MLP, and
        zero AdaLN modulations and output layer (the net starts by predicting ``eps = v = 0``)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_NC: torch.Tensor, t_N: torch.Tensor, c_NZ: torch.Tensor) -> torch.Tensor:
        """``[N, 2C]`` output for noisy tokens ``x_NC`` at original timesteps ``t_N`` under
        transformer outputs ``c_NZ``."""
        return self.forward_embedded(x_NC, self.time_embed(t_N) + self.cond_embed(c_NZ))

    def forward_embedded(self, x_NC: torch.Tensor, y_NW: torch.Tensor) -> torch.Tensor:
        """``forward`` with the condition ``y = time_embed(t) + cond_embed(c)`` already computed
        (a sampling chain embeds ``c`` once and every ``t`` once)."""
        x_NW = self.input_proj(x_NC)
        for block in self.res_blocks:
            if self.grad_checkpointing and self.training:
                x_NW = checkpoint(block, x_NW, y_NW, use_reentrant=False)
            else:
                x_NW = block(x_NW, y_NW)
        return self.final_layer(x_NW, y_NW)

    def fused_modulation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every AdaLN modulation linear (the blocks', then the final layer's) as one weight
        ``[M, W]`` and bias ``[M]``, with 1 added to the bias of each ``scale`` slot so that the
        product gives ``1 + scale`` directly (``forward_fused``)."""
        layers = [b.adaLN_modulation[1] for b in self.res_blocks] + [self.final_layer.adaLN_modulation[1]]
        bias = torch.cat([layer.bias for layer in layers]).clone()
        W, offset = self.model_channels, 0
        for layer in layers:  # chunks: shift, scale(, gate)
            bias[offset + W : offset + 2 * W] += 1
            offset += layer.out_features
        return torch.cat([layer.weight for layer in layers]), bias

    def forward_fused(
        self, x_NC: torch.Tensor, y_NW: torch.Tensor, mod_weight: torch.Tensor, mod_bias: torch.Tensor
    ) -> torch.Tensor:
        """``forward_embedded`` with the modulations of ``fused_modulation`` (one matmul for all
        blocks instead of one each, ``modulate`` and the gated residual as single ops): the same
        function, fewer operations, which is what a small batch pays for."""
        mods_NM = F.linear(F.silu(y_NW), mod_weight, mod_bias)
        W, o = self.model_channels, 0
        x_NW = self.input_proj(x_NC)
        for block in self.res_blocks:
            shift, scale1, gate = (
                mods_NM[:, o : o + W],
                mods_NM[:, o + W : o + 2 * W],
                mods_NM[:, o + 2 * W : o + 3 * W],
            )
            x_NW = torch.addcmul(x_NW, gate, block.mlp(torch.addcmul(shift, block.in_ln(x_NW), scale1)))
            o += 3 * W
        shift, scale1 = mods_NM[:, o : o + W], mods_NM[:, o + W : o + 2 * W]
        return self.final_layer.linear(torch.addcmul(shift, self.final_layer.norm_final(x_NW), scale1))

    def forward_with_cfg(
        self, x_NC: torch.Tensor, t_N: torch.Tensor, c_NZ: torch.Tensor, cfg_scale: float
    ) -> torch.Tensor:
        """CFG over a ``[cond; uncond]`` batch (see the module docstring): the first half of
        ``x_NC`` is run under both halves of ``c_NZ``; both halves get the guided eps, each keeps
        its own variance channels."""
        half_MC = x_NC[: len(x_NC) // 2]
        out_N2C = self.forward(torch.cat([half_MC, half_MC], dim=0), t_N, c_NZ)
        eps_NC, rest_NC = out_N2C[:, : self.in_channels], out_N2C[:, self.in_channels :]
        cond_eps_MC, uncond_eps_MC = torch.split(eps_NC, len(eps_NC) // 2, dim=0)
        guided_MC = uncond_eps_MC + cfg_scale * (cond_eps_MC - uncond_eps_MC)
        return torch.cat([torch.cat([guided_MC, guided_MC], dim=0), rest_NC], dim=1)


class DiffLoss(nn.Module):
    """Diffusion Loss over tokens of ``target_channels`` conditioned on ``z_channels`` vectors.

    Args:
        target_channels: channels of a token (``in_channels``).
        z_channels: width of the transformer output that conditions each token.
        depth, width: residual blocks and width of the MLP.
        num_sampling_steps: respacing of the sampling diffusion (``"100"`` or an int).
        grad_checkpointing: recompute MLP blocks in the backward pass.

    Training uses all 1000 cosine steps; sampling a respaced copy (``set_sampling_steps``).
    """

    def __init__(
        self,
        target_channels: int,
        z_channels: int,
        depth: int,
        width: int,
        num_sampling_steps: str | int,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(
            in_channels=target_channels,
            model_channels=width,
            out_channels=target_channels * 2,  # eps and the variance interpolation v
            z_channels=z_channels,
            num_res_blocks=depth,
            grad_checkpointing=grad_checkpointing,
        )
        self.train_diffusion = create_diffusion(timestep_respacing="", noise_schedule="cosine")
        self.set_sampling_steps(num_sampling_steps)

    def set_sampling_steps(self, n: str | int) -> None:
        """Rebuild the sampling diffusion with ``n`` respaced steps (the weights do not change)."""
        self.gen_diffusion: GaussianDiffusion = create_diffusion(
            timestep_respacing=str(n), noise_schedule="cosine"
        )
        self.num_sampling_steps: int = self.gen_diffusion.num_timesteps

    def _model_fn(self, z_NZ: torch.Tensor, cfg: float):
        # The net may be in another dtype than the float32 chain (e.g. bf16 weights): cast at the edges.
        dtype = self.net.input_proj.weight.dtype
        z_NZ = z_NZ.to(dtype)
        if cfg != 1.0:
            return lambda x_NC, t_N: self.net.forward_with_cfg(x_NC.to(dtype), t_N, z_NZ, cfg).float()
        return lambda x_NC, t_N: self.net(x_NC.to(dtype), t_N, z_NZ).float()

    def forward(
        self, target: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The training loss: mean over rows (over rows with ``mask == 1`` when given) of
        ``mse + vb`` at a uniformly drawn timestep per row.

        Args:
            target: ``[N, C]`` clean tokens.
            z: ``[N, Z]`` transformer outputs.
            mask: ``[N]`` row weights (MAR: 1 for the masked tokens).
        """
        t_N = torch.randint(0, self.train_diffusion.num_timesteps, (target.shape[0],), device=target.device)
        loss_N = self.train_diffusion.training_losses(lambda x, t: self.net(x, t, z), target, t_N)["loss"]
        if mask is not None:
            loss_N = (loss_N * mask).sum() / mask.sum()
        return loss_N.mean()

    @torch.no_grad()
    def final_gaussian(
        self,
        z: torch.Tensor,
        x_T: torch.Tensor,
        inter_noise: torch.Tensor,
        temperature: float = 1.0,
        cfg: float | torch.Tensor = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the last sampling step, all earlier noise given (as
        ``GaussianDiffusion.final_gaussian``: ``inter_noise[k]`` is the noise of the k-th step
        run, shape ``[num_sampling_steps - 1, N, C]``).

        Guidance (``cfg`` a number != 1, or a tensor ``[N // 2, 1]``: one scale per row): ``z``
        is ``[cond; uncond]`` and ``x_T`` / ``inter_noise`` are ``[x; x]`` as in the official
        ``sample``; the guided chain's ``[N // 2, C]`` mean and std are returned (the official
        sampler's second half is never read: ``forward_with_cfg`` runs both halves on the first).
        Without guidance: ``[N, C]``.

        The chain of ``gen_diffusion.final_gaussian`` over ``forward`` / ``forward_with_cfg``
        (equal up to float rounding), with fewer operations per step, which is what decides its
        cost at a small batch: ``cond_embed(z)`` and the timestep embeddings once per chain, every
        AdaLN modulation in one matmul (``SimpleMLPAdaLN.forward_fused``), and the step's
        posterior mean and standard deviation each folded into one affine map of the net's output
        with numbers precomputed per step (``GaussianDiffusion.step_coefficients``).
        """
        d = self.gen_diffusion
        S, (N, C) = d.num_timesteps, x_T.shape
        if inter_noise.shape != (S - 1, N, C):
            raise ValueError(f"inter_noise must have shape {(S - 1, N, C)}, got {tuple(inter_noise.shape)}")
        net, dtype = self.net, self.net.input_proj.weight.dtype
        guided = torch.is_tensor(cfg) or cfg != 1.0
        half = N // 2 if guided else N
        t_emb_SW = net.time_embed(torch.tensor(d.timestep_map, device=z.device))
        c_emb_NW = net.cond_embed(z.to(dtype))
        mod_weight, mod_bias = net.fused_modulation()
        log_temperature = math.log(temperature)
        x_NC, noise_SNC = x_T[:half].float(), inter_noise[:, :half]
        for t in range(S - 1, -1, -1):
            x_in = torch.cat([x_NC, x_NC]) if guided else x_NC  # both halves run on the first, as official
            out = net.forward_fused(x_in.to(dtype), t_emb_SW[t] + c_emb_NW, mod_weight, mod_bias).float()
            eps_NC, v_NC = out[:half, :C], out[:half, C:]
            if guided:  # uncond + cfg * (cond - uncond)
                eps_NC = torch.lerp(out[half:, :C], eps_NC, cfg)
            k = d.step_coefficients()[t]
            mean_NC = torch.add(x_NC * k["mean_x"], eps_NC, alpha=-k["mean_eps"])
            std_NC = (v_NC * k["log_std_v"]).add_(k["log_std"] + log_temperature).exp_()
            if t > 0:
                x_NC = torch.addcmul(mean_NC, std_NC, noise_SNC[S - 1 - t])
        return mean_NC, std_NC

    def sample(
        self,
        z: torch.Tensor,
        temperature: float = 1.0,
        cfg: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The official sampler: ``x_T`` drawn once (duplicated over the halves with CFG), then
        ``sample_official``. Returns ``[N, C]`` (with CFG, keep the first half)."""
        n = z.shape[0] // 2 if cfg != 1.0 else z.shape[0]
        x_T_NC = torch.randn(n, self.in_channels, generator=generator, device=z.device)
        if cfg != 1.0:
            x_T_NC = torch.cat([x_T_NC, x_T_NC], dim=0)
        return self.gen_diffusion.sample_official(self._model_fn(z, cfg), x_T_NC, temperature, generator)
