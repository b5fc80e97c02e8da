"""The Gaussian diffusion subset MAR's Diffusion Loss uses (Nichol & Dhariwal 2021, "Improved
Denoising Diffusion Probabilistic Models"), written from LTH14/mar ``diffusion/``.

Owns: beta schedules (``cosine``, ``linear``), timestep respacing (``space_timesteps``),
``create_diffusion`` with MAR's settings (epsilon prediction, learned-range variance, loss
``mse + vb``), the training loss, ``p_mean_variance``, and two samplers:

- ``final_gaussian``: every noise from the caller. Runs the chain down to the last step and
  returns that step's Gaussian (mean, std) instead of its mean, so a decoder can draw the
  last sample itself, or share all noises between two models.
- ``sample_official``: the official ``p_sample_loop`` (noise at every step but the last,
  whose mean is returned), for tests and the reference sampler.

Equations (``a_t = 1 - beta_t``, ``abar_t = prod_{s<=t} a_s``, ``abar_{-1} = 1``):
    x0_hat = sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps
    mean   = coef1_t x0_hat + coef2_t x_t          (posterior q(x_{t-1} | x_t, x0_hat))
    log var = f log(beta_t) + (1 - f) log(post_var_t),  f = (v + 1) / 2
where ``eps, v`` are the two halves of the model output and ``post_var_0`` is clipped to
``post_var_1`` (the true one is 0). Tables are computed in float64 and used in float32, as
official.

Must never: draw noise inside ``final_gaussian``, or differentiate through sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

# model_fn(x_NC, t_N) -> out_N2C: eps in the first C channels, v in [-1, 1] in the last C; t_N
# are timesteps of the original 1000-step process (the diffusion maps respaced steps to them).
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_TABLES = (
    "betas", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1", "posterior_mean_coef2",
    "posterior_log_variance_clipped", "log_betas",
)  # fmt: skip


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule ``abar(s) = cos((s + 0.008) / 1.008 * pi / 2) ** 2``,
    ``beta_i = min(1 - abar((i + 1) / T) / abar(i / T), max_beta)``."""

    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)],
        dtype=np.float64,
    )


