"""Train the tiny LlamaGen VQ tokenizer of the embedded default text-to-image model.

Implements the VQ training objective of LlamaGen (FoundationVision/LlamaGen
``tokenizer/tokenizer_image/vq_loss.py`` and ``vq_model.py``) without its perceptual and GAN
terms, on Shapes-T2I::

    L = rec(x, D(z + sg(e - z))) + |e - sg(z)|^2 + beta * |z - sg(e)|^2

where ``z`` is the l2-normalised encoder latent of a grid cell, ``e`` its nearest
l2-normalised codebook row, ``sg`` stop-gradient, ``rec`` L1 or L2 and the decoder input is
the straight-through latent ``VQModel.forward`` already builds. To keep the codebook in use,
every ``restart_every`` steps codes unused for ``dead_after`` steps are re-initialised from
randomly picked latents of the current batch (their Adam moments are reset too).

Owns: ``TrainConfig``, the training loop (deterministic data by item index, resumable
checkpoint ``checkpoint.pt`` in the out dir, ``loss.log``), exporting fp16 safetensors in the
official key layout plus a json with the exact ``VQConfig`` and command, and ``evaluate``
(MSE / PSNR / codebook usage / prompt accuracy of reconstructions on the test split).

Must never: change the model code or its key layout, use global RNG for data, or print
outside ``main``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmaccel.image_ar.checkpoint import save_atomic, save_safetensors
from mmaccel.image_ar.llamagen.vq import VQConfig, VQModel
from mmaccel.image_ar.recipe import RECIPE, read_recipe, tokenizer_config
from mmaccel.image_ar.schedule import lr_at
from mmaccel.image_ar.shapes import caption, sample_item, to_tensor

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a VQ training run (the model's sizes live in ``VQConfig``).

    ``rec_loss``: "l1" or "l2" pixel loss on [-1, 1] images. ``beta``: commitment weight.
    ``lr`` peaks after ``warmup_steps`` of linear warm-up, then a cosine decays it to
    ``lr * min_lr_ratio`` at ``steps``. ``data_seed`` fixes the Shapes-T2I items (train split;
    step ``s`` reads items ``s * batch_size ...``). ``restart_every`` / ``dead_after``: the
    dead-code restart rule (0 disables it); no restarts after ``restart_until * steps``, so
    every code that ships has been trained with the decoder for a while.
    """

    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    rec_loss: str = "l2"
    beta: float = 0.25
    restart_every: int = 10
    dead_after: int = 20
    restart_until: float = 0.9
    seed: int = 0
    data_seed: int = 0
    ckpt_every: int = 50
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {self.rec_loss!r}")


def config_from_dict(raw: dict[str, Any]) -> tuple[VQConfig, TrainConfig]:
    """``{"model": VQConfig fields, "train": TrainConfig fields}`` (a config file, or the
    ``tokenizer`` of a recipe) -> the two configs."""
    return vq_config_from_dict(raw["model"]), train_config_from_dict(raw.get("train", {}))


def load_config(path: str | os.PathLike) -> tuple[VQConfig, TrainConfig]:
    """The configs of a json config file (as ``config_from_dict`` takes)."""
    return config_from_dict(json.loads(Path(path).read_text()))


def vq_config_from_dict(d: dict[str, Any]) -> VQConfig:
    d = dict(d)
    for key in ("encoder_ch_mult", "decoder_ch_mult"):
        if key in d:
            d[key] = tuple(d[key])
    return VQConfig(**d)


def train_config_from_dict(d: dict[str, Any]) -> TrainConfig:
    d = dict(d)
    if "betas" in d:
        d["betas"] = tuple(d["betas"])
    return TrainConfig(**d)


def batch(start: int, size: int, seed: int = 0, split: str = "train") -> tuple[torch.Tensor, list[str]]:
    """Shapes-T2I items ``start .. start + size - 1``: images ``[B, 3, 64, 64]`` in [-1, 1], captions."""
    items = [sample_item(i, seed, split) for i in range(start, start + size)]
    return torch.stack([to_tensor(img) for _, img in items]), [caption(scene) for scene, _ in items]


