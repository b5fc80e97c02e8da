"""Train the small MAR KL autoencoder on Fashion-MNIST 32x32 (the latent space of the Fashion
MARs), and load the shipped one.

Implements the KL-autoencoder objective of LDM (Rombach et al. 2022, Sec. 3 and App. G, the
``LPIPSWithDiscriminator`` loss MAR's kl16 was trained with) without its perceptual and GAN
terms, every term a mean over elements::

    L = l2_weight * |x - D(z)|^2 + l1_weight * |x - D(z)|_1 + kl_weight * KL(q(z|x) || N(0, I)),
    z ~ q(z|x) = N(mean(x), exp(logvar(x)))

then measures ``latent_scale = 1 / std`` of posterior samples over the training images (MAR
multiplies latents by it; the official kl16 value, 0.2325, was measured the same way on
ImageNet) and the per-channel mean, both stored in the weights' metadata and json.

Owns: ``TrainConfig``, the loop (data order by step index, resumable ``<out-dir>/ckpt.pt``
written every ``checkpoint_minutes`` and at the end, ``loss.log``), the shipped weights' path,
``config_to_dict`` / ``config_from_dict`` for ``KLVAEConfig``, ``load_fashion_kl_vae``, the
latent statistics, exporting fp16 safetensors (config and latent statistics in the metadata)
+ a json record, and evaluating the export on the test split (PSNR of the posterior mean's and
of a sample's decoding, the Fashion classifier's accuracy on reconstructions). From the
repository root::

    OMP_WAIT_POLICY=PASSIVE python -m mmaccel.image_ar.mar.train_kl_vae --out-dir outputs/fashion_kl_vae
    python -m mmaccel.image_ar.mar.train_kl_vae --eval-only   # re-measure the shipped weights

Must never: look at the test split before training ends, use unseeded randomness, change the
official key layout, or print outside ``main``.
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

import numpy as np
import torch
import torch.nn.functional as F

from mmaccel.image_ar.checkpoint import export_fp16, save_atomic, store_test
from mmaccel.image_ar.mar.vae import AutoencoderKL, KLVAEConfig, load_official_kl
from mmaccel.image_ar.recipe import add_config_args, config_from_args
from mmaccel.image_ar.schedule import batch_indices, lr_at
from mmaccel.image_ar.train_config import split_config

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "fashion_kl_vae_recipe.json"
WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "fashion_kl_vae.safetensors"
TRAIN_COMMAND = "python -m mmaccel.image_ar.mar.train_kl_vae"
CHECKPOINT = "ckpt.pt"
_TUPLE_FIELDS = ("ch_mult", "attn_resolutions", "decoder_attn_resolutions")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """``lr`` peaks after ``warmup_steps`` of linear warm-up, then a cosine decays it to
    ``lr * min_lr_ratio`` at ``steps``. Step ``s`` reads the ``s``-th batch of an epoch order
    seeded by ``(seed, epoch)``. ``scale_n`` training images (0 = all) measure the latent scale."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    l2_weight: float = 1.0
    l1_weight: float = 0.2
    kl_weight: float = 1e-5
    seed: int = 0
    checkpoint_minutes: float = 2.0
    log_every: int = 25
    eval_batch: int = 500
    scale_n: int = 0


CONFIG_KEYS = {
    "model": [f.name for f in dataclasses.fields(KLVAEConfig)],
    "train": [f.name for f in dataclasses.fields(TrainConfig)],
}


