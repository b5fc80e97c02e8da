"""Train the small VAR multi-scale VQ-VAE on Fashion-MNIST 32x32 (the tokenizer of the Fashion VAR
drafter and refiner).

Implements the VQ-VAE objective VAR trains its tokenizer with (Tian et al. 2024, Sec. 3.2 and
Alg. 1: multi-scale residual quantization, ``VectorQuantizer2.forward`` in ``vqvae.py``), without
the perceptual and GAN terms::

    L = l2_weight * |x - x_rec|^2 + l1_weight * |x - x_rec|_1
        + vq_weight * (1 / K) sum_k ( beta * |f - sg(f_hat_k)|^2 + |f_hat_k - sg(f)|^2 )

where ``f`` is the encoder latent, ``f_hat_k`` the quantized sum after scale k, ``sg``
stop-gradient and ``x_rec`` the decoding of the straight-through ``f_hat_K``. To keep the
codebook in use (the official tokenizer training code is not public), the codebook starts as
random latent cells of the first batch (each resized to some scale), and every
``restart_every`` steps codes no scale chose for ``dead_after`` steps are set to random
residual vectors of the current batch (their Adam moments zeroed).

Owns: ``TrainConfig``, the loop (data order by step index, resumable checkpoint
``<out-dir>/ckpt.pt`` written every ``checkpoint_minutes`` and at the end, ``loss.log``),
exporting fp16 safetensors (config in the metadata) + a json record, and evaluating the export
on the test split (``fashion_vq.evaluate_reconstructions``: MSE / PSNR, PSNR after each scale,
codebook usage, the Fashion classifier's accuracy on reconstructions against originals).
Configs come from ``image_ar/configs/fashion_vqvae_recipe.json``; from the repository root
(``OMP_WAIT_POLICY=PASSIVE`` keeps idle OpenMP threads from spinning on a shared machine)::

    OMP_WAIT_POLICY=PASSIVE python -m mmaccel.image_ar.var.train_vqvae --out-dir outputs/fashion_vqvae
    python -m mmaccel.image_ar.var.train_vqvae --eval-only   # re-measure the shipped weights

Must never: look at the test split before training ends, use unseeded randomness, change the
model's key layout, or print outside ``main``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmaccel.image_ar.checkpoint import export_fp16, save_atomic, store_test
from mmaccel.image_ar.recipe import add_config_args, config_from_args
from mmaccel.image_ar.schedule import batch_indices, lr_at
from mmaccel.image_ar.train_config import split_config
from mmaccel.image_ar.var.config import VQVAEConfig
from mmaccel.image_ar.var.fashion_vq import (
    TRAIN_COMMAND,
    WEIGHTS,
    config_from_dict,
    config_to_dict,
    evaluate_reconstructions,
    load_fashion_vqvae,
)
from mmaccel.image_ar.var.vqvae import VQVAE

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "fashion_vqvae_recipe.json"
CHECKPOINT = "ckpt.pt"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """``lr`` peaks after ``warmup_steps`` of linear warm-up, then a cosine decays it to
    ``lr * min_lr_ratio`` at ``steps``. Step ``s`` reads the ``s``-th batch of an epoch order
    seeded by ``(seed, epoch)``. Restarts stop after ``restart_until * steps``, so every shipped
    code has been trained with the decoder for a while (0 in ``restart_every`` disables them)."""

    steps: int = 2400
    batch_size: int = 32
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    l2_weight: float = 1.0
    l1_weight: float = 0.2
    vq_weight: float = 1.0
    restart_every: int = 20
    dead_after: int = 40
    restart_until: float = 0.8
    seed: int = 0
    checkpoint_minutes: float = 2.0
    log_every: int = 25
    eval_batch: int = 500


CONFIG_KEYS = {
    "model": [f.name for f in dataclasses.fields(VQVAEConfig)],
    "train": [f.name for f in dataclasses.fields(TrainConfig)],
}


def configs_from_dict(config: dict[str, dict[str, Any]]) -> tuple[VQVAEConfig, TrainConfig]:
    """``{"model": VQVAEConfig fields, "train": TrainConfig fields}`` -> the two configs."""
    return split_config(config, CONFIG_KEYS, config_from_dict, TrainConfig)


def full_config(vq_cfg: VQVAEConfig, cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """Both configs, every key, as json data (what a checkpoint and the weights' json record)."""
    return {"model": config_to_dict(vq_cfg), "train": json.loads(json.dumps(dataclasses.asdict(cfg)))}


def losses(model: VQVAE, x_B1HW: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Total loss, its parts and the encoder latent ``f`` (detached; ``VQVAE.forward`` split open
    to keep it)."""
    f_BChw = model.img_to_f(x_B1HW)
    f_hat, vq = model.quantize(f_BChw)
    rec_B1HW = model.decoder(model.post_quant_conv(f_hat))
    l2, l1 = F.mse_loss(rec_B1HW, x_B1HW), F.l1_loss(rec_B1HW, x_B1HW)
    total = cfg.l2_weight * l2 + cfg.l1_weight * l1 + cfg.vq_weight * vq
    return total, {"l2": l2, "l1": l1, "vq": vq}, f_BChw.detach()


@torch.no_grad()
def residual_cells(model: VQVAE, f_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What each scale quantizes: residual vectors ``[N, C]`` of every cell of every scale and
    the codes chosen for them ``[N]`` (N = B * sum(pn^2))."""
    q = model.quantize
    pns, C = q.v_patch_nums, f_BChw.shape[1]
    f_hats = q.f_to_idxBl_or_fhat(f_BChw, to_fhat=True)
    prev, cells = torch.zeros_like(f_hats[0]), []
    for si, pn in enumerate(pns):
        r = f_BChw.float() - prev
        r = F.interpolate(r, size=(pn, pn), mode="area") if si != len(pns) - 1 else r
        cells.append(r.permute(0, 2, 3, 1).reshape(-1, C))
        prev = f_hats[si]
    r_NC = torch.cat(cells)
    return r_NC, q.nearest_code(r_NC)


@torch.no_grad()
def restart_codes(
    model: VQVAE, opt: torch.optim.Optimizer, dead_V: torch.Tensor, r_NC: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Set the codebook rows flagged in ``dead_V`` to distinct random rows of ``r_NC`` and zero
    their Adam moments. Returns the restarted ids."""
    dead = dead_V.nonzero().flatten()[: len(r_NC)]
    if len(dead) == 0:
        return dead
    weight = model.quantize.embedding.weight
    weight[dead] = r_NC[torch.randperm(len(r_NC), generator=gen)[: len(dead)]].to(weight.dtype)
    for moment in opt.state.get(weight, {}).values():
        if torch.is_tensor(moment) and moment.shape == weight.shape:
            moment[dead] = 0
    return dead


def train(
    vq_cfg: VQVAEConfig,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    images_NHW: torch.Tensor,
    max_steps: int | None = None,
    progress: bool = True,
) -> tuple[VQVAE, dict[str, Any]]:
    """Train on uint8 ``images_NHW`` (or resume ``out_dir/ckpt.pt``) up to ``cfg.steps``.

    ``max_steps`` stops after that many steps in this call (checkpointed, as an interruption
    would be). Returns the model (eval mode) and a record: ``step``, ``finished``,
    ``train_seconds`` (summed over resumes) and the last logged metrics.
    """
    from tqdm.auto import tqdm

    from mmaccel.image_ar.fashion.data import to_float

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = full_config(vq_cfg, cfg)
    torch.manual_seed(cfg.seed)
    model = VQVAE(vq_cfg).train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)  # fmt: skip
    V = vq_cfg.vocab_size
    last_used_V = torch.zeros(V, dtype=torch.long)  # step after which each code was last chosen
    restarted_V = torch.zeros(V, dtype=torch.long)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, seconds, metrics = 0, 0.0, {}
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if json.loads(ckpt["config"]) != config:
            raise ValueError(f"{ckpt_path} was written by another config; use another --out-dir or delete it")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        last_used_V, restarted_V, gen_state = ckpt["last_used"], ckpt["restarted"], ckpt["rng"]
        gen.set_state(gen_state)
        step, seconds, metrics = int(ckpt["step"]), float(ckpt["train_seconds"]), json.loads(ckpt["metrics"])
        # the rate of the official usage EMA (ema_vocab_hit_SV) depends on this counter
        model.quantize.record_hit = int(ckpt["record_hit"])
        log.info("resumed %s at step %d of %d", ckpt_path, step, cfg.steps)

    def save() -> None:
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "last_used": last_used_V, "restarted": restarted_V, "rng": gen.get_state(),
                     "record_hit": model.quantize.record_hit, "train_seconds": seconds,
                     "metrics": json.dumps(metrics), "config": json.dumps(config)}, ckpt_path)  # fmt: skip

    n = len(images_NHW)
    stop = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    bar = tqdm(total=cfg.steps, initial=step, desc="fashion vqvae", disable=not progress,
               mininterval=1 if sys.stderr.isatty() else 60, dynamic_ncols=True)  # fmt: skip
    t_start = t_saved = t_log = time.perf_counter()
    step_log = step
    with (out / "loss.log").open("a") as log_file:
        while step < stop:
            x_B1HW = to_float(images_NHW[batch_indices(step, n, cfg)])
            if step == 0:
                # data-dependent codebook init: with an all-zero codebook every scale's residual is
                # the resized latent, so each code starts as a cell of the first batch at some scale
                with torch.no_grad():
                    model.quantize.embedding.weight.zero_()
                    r_NC, _ = residual_cells(model, model.img_to_f(x_B1HW))
                restart_codes(model, opt, torch.ones(V, dtype=torch.bool), r_NC, gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss, parts, f_BChw = losses(model, x_B1HW, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            opt.step()
            step += 1
            r_NC, idx_N = residual_cells(model, f_BChw)
            last_used_V[idx_N] = step
            restarted = 0
            if cfg.restart_every and step % cfg.restart_every == 0 and step < cfg.restart_until * cfg.steps:
                # a restarted code gets dead_after steps to be picked before it counts as dead again
                dead_V = (step - torch.maximum(last_used_V, restarted_V)) >= cfg.dead_after
                ids = restart_codes(model, opt, dead_V, r_NC, gen)
                restarted_V[ids] = step
                restarted = len(ids)
            if step % cfg.log_every == 0 or step == stop:
                now = time.perf_counter()
                metrics = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()},
                           "psnr_train": -10 * math.log10(max(parts["l2"].item() / 4, 1e-10)),
                           "usage": ((step - last_used_V) < cfg.dead_after).float().mean().item(),
                           "restarted": restarted, "grad_norm": float(grad_norm),
                           "lr": opt.param_groups[0]["lr"],
                           "s_per_step": (now - t_log) / max(1, step - step_log)}  # fmt: skip
                t_log, step_log = now, step
                log_file.write(json.dumps(metrics) + "\n")
                log_file.flush()
                log.info("step %d %s", step, {k: round(v, 5) for k, v in metrics.items() if k != "step"})
                postfix = {
                    "l2": f"{metrics['l2']:.4f}",
                    "vq": f"{metrics['vq']:.4f}",
                    "usage": f"{metrics['usage']:.2f}",
                }
                bar.set_postfix(postfix, refresh=False)  # a refresh would defeat mininterval in logs
            bar.update(1)
            now = time.perf_counter()
            if step == stop or now - t_saved > 60 * cfg.checkpoint_minutes:
                seconds, t_start = seconds + now - t_start, now
                save()
                t_saved = time.perf_counter()
    bar.close()
    record = {"step": step, "finished": step == cfg.steps, "train_seconds": seconds, "last_metrics": metrics}
    return model.eval(), record


def export(model: VQVAE, path: str | os.PathLike, record: dict[str, Any]) -> None:
    """fp16 safetensors in the official key layout (config in the metadata) + ``record`` as json."""
    meta = {"format": "pt", "name": "fashion_vqvae", "vqvae_config": json.dumps(config_to_dict(model.cfg))}
    export_fp16(model.state_dict(), path, meta, record)


def evaluate_export(
    weights: Path, folder: Path, n: int = 0, batch: int = 500, **extra: Any
) -> dict[str, Any]:
    """Evaluate an exported file (what ships: the fp16 weights) on the first ``n`` test images (0 =
    all) and store the result, with ``extra``, as ``test`` in the json beside it; returns the json."""
    from mmaccel.image_ar.fashion.data import load_split

    test = load_split("test", folder)
    n = n or len(test)
    t0 = time.perf_counter()
    result = evaluate_reconstructions(load_fashion_vqvae(weights), test.images[:n], test.labels[:n], batch)
    return store_test(weights, result, time.perf_counter() - t0, **extra)


def main(argv: list[str] | None = None) -> None:
    from mmaccel.image_ar.fashion.data import PACKAGE, data_dir, load_split

    parser = argparse.ArgumentParser(description="Train the VAR multi-scale VQ-VAE on Fashion-MNIST 32x32.")
    add_config_args(parser)
    parser.set_defaults(recipe=RECIPE)
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/fashion_vqvae"),
                        help="checkpoint + loss.log; an existing ckpt.pt there is resumed")  # fmt: skip
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="exported fp16 weights (+ .json)")
    parser.add_argument("--steps", type=int, help="override the config's train.steps")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size")
    parser.add_argument("--lr", type=float, help="override train.lr")
    parser.add_argument("--seed", type=int, help="override train.seed")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (run again to resume)")
    parser.add_argument("--eval-n", type=int, default=0, help="test images to evaluate (0 = all)")
    parser.add_argument("--eval-only", action="store_true", help="only re-evaluate --weights (no training)")
    parser.add_argument(
        "--data-dir", type=Path, help=f"Fashion-MNIST files (default: the {PACKAGE} package's)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.config is None and args.stage is None:
        args.stage = "1"  # the recipe has one stage
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    config, source = config_from_args(parser, args, CONFIG_KEYS)
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    train_config = {**config.get("train", {}), **{k: v for k, v in overrides.items() if v is not None}}
    vq_cfg, cfg = configs_from_dict({**config, "train": train_config})
    folder = data_dir(args.data_dir)
    command = shlex.join([*TRAIN_COMMAND.split(), *(sys.argv[1:] if argv is None else argv)])
    if args.eval_only:
        full = evaluate_export(args.weights, folder, args.eval_n, cfg.eval_batch, command=command)
    else:
        train_split = load_split("train", folder)
        images_NHW = torch.from_numpy(train_split.images.copy())
        model, record = train(vq_cfg, cfg, args.out_dir, images_NHW, args.max_steps)
        if not record["finished"]:
            print(
                f"stopped at step {record['step']} of {cfg.steps}; run again with the same arguments to resume"
            )
            return
        full = {"name": "fashion_vqvae", "command": command, "config_from": source,
                "config": full_config(vq_cfg, cfg), "train_seconds": round(record["train_seconds"], 1),
                "threads": args.threads, "final_train_metrics": record["last_metrics"],
                "num_parameters": sum(p.numel() for p in model.parameters()),
                "data": {"package": PACKAGE, "dir": str(folder), "train": len(train_split)},
                "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "torch": torch.__version__}}  # fmt: skip
        export(model, args.weights, full)
        full = evaluate_export(args.weights, folder, args.eval_n, cfg.eval_batch)
    t = full["test"]
    print(f"{args.weights} ({full['file_bytes'] / 1e6:.2f} MB, trained {full['train_seconds']:.0f} s): "
          f"test PSNR {t['psnr']:.2f} dB, codebook usage {t['usage']:.3f}, classifier accuracy "
          f"{t['classifier_accuracy_reconstructions']:.4f} on reconstructions vs "
          f"{t['classifier_accuracy_originals']:.4f} on the originals")  # fmt: skip


if __name__ == "__main__":
    main()