def linear_betas(num_steps: int) -> np.ndarray:
    """Ho et al.'s linear schedule, 1e-4 to 0.02 scaled by ``1000 / num_steps``."""
    scale = 1000 / num_steps
    return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | list[int]) -> set[int]:
    """The original timesteps kept by respacing: the process is cut into ``len(section_counts)``
    near-equal sections and section i keeps ``section_counts[i]`` evenly spaced steps (rounded),
    its first and last step included. ``"100"`` of 1000 keeps 0, 10, 20, ... (stride 999/99).
    ``"ddimN"`` (official too) keeps ``range(0, num_timesteps, stride)`` for the stride giving N
    steps: the last step kept is then not the pure-noise end, where ``1 / sqrt(abar)`` is about
    1e4 on the cosine schedule and a small error in the predicted noise sends the chain off."""
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim") :])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return set(range(0, num_timesteps, stride))
        raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
    if isinstance(section_counts, str):
        section_counts = [int(c) for c in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, set()
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        kept |= {start + round(j * stride) for j in range(count)}
        start += size
    return kept


def _step_numbers(tables: dict[str, np.ndarray], t: int) -> dict[str, float]:
    """``p_mean_variance`` at step t folded into numbers (float64): the posterior mean of the
    predicted x0 and ``log_var = frac * log_beta + (1 - frac) * log_post`` with ``frac = (v + 1) / 2``."""
    c1, c2 = tables["posterior_mean_coef1"][t], tables["posterior_mean_coef2"][t]
    lb, lp = tables["log_betas"][t], tables["posterior_log_variance_clipped"][t]
    return {
        "mean_x": float(c1 * tables["sqrt_recip_alphas_cumprod"][t] + c2),
        "mean_eps": float(c1 * tables["sqrt_recipm1_alphas_cumprod"][t]),
        "log_std": float(0.5 * lp + 0.25 * (lb - lp)),
        "log_std_v": float(0.25 * (lb - lp)),
    }


class GaussianDiffusion:
    """A (respaced) diffusion with epsilon prediction and learned-range variance.

    Args:
        base_betas: betas of the full process (1000 steps in MAR).
        use_timesteps: the original steps kept; the new betas are
            ``1 - abar_i / abar_prev_kept`` (the official ``SpacedDiffusion``).
    """

    def __init__(self, base_betas: np.ndarray, use_timesteps: set[int]) -> None:
        alphas_cumprod = np.cumprod(1.0 - base_betas)
        self.timestep_map = sorted(i for i in use_timesteps if i < len(base_betas))
        last, betas = 1.0, []
        for i in self.timestep_map:
            betas.append(1 - alphas_cumprod[i] / last)
            last = alphas_cumprod[i]
        betas = np.array(betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        if self.num_timesteps < 2:
            raise ValueError(
                "a diffusion needs at least 2 steps (the last variance is clipped to the second)"
            )
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        tables64 = {
            "betas": betas,
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1),
            "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar),
            # the true posterior variance at step 0 is 0: clipped to step 1's, as official
            "posterior_log_variance_clipped": np.log(
                np.append(posterior_variance[1], posterior_variance[1:])
            ),
            "log_betas": np.log(betas),
        }
        self.alphas_cumprod = abar
        cpu = torch.device("cpu")
        self._tables = {cpu: {k: torch.from_numpy(tables64[k]).float() for k in _TABLES}}
        self._maps = {cpu: torch.tensor(self.timestep_map, dtype=torch.long, device=cpu)}
        self._coefficients = [_step_numbers(tables64, t) for t in range(self.num_timesteps)]

    def step_coefficients(self) -> list[dict[str, float]]:
        """Per respaced step t, ``p(x_{t-1} | x_t)`` as affine maps of the model output (for a
        chain whose rows all share t): ``mean = mean_x * x - mean_eps * eps`` and
        ``log std = log_std + log_std_v * v`` (``v`` the learned-range channel)."""
        return self._coefficients

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        # One copy per device, made once: no host-to-device copy inside a sampling step.
        if device not in self._tables:
            self._tables[device] = {k: v.to(device) for k, v in self._tables[torch.device("cpu")].items()}
            self._maps[device] = self._maps[torch.device("cpu")].to(device)
        return self._tables[device]

    def _coef(self, name: str, t_N: torch.Tensor) -> torch.Tensor:
        return self._on(t_N.device)[name][t_N].unsqueeze(1)  # [N, 1]

    def _run(self, model_fn: ModelFn, x_NC: torch.Tensor, t_N: torch.Tensor) -> torch.Tensor:
        self._on(t_N.device)
        return model_fn(x_NC, self._maps[t_N.device][t_N])

    def q_sample(self, x0_NC: torch.Tensor, t_N: torch.Tensor, noise_NC: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
        return (
            self._coef("sqrt_alphas_cumprod", t_N) * x0_NC
            + self._coef("sqrt_one_minus_alphas_cumprod", t_N) * noise_NC
        )

    def q_posterior(
        self, x0_NC: torch.Tensor, xt_NC: torch.Tensor, t_N: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log variance of ``q(x_{t-1} | x_t, x_0)``."""
        mean_NC = (
            self._coef("posterior_mean_coef1", t_N) * x0_NC + self._coef("posterior_mean_coef2", t_N) * xt_NC
        )
        return mean_NC, self._coef("posterior_log_variance_clipped", t_N).expand_as(xt_NC)

    def p_mean_variance(
        self, out_N2C: torch.Tensor, x_NC: torch.Tensor, t_N: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``p(x_{t-1} | x_t)`` from a model output: ``mean``, ``log_variance``, ``pred_xstart``
        (all ``[N, C]``; see the module docstring). No clipping of ``pred_xstart`` (MAR passes
        ``clip_denoised=False``)."""
        C = x_NC.shape[1]
        eps_NC, v_NC = out_N2C[:, :C], out_N2C[:, C:]
        frac_NC = (v_NC + 1) / 2
        log_var_NC = frac_NC * self._coef("log_betas", t_N) + (1 - frac_NC) * self._coef(
            "posterior_log_variance_clipped", t_N
        )
        x0_NC = (
            self._coef("sqrt_recip_alphas_cumprod", t_N) * x_NC
            - self._coef("sqrt_recipm1_alphas_cumprod", t_N) * eps_NC
        )
        mean_NC, _ = self.q_posterior(x0_NC, x_NC, t_N)
        return {"mean": mean_NC, "log_variance": log_var_NC, "pred_xstart": x0_NC}

    def training_losses(
        self, model_fn: ModelFn, x0_NC: torch.Tensor, t_N: torch.Tensor, noise_NC: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-row ``loss = mse + vb`` (official ``LossType.MSE`` with a learned variance).

        ``mse`` is the mean squared error of the predicted eps; ``vb`` (bits) is
        ``KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))``, or at ``t = 0`` the discretized Gaussian
        NLL of ``x_0``, computed with the eps half detached so that only the variance learns
        from it. Returns ``loss``, ``mse`` and ``vb``, each ``[N]``.
        """
        if noise_NC is None:
            noise_NC = torch.randn_like(x0_NC)
        xt_NC = self.q_sample(x0_NC, t_N, noise_NC)
        out_N2C = self._run(model_fn, xt_NC, t_N)
        C = x0_NC.shape[1]
        frozen_N2C = torch.cat([out_N2C[:, :C].detach(), out_N2C[:, C:]], dim=1)
        p = self.p_mean_variance(frozen_N2C, xt_NC, t_N)
        true_mean_NC, true_log_var_NC = self.q_posterior(x0_NC, xt_NC, t_N)
        kl_N = normal_kl(true_mean_NC, true_log_var_NC, p["mean"], p["log_variance"]).mean(1) / math.log(2.0)
        nll_N = -discretized_gaussian_log_likelihood(x0_NC, p["mean"], 0.5 * p["log_variance"]).mean(
            1
        ) / math.log(2.0)
        vb_N = torch.where(t_N == 0, nll_N, kl_N)
        mse_N = ((noise_NC - out_N2C[:, :C]) ** 2).mean(1)
        return {"loss": mse_N + vb_N, "mse": mse_N, "vb": vb_N}

    def _step(self, model_fn: ModelFn, x_NC: torch.Tensor, t: int) -> dict[str, torch.Tensor]:
        t_N = torch.full((x_NC.shape[0],), t, dtype=torch.long, device=x_NC.device)
        return self.p_mean_variance(self._run(model_fn, x_NC, t_N), x_NC, t_N)

    @torch.no_grad()
    def final_gaussian(
        self, model_fn: ModelFn, x_T_NC: torch.Tensor, inter_noise_SNC: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian of the last denoising step, every earlier step's noise given.

        With S = ``num_timesteps`` the chain runs the steps t = S-1, ..., 1 (in that order) and
        ``inter_noise_SNC[k]`` is the noise of the k-th step run, i.e. of step t = S-1-k:
        ``x <- mean_t + temperature * exp(0.5 * log_var_t) * inter_noise_SNC[k]``. Step t = 0
        then gives ``(mean_0, temperature * exp(0.5 * log_var_0))``: the official sampler
        returns ``mean_0``; ``mean_0 + std_0 * z`` with a fresh ``z`` is a sample.

        Args:
            model_fn: see ``ModelFn``.
            x_T_NC: the starting noise.
            inter_noise_SNC: ``[S - 1, N, C]`` standard normal noise.
            temperature: scale of every step's noise (official ``temperature``).
        """
        if inter_noise_SNC.shape != (self.num_timesteps - 1, *x_T_NC.shape):
            raise ValueError(
                f"inter_noise_SNC must have shape {(self.num_timesteps - 1, *x_T_NC.shape)}, "
                f"got {tuple(inter_noise_SNC.shape)}"
            )
        x_NC = x_T_NC
        for k, t in enumerate(range(self.num_timesteps - 1, 0, -1)):
            out = self._step(model_fn, x_NC, t)
            x_NC = out["mean"] + torch.exp(0.5 * out["log_variance"]) * inter_noise_SNC[k] * temperature
        out = self._step(model_fn, x_NC, 0)
        return out["mean"], torch.exp(0.5 * out["log_variance"]) * temperature

    @torch.no_grad()
    def sample_official(
        self,
        model_fn: ModelFn,
        x_T_NC: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The official ``p_sample_loop``: steps t = S-1 .. 0, each drawing one ``[N, C]``
        standard normal from ``generator`` (on ``x_T_NC``'s device), the last one unused since
        the last step returns its mean."""
        x_NC = x_T_NC
        for t in range(self.num_timesteps - 1, -1, -1):
            out = self._step(model_fn, x_NC, t)
            noise_NC = torch.randn(x_NC.shape, generator=generator, device=x_NC.device, dtype=x_NC.dtype)
            x_NC = out["mean"] + (t != 0) * (torch.exp(0.5 * out["log_variance"]) * noise_NC * temperature)
        return x_NC


def create_diffusion(
    timestep_respacing: str | int, noise_schedule: str = "cosine", diffusion_steps: int = 1000
) -> GaussianDiffusion:
    """MAR's diffusion: ``diffusion_steps`` steps of ``noise_schedule`` respaced to
    ``timestep_respacing`` (``""`` keeps every step; ``"100"`` keeps 100 evenly spaced).
    MAR calls it with ``noise_schedule="cosine"`` (the official default is ``"linear"``)."""
    schedules = {"cosine": cosine_betas, "linear": linear_betas}
    if noise_schedule not in schedules:
        raise ValueError(f"unknown noise schedule {noise_schedule!r}; known: {', '.join(schedules)}")
    respacing = str(timestep_respacing) or str(diffusion_steps)
    return GaussianDiffusion(
        schedules[noise_schedule](diffusion_steps), space_timesteps(diffusion_steps, respacing)
    )


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Elementwise log probability (nats) of the bin of width 2/255 around ``x`` (the outer
    bins open beyond +-0.999) under ``N(means, exp(log_scales) ** 2)``, with the tanh
    approximation of the normal CDF, as official."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