def config_to_dict(cfg: KLVAEConfig) -> dict[str, Any]:
    """Every field of ``cfg`` as json data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(values: dict[str, Any]) -> KLVAEConfig:
    """A ``KLVAEConfig`` from json data; ValueError naming unknown keys."""
    unknown = sorted(set(values) - set(CONFIG_KEYS["model"]))
    if unknown:
        raise ValueError(f"unknown KLVAEConfig key(s) {unknown}")
    return KLVAEConfig(**{k: tuple(v) if k in _TUPLE_FIELDS else v for k, v in values.items()})


def configs_from_dict(config: dict[str, dict[str, Any]]) -> tuple[KLVAEConfig, TrainConfig]:
    """``{"model": KLVAEConfig fields, "train": TrainConfig fields}`` -> the two configs."""
    return split_config(config, CONFIG_KEYS, config_from_dict, TrainConfig)


def full_config(vae_cfg: KLVAEConfig, cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """Both configs, every key, as json data (what a checkpoint and the weights' json record)."""
    return {"model": config_to_dict(vae_cfg), "train": json.loads(json.dumps(dataclasses.asdict(cfg)))}


def read_metadata(path: str | os.PathLike) -> tuple[KLVAEConfig, dict[str, Any]]:
    """The config and latent statistics (``latent_scale``, ``latent_mean``) a weights file carries."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "kl_vae_config" not in meta:
        raise ValueError(f"{path}: no kl_vae_config in its metadata (not written by train_kl_vae?)")
    stats = json.loads(meta.get("latent_stats", "{}"))
    return config_from_dict(json.loads(meta["kl_vae_config"])), stats


def load_fashion_kl_vae(
    path: str | os.PathLike = WEIGHTS, dtype: torch.dtype = torch.float32
) -> tuple[AutoencoderKL, dict[str, Any]]:
    """The shipped (or a given) Fashion KL-VAE in eval mode and its latent statistics
    (``latent_scale``: multiply posterior samples by it before MAR; ``latent_mean``: per channel).

    FileNotFoundError naming the training command when the file is absent."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Fashion KL-VAE weights not found at {path}; train them with `{TRAIN_COMMAND}`"
        )
    cfg, stats = read_metadata(path)
    return load_official_kl(path, cfg, dtype=dtype), stats


def losses(
    model: AutoencoderKL, x_B1HW: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, dict]:
    """Total loss and its parts (``kl`` per latent element)."""
    posterior = model.encode(x_B1HW)
    rec_B1HW = model.decode(posterior.sample(gen))
    l2, l1 = F.mse_loss(rec_B1HW, x_B1HW), F.l1_loss(rec_B1HW, x_B1HW)
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    total = cfg.l2_weight * l2 + cfg.l1_weight * l1 + cfg.kl_weight * kl
    return total, {"l2": l2, "l1": l1, "kl": kl}


def train(
    vae_cfg: KLVAEConfig,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    images_NHW: torch.Tensor,
    max_steps: int | None = None,
    progress: bool = True,
) -> tuple[AutoencoderKL, dict[str, Any]]:
    """Train on uint8 ``images_NHW`` (or resume ``out_dir/ckpt.pt``) up to ``cfg.steps``;
    ``max_steps`` stops after that many steps in this call (checkpointed). Returns the model
    (eval mode) and a record: ``step``, ``finished``, ``train_seconds``, last logged metrics."""
    from tqdm.auto import tqdm

    from mmaccel.image_ar.fashion.data import to_float

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = full_config(vae_cfg, cfg)
    torch.manual_seed(cfg.seed)
    model = AutoencoderKL(vae_cfg).train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    other = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)  # fmt: skip
    gen = torch.Generator().manual_seed(cfg.seed)
    step, seconds, metrics = 0, 0.0, {}
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if json.loads(ckpt["config"]) != config:
            raise ValueError(f"{ckpt_path} was written by another config; use another --out-dir or delete it")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"])
        step, seconds, metrics = int(ckpt["step"]), float(ckpt["train_seconds"]), json.loads(ckpt["metrics"])
        log.info("resumed %s at step %d of %d", ckpt_path, step, cfg.steps)

    def save() -> None:
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "rng": gen.get_state(), "train_seconds": seconds, "metrics": json.dumps(metrics),
                     "config": json.dumps(config)}, ckpt_path)  # fmt: skip

    n = len(images_NHW)
    stop = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    bar = tqdm(total=cfg.steps, initial=step, desc="fashion kl-vae", disable=not progress,
               mininterval=1 if sys.stderr.isatty() else 60, dynamic_ncols=True)  # fmt: skip
    t_start = t_saved = t_log = time.perf_counter()
    step_log = step
    with (out / "loss.log").open("a") as log_file:
        while step < stop:
            x_B1HW = to_float(images_NHW[batch_indices(step, n, cfg)])
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss, parts = losses(model, x_B1HW, cfg, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            opt.step()
            step += 1
            if step % cfg.log_every == 0 or step == stop:
                now = time.perf_counter()
                metrics = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()},
                           "psnr_train": -10 * math.log10(max(parts["l2"].item() / 4, 1e-10)),
                           "grad_norm": float(grad_norm), "lr": opt.param_groups[0]["lr"],
                           "s_per_step": (now - t_log) / max(1, step - step_log)}  # fmt: skip
                t_log, step_log = now, step
                log_file.write(json.dumps(metrics) + "\n")
                log_file.flush()
                log.info("step %d %s", step, {k: round(v, 5) for k, v in metrics.items() if k != "step"})
                bar.set_postfix({"l2": f"{metrics['l2']:.4f}", "kl": f"{metrics['kl']:.3f}"}, refresh=False)
            bar.update(1)
            now = time.perf_counter()
            if step == stop or now - t_saved > 60 * cfg.checkpoint_minutes:
                seconds, t_start = seconds + now - t_start, now
                save()
                t_saved = time.perf_counter()
    bar.close()
    record = {"step": step, "finished": step == cfg.steps, "train_seconds": seconds, "last_metrics": metrics}
    return model.eval(), record


