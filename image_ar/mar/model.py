"""MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization"): a
bidirectional MAE-style encoder/decoder over continuous VAE tokens with a Diffusion Loss head,
written so official ``checkpoint-last.pth`` files load key for key (LTH14/mar ``models/mar.py``).

Owns: ``MAR`` (class embedding and ``fake_latent``, the MAE encoder over the known tokens, the
MAE decoder over all positions, the training ``forward`` and the official sampler
``sample_tokens``), ``Block`` (timm's ViT block with timm's parameter names), ``build_mar`` and
the ``mar_base`` / ``mar_large`` / ``mar_huge`` constructors.

Sequence layout. An image's VAE latents ``[B, vae_embed_dim, h, w]`` become ``seq_len`` tokens
in row-major order (``patchify``). ``buffer_size`` leading positions hold the class embedding.
A mask ``[B, seq_len]`` is 1 where a token is unknown (to predict) and 0 where known. The
encoder sees only the buffer and the known tokens; the decoder puts ``mask_token`` at the
unknown positions and returns one vector ``z`` per token, the condition of the Diffusion Loss.

Must never: hard-code a device, or draw random numbers from a global generator where a
``generator`` is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from mmaccel.image_ar.mar.config import MARConfig
from mmaccel.image_ar.mar.diffloss import DiffLoss


class Attention(nn.Module):
    """timm ``Attention`` (``qkv`` with bias, ``proj``); its ``q_norm`` / ``k_norm`` are
    identities without parameters in MAR and are left out."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        B, T, C = x_BTC.shape
        qkv_3BHTD = (
            self.qkv(x_BTC).reshape(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q_BHTD, k_BHTD, v_BHTD = qkv_3BHTD.unbind(0)
        o_BHTD = F.scaled_dot_product_attention(
            q_BHTD, k_BHTD, v_BHTD, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(o_BHTD.transpose(1, 2).reshape(B, T, C)))


class Mlp(nn.Module):
    """timm ``Mlp``: ``fc2(drop(gelu(fc1 x)))`` then dropout (exact GELU)."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x_BTC)))))


class Block(nn.Module):
    """timm ``vision_transformer.Block`` as MAR builds it (pre-norm, no layer scale, no drop
    path): ``x + attn(norm1 x)``, then ``x + mlp(norm2 x)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        norm_layer: Callable[[int], nn.Module],
        proj_drop: float,
        attn_drop: float,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, attn_drop, proj_drop)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        x_BTC = x_BTC + self.attn(self.norm1(x_BTC))
        return x_BTC + self.mlp(self.norm2(x_BTC))


# the norm layer of every official preset (the constructor's own default, plain nn.LayerNorm, is never used)
LAYER_NORM_1E6 = partial(nn.LayerNorm, eps=1e-6)


def mask_by_order(mask_len: int, orders_BL: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]`` mask with the first ``mask_len`` positions of each row's order set."""
    mask_BL = torch.zeros(orders_BL.shape, dtype=torch.bool, device=orders_BL.device)
    return mask_BL.scatter(1, orders_BL[:, :mask_len], True)


class MAR(nn.Module):
    """Masked autoregressive model with Diffusion Loss (official argument names and defaults,
    except ``norm_layer``, whose default here is the ``partial(nn.LayerNorm, eps=1e-6)`` every
    official preset passes). See ``MARConfig`` for the arguments."""

    def __init__(
        self,
        img_size: int = 256,
        vae_stride: int = 16,
        patch_size: int = 1,
        encoder_embed_dim: int = 1024,
        encoder_depth: int = 16,
        encoder_num_heads: int = 16,
        decoder_embed_dim: int = 1024,
        decoder_depth: int = 16,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_layer: Callable[[int], nn.Module] = LAYER_NORM_1E6,
        vae_embed_dim: int = 16,
        mask_ratio_min: float = 0.7,
        label_drop_prob: float = 0.1,
        class_num: int = 1000,
        attn_dropout: float = 0.1,
        proj_dropout: float = 0.1,
        buffer_size: int = 64,
        diffloss_d: int = 3,
        diffloss_w: int = 1024,
        num_sampling_steps: str = "100",
        diffusion_batch_mul: int = 4,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.vae_embed_dim = vae_embed_dim
        self.img_size = img_size
        self.vae_stride = vae_stride
        self.patch_size = patch_size
        self.seq_h = self.seq_w = img_size // vae_stride // patch_size
        self.seq_len = self.seq_h * self.seq_w
        self.token_embed_dim = vae_embed_dim * patch_size**2
        self.grad_checkpointing = grad_checkpointing
        self.num_classes = class_num
        self.label_drop_prob = label_drop_prob
        self.mask_ratio_min = mask_ratio_min
        self.buffer_size = buffer_size
        self.diffusion_batch_mul = diffusion_batch_mul

        # registration order follows the official file, so state dicts list keys in its order
        self.class_emb = nn.Embedding(class_num, encoder_embed_dim)
        self.fake_latent = nn.Parameter(torch.zeros(1, encoder_embed_dim))  # the unconditional "class"
        self.z_proj = nn.Linear(self.token_embed_dim, encoder_embed_dim, bias=True)
        self.z_proj_ln = nn.LayerNorm(encoder_embed_dim, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(
            torch.zeros(1, self.seq_len + buffer_size, encoder_embed_dim)
        )
        block = partial(
            Block, mlp_ratio=mlp_ratio, norm_layer=norm_layer, proj_drop=proj_dropout, attn_drop=attn_dropout
        )
        self.encoder_blocks = nn.ModuleList(
            [block(encoder_embed_dim, encoder_num_heads) for _ in range(encoder_depth)]
        )
        self.encoder_norm = norm_layer(encoder_embed_dim)
        self.decoder_embed = nn.Linear(encoder_embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed_learned = nn.Parameter(
            torch.zeros(1, self.seq_len + buffer_size, decoder_embed_dim)
        )
        self.decoder_blocks = nn.ModuleList(
            [block(decoder_embed_dim, decoder_num_heads) for _ in range(decoder_depth)]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, decoder_embed_dim))
        # initialised before the Diffusion Loss exists, as official: it keeps its own (zeroed) init
        self.initialize_weights()
        self.diffloss = DiffLoss(
            target_channels=self.token_embed_dim,
            z_channels=decoder_embed_dim,
            width=diffloss_w,
            depth=diffloss_d,
            num_sampling_steps=num_sampling_steps,
            grad_checkpointing=grad_checkpointing,
        )

    def initialize_weights(self) -> None:
        """Official init: N(0, 0.02) embeddings and tokens, xavier-uniform linears with zero
        bias, unit LayerNorms."""
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):  # fmt: skip
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, c, h, w]`` latents to ``[B, seq_len, token_embed_dim]`` tokens (row-major
        ``p x p`` blocks, channels outermost inside a token)."""
        B, c, h, w = x.shape
        p = self.patch_size
        x_BcHpWp = x.reshape(B, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwcpq", x_BcHpWp).reshape(B, (h // p) * (w // p), c * p**2)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of ``patchify``: ``[B, seq_len, token_embed_dim]`` to ``[B, c, h, w]``."""
        B, p, c = x.shape[0], self.patch_size, self.vae_embed_dim
        x_BHWcpp = x.reshape(B, self.seq_h, self.seq_w, c, p, p)
        return torch.einsum("nhwcpq->nchpwq", x_BHWcpp).reshape(B, c, self.seq_h * p, self.seq_w * p)

    def sample_orders(
        self, bsz: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """``[bsz, seq_len]`` long: one uniformly random permutation of the positions per row
        (the generation order), drawn on ``generator``'s device and moved to ``device``
        (default: the model's)."""
        device = device if device is not None else self.fake_latent.device
        gen_device = generator.device if generator is not None else device
        keys_BL = torch.rand(bsz, self.seq_len, generator=generator, device=gen_device)
        return keys_BL.argsort(dim=1).to(device)

    def sample_mask_ratio(self, generator: torch.Generator | None = None) -> float:
        """A training mask ratio: normal(1, 0.25) truncated to ``[mask_ratio_min, 1]`` (the
        official ``scipy.stats.truncnorm``), by inverting the normal CDF."""
        lo = torch.special.ndtr(
            torch.tensor((self.mask_ratio_min - 1.0) / 0.25, dtype=torch.float64, device="cpu")
        )
        u = torch.rand((), generator=generator, dtype=torch.float64, device="cpu")
        return float(1.0 + 0.25 * torch.special.ndtri(lo + u * (0.5 - lo)))

    def random_masking(
        self, x: torch.Tensor, orders: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Float ``[B, seq_len]`` mask (1 = masked): the first ``ceil(seq_len * ratio)``
        positions of each row's order, one ratio (``sample_mask_ratio``) for the whole batch."""
        B, L, _ = x.shape
        num_masked = int(math.ceil(L * self.sample_mask_ratio(generator)))
        return mask_by_order(num_masked, orders).to(x.dtype)

    def forward_mae_encoder(
        self, x: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor
    ) -> torch.Tensor:
        """Encode the buffer and the known tokens.

        Args:
            x: ``[B, seq_len, token_embed_dim]`` tokens (values at masked positions are ignored).
            mask: ``[B, seq_len]``, 1 (or True) where unknown. Every row must mask the same
                number of tokens: the known ones are gathered by a boolean index and reshaped
                to ``[B, buffer_size + known, E]``, as official.
            class_embedding: ``[B, E]`` (``class_emb(labels)`` or ``fake_latent``); in training
                each row is replaced by ``fake_latent`` with probability ``label_drop_prob``.

        Returns:
            ``[B, buffer_size + known, E]``, in position order.
        """
        x_BLE = self.z_proj(x)
        B, _, E = x_BLE.shape
        known_BP = torch.cat(
            [torch.ones(B, self.buffer_size, dtype=torch.bool, device=x.device), ~mask.bool()], dim=1
        )
        if self.training:
            drop_B1 = (torch.rand(B, device=x.device) < self.label_drop_prob).unsqueeze(-1).to(x_BLE.dtype)
            class_embedding = drop_B1 * self.fake_latent + (1 - drop_B1) * class_embedding
        buffer_BbE = class_embedding.to(x_BLE.dtype).unsqueeze(1).expand(B, self.buffer_size, E)
        x_BPE = torch.cat([buffer_BbE, x_BLE], dim=1) + self.encoder_pos_embed_learned
        x_BPE = self.z_proj_ln(x_BPE)
        x_BKE = x_BPE[known_BP].reshape(B, -1, E)
        for block in self.encoder_blocks:
            x_BKE = (
                checkpoint(block, x_BKE, use_reentrant=False)
                if self.grad_checkpointing and self.training
                else block(x_BKE)
            )
        return self.encoder_norm(x_BKE)

    def forward_mae_decoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decode every position: the encoder output ``x`` goes back to the known positions,
        ``mask_token`` fills the unknown ones (``mask`` as in ``forward_mae_encoder``).

        Returns:
            ``[B, seq_len, decoder_embed_dim]``: per token, the condition ``z`` of the
            Diffusion Loss (buffer positions dropped, ``diffusion_pos_embed_learned`` added).
        """
        x_BKD = self.decoder_embed(x)
        B, _, D = x_BKD.shape
        known_BP = torch.cat(
            [torch.ones(B, self.buffer_size, dtype=torch.bool, device=x.device), ~mask.bool()], dim=1
        )
        x_BPD = self.mask_token.to(x_BKD.dtype).expand(B, known_BP.shape[1], D).clone()
        x_BPD[known_BP] = x_BKD.reshape(-1, D)
        x_BPD = x_BPD + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x_BPD = (
                checkpoint(block, x_BPD, use_reentrant=False)
                if self.grad_checkpointing and self.training
                else block(x_BPD)
            )
        x_BPD = self.decoder_norm(x_BPD)
        return x_BPD[:, self.buffer_size :] + self.diffusion_pos_embed_learned

    def forward_loss(self, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Diffusion Loss over the masked tokens, each repeated ``diffusion_batch_mul`` times
        (independent timesteps and noise per copy)."""
        B, L, _ = target.shape
        n = self.diffusion_batch_mul
        target_NC = target.reshape(B * L, -1).repeat(n, 1)
        z_NZ = z.reshape(B * L, -1).repeat(n, 1)
        mask_N = mask.reshape(B * L).repeat(n)
        return self.diffloss(z=z_NZ, target=target_NC, mask=mask_N)

    def forward(self, imgs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss (scalar) for VAE latents ``imgs`` ``[B, vae_embed_dim, h, w]`` and
        class ``labels`` ``[B]``: random orders, one random mask ratio, MAE encode/decode,
        Diffusion Loss on the masked tokens."""
        class_embedding = self.class_emb(labels)
        x_BLC = self.patchify(imgs)
        gt_BLC = x_BLC.clone().detach()
        orders_BL = self.sample_orders(x_BLC.shape[0], device=x_BLC.device)
        mask_BL = self.random_masking(x_BLC, orders_BL)
        z_BLD = self.forward_mae_decoder(self.forward_mae_encoder(x_BLC, mask_BL, class_embedding), mask_BL)
        return self.forward_loss(z=z_BLD, target=gt_BLC, mask=mask_BL)

    @torch.no_grad()
    def sample_tokens(
        self,
        bsz: int,
        num_iter: int = 64,
        cfg: float = 1.0,
        cfg_schedule: str = "linear",
        labels: torch.Tensor | None = None,
        temperature: float = 1.0,
        progress: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The official sampler: ``num_iter`` rounds, each predicting the tokens the cosine
        schedule ``floor(seq_len * cos(pi/2 * (step+1) / num_iter))`` (at least 1 fewer per
        round) unmasks next, in a random order; CFG doubles the batch with ``fake_latent`` rows
        and ramps ``1 + (cfg - 1) * (seq_len - mask_len) / seq_len`` (``"linear"``) or stays
        ``cfg`` (``"constant"``). All randomness comes from ``generator``.

        Returns:
            ``[bsz, vae_embed_dim, h, w]`` latents.
        """
        if cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"unknown cfg_schedule {cfg_schedule!r}; known: linear, constant")
        device = self.fake_latent.device
        mask_BL = torch.ones(bsz, self.seq_len, dtype=torch.bool, device=device)
        tokens_BLC = torch.zeros(bsz, self.seq_len, self.token_embed_dim, device=device)
        orders_BL = self.sample_orders(bsz, generator=generator, device=device)
        num_masked = self.seq_len
        guided = cfg != 1.0
        steps = tqdm(range(num_iter)) if progress else range(num_iter)
        for step in steps:
            class_emb_BE = self.class_emb(labels) if labels is not None else self.fake_latent.expand(bsz, -1)
            tokens_in, mask_in = tokens_BLC, mask_BL
            if guided:
                tokens_in = torch.cat([tokens_BLC, tokens_BLC], dim=0)
                class_emb_BE = torch.cat([class_emb_BE, self.fake_latent.expand(bsz, -1)], dim=0)
                mask_in = torch.cat([mask_BL, mask_BL], dim=0)
            z_BLD = self.forward_mae_decoder(
                self.forward_mae_encoder(tokens_in, mask_in, class_emb_BE), mask_in
            )

            mask_ratio = math.cos(math.pi / 2.0 * (step + 1) / num_iter)
            mask_len = max(1, min(num_masked - 1, math.floor(self.seq_len * mask_ratio)))
            mask_next_BL = mask_by_order(mask_len, orders_BL)
            to_pred_BL = mask_BL if step >= num_iter - 1 else mask_BL ^ mask_next_BL
            mask_BL, num_masked = mask_next_BL, mask_len
            to_pred_in = torch.cat([to_pred_BL, to_pred_BL], dim=0) if guided else to_pred_BL

            cfg_iter = (
                1 + (cfg - 1) * (self.seq_len - mask_len) / self.seq_len if cfg_schedule == "linear" else cfg
            )
            sampled_NC = self.diffloss.sample(
                z_BLD[to_pred_in], temperature, cfg_iter if guided else 1.0, generator
            )
            if guided:
                sampled_NC = sampled_NC[: sampled_NC.shape[0] // 2]  # drop the unconditional rows
            tokens_BLC = tokens_BLC.clone()
            tokens_BLC[to_pred_BL] = sampled_NC.to(tokens_BLC.dtype)
        return self.unpatchify(tokens_BLC)


def build_mar(config: MARConfig) -> MAR:
    """A randomly initialised ``MAR`` with ``config``'s sizes."""
    kwargs = config.to_dict()
    norm_eps = kwargs.pop("norm_eps")
    return MAR(norm_layer=partial(nn.LayerNorm, eps=norm_eps), **kwargs)


def _preset(width: int, depth: int, heads: int, **kwargs) -> MAR:
    return MAR(
        encoder_embed_dim=width, encoder_depth=depth, encoder_num_heads=heads,
        decoder_embed_dim=width, decoder_depth=depth, decoder_num_heads=heads,
        mlp_ratio=4, norm_layer=LAYER_NORM_1E6, **kwargs,
    )  # fmt: skip


def mar_base(**kwargs) -> MAR:
    """Official ``mar_base``: width 768, 12 + 12 blocks, 12 heads (other arguments as given)."""
    return _preset(768, 12, 12, **kwargs)


def mar_large(**kwargs) -> MAR:
    """Official ``mar_large``: width 1024, 16 + 16 blocks, 16 heads."""
    return _preset(1024, 16, 16, **kwargs)


def mar_huge(**kwargs) -> MAR:
    """Official ``mar_huge``: width 1280, 20 + 20 blocks, 16 heads."""
    return _preset(1280, 20, 16, **kwargs)