def vq_losses(
    model: VQModel, img_BCHW: torch.Tensor, cfg: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Total loss, its parts, code ids ``[B, N]`` and normalised latents ``[B*N, D]``."""
    rec_BCHW, idx_BN, z_BDHW = model(img_BCHW)
    D = z_BDHW.shape[1]
    z_ND = z_BDHW.permute(0, 2, 3, 1).reshape(-1, D)
    if model.cfg.codebook_l2_norm:
        z_ND = F.normalize(z_ND, dim=-1)
    e_ND = model.quantize.codebook()[idx_BN.reshape(-1)]
    rec = F.l1_loss(rec_BCHW, img_BCHW) if cfg.rec_loss == "l1" else F.mse_loss(rec_BCHW, img_BCHW)
    codebook = F.mse_loss(e_ND, z_ND.detach())
    commit = cfg.beta * F.mse_loss(z_ND, e_ND.detach())
    parts = {"rec": rec, "codebook": codebook, "commit": commit}
    return rec + codebook + commit, parts, idx_BN, z_ND.detach()


@torch.no_grad()
def restart_dead_codes(
    model: VQModel,
    opt: torch.optim.Optimizer,
    dead_K: torch.Tensor,
    z_ND: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """Set the codebook rows flagged in ``dead_K`` to random distinct latents of ``z_ND``.

    Their Adam moments are zeroed so stale statistics do not pull them back. Returns the ids
    restarted (all flagged ones unless there are fewer latents than dead codes).
    """
    dead_idx = dead_K.nonzero().flatten()[: len(z_ND)]
    n = len(dead_idx)
    if n == 0:
        return dead_idx
    pick = torch.randperm(len(z_ND), generator=gen)[:n]
    weight = model.quantize.embedding.weight
    weight[dead_idx] = z_ND[pick].to(weight.dtype)
    for moment in opt.state.get(weight, {}).values():
        if torch.is_tensor(moment) and moment.shape == weight.shape:
            moment[dead_idx] = 0
    return dead_idx


def train(
    vq_cfg: VQConfig,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    stop_at: int | None = None,
    progress: bool = True,
) -> tuple[VQModel, dict[str, float]]:
    """Train (or resume from ``out_dir/checkpoint.pt``) up to ``cfg.steps`` steps.

    ``stop_at`` ends the run early after that step, as an interruption would (tests). Returns
    the model and the last logged metrics (``step``, losses, ``usage``).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = VQModel(vq_cfg).train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() > 1 and "embedding" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    K = vq_cfg.codebook_size
    last_used_K = torch.zeros(K, dtype=torch.long)  # step each code was last chosen
    restarted_K = torch.zeros(K, dtype=torch.long)  # step each code was last restarted
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    ckpt_path = out / CHECKPOINT
    configs = {"model": dataclasses.asdict(vq_cfg), "train": dataclasses.asdict(cfg)}
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = json.loads(ckpt["configs"])
        if saved != json.loads(json.dumps(configs)):
            raise ValueError(f"{ckpt_path} was written with another config: {saved}; delete it to restart")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        last_used_K, restarted_K, step = ckpt["last_used"], ckpt["restarted"], int(ckpt["step"])
        gen.set_state(ckpt["rng"])
        log.info("resumed from %s at step %d", ckpt_path, step)

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "last_used": last_used_K,
            "restarted": restarted_K,
            "rng": gen.get_state(),
            "configs": json.dumps(configs),
        }
        save_atomic(state, ckpt_path)

    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    metrics: dict[str, float] = {}
    used_buf = getattr(model.quantize, "codebook_used", None)
    interactive = sys.stderr.isatty()
    bar = tqdm(total=end, initial=step, desc="vq", disable=not progress, mininterval=1 if interactive else 60)
    with (out / "loss.log").open("a") as log_file:
        t0, step0 = time.perf_counter(), step
        while step < end:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            img_BCHW, _ = batch(step * cfg.batch_size, cfg.batch_size, cfg.data_seed)
            loss, parts, idx_BN, z_ND = vq_losses(model, img_BCHW, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            idx_N = idx_BN.reshape(-1)
            last_used_K[idx_N] = step
            if used_buf is not None:  # the official rolling record of recent code ids
                n = min(len(idx_N), len(used_buf))
                used_buf[:-n] = used_buf[n:].clone()
                used_buf[-n:] = idx_N[-n:].to(used_buf.dtype)
            restarted = 0
            if cfg.restart_every and step % cfg.restart_every == 0 and step < cfg.restart_until * cfg.steps:
                # a restarted code gets dead_after steps to be picked before it counts as dead again
                dead_K = (step - torch.maximum(last_used_K, restarted_K)) >= cfg.dead_after
                restarted_idx = restart_dead_codes(model, opt, dead_K, z_ND, gen)
                restarted_K[restarted_idx] = step
                restarted = len(restarted_idx)
            if step % cfg.log_every == 0 or step == end:
                window = max(cfg.dead_after, 1)
                metrics = {
                    "step": step,
                    "loss": loss.item(),
                    **{k: v.item() for k, v in parts.items()},
                    "usage": ((step - last_used_K) < window).float().mean().item(),
                    "batch_usage": len(torch.unique(idx_N)) / K,
                    "restarted": restarted,
                    "grad_norm": grad_norm.item(),
                    "lr": opt.param_groups[0]["lr"],
                    "s_per_step": (time.perf_counter() - t0) / (step - step0),
                }
                t0, step0 = time.perf_counter(), step
                log_file.write(json.dumps(metrics) + "\n")
                log_file.flush()
                log.info("step %d %s", step, {k: round(v, 5) for k, v in metrics.items() if k != "step"})
                bar.set_postfix(rec=f"{metrics['rec']:.4f}", usage=f"{metrics['usage']:.2f}")
            bar.update(1)
            if step % cfg.ckpt_every == 0 or step == end:
                save()
    bar.close()
    return model.eval(), metrics


def export(model: VQModel, weights: str | os.PathLike, extra: dict[str, Any]) -> None:
    """fp16 safetensors in the official key layout + ``<weights>.json`` with the exact VQConfig."""
    weights = Path(weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    vq_cfg = dataclasses.asdict(model.cfg)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_safetensors(sd, weights, metadata={"format": "pt", "vq_config": json.dumps(vq_cfg)})
    weights.with_suffix(".json").write_text(json.dumps({"vq_config": vq_cfg, **extra}, indent=2) + "\n")


@torch.no_grad()
def evaluate(model: VQModel, n: int = 500, seed: int = 0, batch_size: int = 100) -> dict[str, float]:
    """Reconstruction quality of ``n`` ``split="test"`` images.

    ``mse`` / ``psnr`` on [0, 1] pixels after rounding reconstructions to uint8 (psnr is the
    mean over images), ``usage`` = fraction of codes used, ``prompt_accuracy`` and its
    attribute breakdown from ``mmaccel.image_ar.shapes_accuracy.report``.
    """
    from mmaccel.image_ar.shapes_accuracy import report

    model.eval()
    mse_list, used, recons, prompts = [], torch.zeros(model.cfg.codebook_size, dtype=torch.bool), [], []
    for start in range(0, n, batch_size):
        img_BCHW, caps = batch(start, min(batch_size, n - start), seed, "test")
        idx_BN = model.encode(img_BCHW)
        used[idx_BN.reshape(-1)] = True
        rec_BHWC = to_uint8(model.decode_codes(idx_BN))
        ref_BHWC = to_uint8(img_BCHW)
        diff = (rec_BHWC.float() - ref_BHWC.float()) / 255.0
        mse_list.append(diff.pow(2).flatten(1).mean(1))
        recons += list(rec_BHWC.numpy())
        prompts += caps
    mse_B = torch.cat(mse_list)
    acc = report(recons, prompts)
    return {
        "n": n,
        "mse": mse_B.mean().item(),
        "psnr": (-10 * torch.log10(mse_B.clamp_min(1e-10))).mean().item(),
        "usage": used.float().mean().item(),
        "prompt_accuracy": acc["accuracy"],
        **{f"prompt_{k}": v for k, v in acc.items() if k not in ("n", "accuracy")},
    }


def to_uint8(img_BCHW: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float ``[B, 3, H, W]`` -> uint8 ``[B, H, W, 3]``."""
    return img_BCHW.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def load_trained_vq(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> VQModel:
    """A VQ written by ``export``: the safetensors plus the ``VQConfig`` in the json beside it."""
    from mmaccel.image_ar.llamagen.loader import load_vq

    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    return load_vq(path, vq_config_from_dict(meta["vq_config"]), dtype=dtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the tiny LlamaGen VQ on Shapes-T2I.")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="its tokenizer (default: %(default)s)")
    parser.add_argument("--config", type=Path, help="a single config file instead of --recipe")
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/vq_tiny"))
    parser.add_argument("--weights", type=Path, default=Path("image_ar/weights/vq_tiny.safetensors"))
    parser.add_argument("--eval-n", type=int, default=500, help="test images to evaluate (0 = skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.config is not None:
        vq_cfg, cfg = load_config(args.config)
    else:
        vq_cfg, cfg = config_from_dict(tokenizer_config(read_recipe(args.recipe)))
    command = shlex.join(
        ["python", "-m", "mmaccel.image_ar.train_vq", *(sys.argv[1:] if argv is None else argv)]
    )
    t0 = time.perf_counter()
    model, last = train(vq_cfg, cfg, args.out_dir)
    extra: dict[str, Any] = {
        "command": command,
        "train_config": dataclasses.asdict(cfg),
        "steps": cfg.steps,
        "final_train_metrics": last,
    }
    export(model, args.weights, extra)
    print(
        f"trained {cfg.steps} steps ({time.perf_counter() - t0:.0f} s in this process); wrote {args.weights}"
    )
    if args.eval_n:
        shipped = load_trained_vq(args.weights)  # evaluate what ships: the fp16 weights
        metrics = evaluate(shipped, args.eval_n)
        extra["eval"] = {k: round(v, 6) for k, v in metrics.items()}
        export(model, args.weights, extra)
        print(json.dumps(extra["eval"], indent=2))


if __name__ == "__main__":
    main()