@torch.no_grad()
def latent_stats(
    model: AutoencoderKL, images_NHW: torch.Tensor, batch: int = 500, seed: int = 0
) -> dict[str, Any]:
    """Statistics of posterior samples of uint8 ``images_NHW``: ``latent_scale`` = 1 / std over
    every element (MAR's scale factor), ``latent_mean`` and ``latent_std`` per channel, and the
    mean posterior std (how much sampling moves a latent)."""
    from mmaccel.image_ar.fashion.data import to_float

    gen = torch.Generator().manual_seed(seed)
    s1 = s2 = post_std = 0.0
    c1 = c2 = None
    count = 0
    for i in range(0, len(images_NHW), batch):
        posterior = model.encode(to_float(images_NHW[i : i + batch]))
        z_BChw = posterior.sample(gen).double()
        c1 = z_BChw.sum((0, 2, 3)) + (0 if c1 is None else c1)
        c2 = z_BChw.pow(2).sum((0, 2, 3)) + (0 if c2 is None else c2)
        post_std += float(posterior.std.double().sum())
        count += z_BChw.numel() // z_BChw.shape[1]
    mean_C, sq_C = c1 / count, c2 / count
    s1, s2 = float(mean_C.mean()), float(sq_C.mean())
    std = math.sqrt(s2 - s1 * s1)
    return {"latent_scale": 1.0 / std, "latent_std_all": std, "latent_mean_all": s1,
            "latent_mean": [round(float(v), 5) for v in mean_C],
            "latent_std": [round(float(v), 5) for v in (sq_C - mean_C.pow(2)).sqrt()],
            "posterior_std_mean": post_std / (count * len(mean_C)), "n": len(images_NHW)}  # fmt: skip


def export(
    model: AutoencoderKL, path: str | os.PathLike, stats: dict[str, Any], record: dict[str, Any]
) -> None:
    """fp16 safetensors in the official key layout (config + latent statistics in the metadata) + json."""
    meta = {"format": "pt", "name": "fashion_kl_vae", "kl_vae_config": json.dumps(config_to_dict(model.cfg)),
            "latent_stats": json.dumps(stats)}  # fmt: skip
    export_fp16(model.state_dict(), path, meta, record)


@torch.no_grad()
def evaluate_reconstructions(
    model: AutoencoderKL, images_NHW: np.ndarray, labels_N: np.ndarray, batch: int = 500
) -> dict[str, Any]:
    """PSNR (on [0, 1] pixels rounded to uint8, mean over images) of the decoded posterior mean
    and of a decoded posterior sample (seed 0), and the Fashion classifier's accuracy on the
    originals and on the mean's reconstructions."""
    from mmaccel.image_ar.fashion.classifier import load_classifier, predict
    from mmaccel.image_ar.fashion.data import to_float
    from mmaccel.image_ar.var.fashion_vq import to_uint8

    gen = torch.Generator().manual_seed(0)
    p = next(model.parameters())
    mode, sample = [], []
    for i in range(0, len(images_NHW), batch):
        posterior = model.encode(to_float(np.array(images_NHW[i : i + batch])).to(p.dtype))
        mode.append(to_uint8(model.decode(posterior.mode())))
        sample.append(to_uint8(model.decode(posterior.sample(gen))))
    ref_NHW = torch.from_numpy(np.array(images_NHW)).float()
    rec_NHW = torch.cat(mode)

    def psnr(r_NHW: torch.Tensor) -> float:
        mse_N = ((r_NHW.float() - ref_NHW) / 255).pow(2).mean((1, 2))
        return round(float((-10 * torch.log10(mse_N.clamp_min(1e-10))).mean()), 3)

    net, truth_N = load_classifier(), torch.as_tensor(np.array(labels_N))
    pred_orig_N, pred_rec_N = predict(net, ref_NHW.to(torch.uint8)), predict(net, rec_NHW)
    return {"n": len(images_NHW), "psnr": psnr(rec_NHW), "psnr_sample": psnr(torch.cat(sample)),
            "classifier_accuracy_originals": round(float((pred_orig_N == truth_N).float().mean()), 4),
            "classifier_accuracy_reconstructions": round(float((pred_rec_N == truth_N).float().mean()), 4),
            "classifier_agreement": round(float((pred_orig_N == pred_rec_N).float().mean()), 4)}  # fmt: skip


def evaluate_export(
    weights: Path, folder: Path, n: int = 0, batch: int = 500, **extra: Any
) -> dict[str, Any]:
    """Evaluate the exported fp16 file on the first ``n`` test images (0 = all); store the result,
    with ``extra``, as ``test`` in the json beside it; return the json."""
    from mmaccel.image_ar.fashion.data import load_split

    test = load_split("test", folder)
    n = n or len(test)
    t0 = time.perf_counter()
    model, _ = load_fashion_kl_vae(weights)
    result = evaluate_reconstructions(model, test.images[:n], test.labels[:n], batch)
    return store_test(weights, result, time.perf_counter() - t0, **extra)


def main(argv: list[str] | None = None) -> None:
    from mmaccel.image_ar.fashion.data import PACKAGE, data_dir, load_split

    parser = argparse.ArgumentParser(description="Train the MAR KL autoencoder on Fashion-MNIST 32x32.")
    add_config_args(parser)
    parser.set_defaults(recipe=RECIPE)
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/fashion_kl_vae"),
                        help="checkpoint + loss.log; an existing ckpt.pt there is resumed")  # fmt: skip
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="exported fp16 weights (+ .json)")
    parser.add_argument("--steps", type=int, help="override the config's train.steps")
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
    train_config = {**config.get("train", {}), **({"steps": args.steps} if args.steps is not None else {})}
    vae_cfg, cfg = configs_from_dict({**config, "train": train_config})
    folder = data_dir(args.data_dir)
    command = shlex.join([*TRAIN_COMMAND.split(), *(sys.argv[1:] if argv is None else argv)])
    if args.eval_only:
        full = evaluate_export(args.weights, folder, args.eval_n, cfg.eval_batch, command=command)
    else:
        train_split = load_split("train", folder)
        images_NHW = torch.from_numpy(train_split.images.copy())
        model, record = train(vae_cfg, cfg, args.out_dir, images_NHW, args.max_steps)
        if not record["finished"]:
            print(
                f"stopped at step {record['step']} of {cfg.steps}; run again with the same arguments to resume"
            )
            return
        # the statistics of the weights that ship (fp16), so MAR sees exactly what it will decode from
        sd16 = {k: v.half().float() for k, v in model.state_dict().items()}
        model.load_state_dict(sd16)
        t0 = time.perf_counter()
        stats = latent_stats(model, images_NHW[: cfg.scale_n or len(images_NHW)], cfg.eval_batch, cfg.seed)
        stats["seconds"] = round(time.perf_counter() - t0, 1)
        full = {"name": "fashion_kl_vae", "command": command, "config_from": source,
                "config": full_config(vae_cfg, cfg), "train_seconds": round(record["train_seconds"], 1),
                "threads": args.threads, "final_train_metrics": record["last_metrics"],
                "num_parameters": sum(p.numel() for p in model.parameters()),
                "latent_scale": stats["latent_scale"], "latent_stats": stats,
                "data": {"package": PACKAGE, "dir": str(folder), "train": len(train_split)},
                "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "torch": torch.__version__}}  # fmt: skip
        export(model, args.weights, stats, full)
        full = evaluate_export(args.weights, folder, args.eval_n, cfg.eval_batch)
    t = full["test"]
    print(f"{args.weights} ({full['file_bytes'] / 1e6:.2f} MB, trained {full['train_seconds']:.0f} s): "
          f"test PSNR {t['psnr']:.2f} dB (sample {t['psnr_sample']:.2f}), classifier accuracy "
          f"{t['classifier_accuracy_reconstructions']:.4f} on reconstructions vs "
          f"{t['classifier_accuracy_originals']:.4f} on the originals; latent_scale {full['latent_scale']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
