"""Train a class-conditional MAR (Li et al. 2024) on the latents of the Fashion KL-VAE: the
``target`` model and its cheap ``draft``.

Implements the official MAR training step (LTH14/mar ``engine_mar.train_one_epoch``): a
posterior sample of each image's VAE latent, times the latent scale, is the target of
``loss = model(latents_BCHW, labels_B)`` (random order, truncated-normal mask ratio, class
dropped with ``label_drop_prob``, Diffusion Loss on the masked tokens); AdamW with weight decay
on the transformer's matrices only (official ``add_weight_decay``: not on biases, norms or the
Diffusion Loss MLP), gradient clipping and an EMA of the weights (with a warm-up the official
lacks: its fixed rate suits 400 epochs, not a run of a few thousand steps). As official with
``--use_cached``, the posterior moments are computed once (``encode_latents``, cached beside
the outputs) and a fresh sample is drawn per batch. At the end the raw and the EMA weights are
both evaluated and the better ships. The head samples with the config's ``num_sampling_steps``:
the recipe keeps the official "ddim50" steps (0, 20, ..., 980; the official "50" starts at
t = 999, where 1 / sqrt(abar) ~ 1e4 turns a short run's eps error into a diverging chain).

Owns: ``TrainConfig``, the latent cache, the loop (data order by step index, resumable
``<out-dir>/ckpt.pt`` every ``checkpoint_minutes`` and at the end, ``loss.log``), the cost
model (``forward_macs``: multiply-accumulates of one full forward at the sampling sequence
length plus one Diffusion-Loss MLP evaluation per token), exporting fp16 safetensors (config,
VAE digest and latent scale in the metadata) + a json record, and the evaluation: class
consistency of images sampled with the official ``MAR.sample_tokens``, decoded by the VAE and
judged by the shipped Fashion classifier. Presets are stages of
``image_ar/configs/fashion_mar_recipe.json``. From the repository root::

    OMP_WAIT_POLICY=PASSIVE python -m mmaccel.image_ar.mar.train_mar --preset target --encode-only
    OMP_WAIT_POLICY=PASSIVE python -m mmaccel.image_ar.mar.train_mar --preset target --threads 1
    OMP_WAIT_POLICY=PASSIVE python -m mmaccel.image_ar.mar.train_mar --preset draft --threads 1
    python -m mmaccel.image_ar.mar.train_mar --preset draft --eval-only   # re-measure shipped weights

Must never: look at the test split, use unseeded randomness, change the model's key layout,
or print outside ``main``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
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

from mmaccel.image_ar.checkpoint import export_fp16, save_atomic
from mmaccel.image_ar.mar.config import MARConfig
from mmaccel.image_ar.mar.fashion_model import load_fashion_mar, weights_path
from mmaccel.image_ar.mar.train_kl_vae import WEIGHTS as VAE_WEIGHTS
from mmaccel.image_ar.mar.train_kl_vae import load_fashion_kl_vae
from mmaccel.image_ar.recipe import add_config_args, config_from_args
from mmaccel.image_ar.schedule import batch_indices, lr_at
from mmaccel.image_ar.train_config import split_config

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "fashion_mar_recipe.json"
PRESETS = ("target", "draft")
TRAIN_COMMAND = "python -m mmaccel.image_ar.mar.train_mar"
CHECKPOINT = "ckpt.pt"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """``lr`` peaks after ``warmup_steps`` of linear warm-up, then a cosine decays it to
    ``lr * min_lr_ratio`` at ``steps``. The EMA is updated after every step at rate
    ``min(ema_rate, (1 + step) / (10 + step))``. The
    ``eval_*`` fields: ``eval_n`` images (classes in turn) sampled with ``eval_num_iter``
    MAR iterations, CFG ``eval_cfg`` on the ``eval_cfg_schedule``, ``eval_temperature``."""

    steps: int = 4000
    batch_size: int = 64
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.02
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    grad_clip: float = 3.0
    ema_rate: float = 0.999
    seed: int = 0
    checkpoint_minutes: float = 3.0
    log_every: int = 25
    eval_n: int = 200
    eval_batch: int = 100
    eval_num_iter: int = 16
    eval_cfg: float = 3.0
    eval_cfg_schedule: str = "linear"
    eval_temperature: float = 1.0
    eval_seed: int = 0


CONFIG_KEYS = {
    "model": [f.name for f in dataclasses.fields(MARConfig)],
    "train": [f.name for f in dataclasses.fields(TrainConfig)],
}


def configs_from_dict(config: dict[str, dict[str, Any]]) -> tuple[MARConfig, TrainConfig]:
    """``{"model": MARConfig fields, "train": TrainConfig fields}`` -> the two configs."""
    return split_config(config, CONFIG_KEYS, MARConfig.from_dict, TrainConfig)


def full_config(mar_cfg: MARConfig, cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    return {
        "model": json.loads(json.dumps(mar_cfg.to_dict())),
        "train": json.loads(json.dumps(dataclasses.asdict(cfg))),
    }


def preset_config(preset: str, recipe: Path = RECIPE) -> dict[str, dict[str, Any]]:
    """The full config of a preset (the recipe stage ``fashion_mar_<preset>``)."""
    from mmaccel.image_ar.recipe import read_recipe, stage_config

    return stage_config(read_recipe(recipe), f"fashion_mar_{preset}", CONFIG_KEYS)


def forward_macs(cfg: MARConfig) -> dict[str, int]:
    """Multiply-accumulates of one sampling forward with every token present: the encoder and
    decoder over ``buffer_size + seq_len`` positions (linear layers + attention scores and
    values), plus one Diffusion-Loss MLP evaluation for each of the ``seq_len`` tokens."""
    T, L, C = cfg.buffer_size + cfg.seq_len, cfg.seq_len, cfg.token_embed_dim

    def blocks(width: int, depth: int) -> int:
        hidden = int(width * cfg.mlp_ratio)
        return depth * (T * (4 * width * width + 2 * width * hidden) + 2 * T * T * width)

    we, wd, w = cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.diffloss_w
    transformer = L * C * we + blocks(we, cfg.encoder_depth) + T * we * wd + blocks(wd, cfg.decoder_depth)
    # SimpleMLPAdaLN: time embed (256 -> w -> w), cond_embed, input_proj, per block in/out MLP +
    # 3w adaLN, final 2w adaLN + linear
    head = 256 * w + w * w + wd * w + C * w + cfg.diffloss_d * (2 * w * w + 3 * w * w) + 2 * w * w + w * 2 * C
    return {"transformer": transformer, "head": L * head, "total": transformer + L * head}


@torch.no_grad()
def encode_latents(vae, images_NHW: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std ``[N, C, h, w]`` (float32) of uint8 ``images_NHW``."""
    from mmaccel.image_ar.fashion.data import to_float

    means, stds = [], []
    for i in range(0, len(images_NHW), batch):
        post = vae.encode(to_float(images_NHW[i : i + batch]))
        means.append(post.mean.float())
        stds.append(post.std.float())
    return torch.cat(means), torch.cat(stds)


def cached_latents(vae_path: Path, cache: Path, images_NHW: torch.Tensor) -> dict[str, Any]:
    """``{"mean", "std", "vae_sha256"}`` of the training images, read from ``cache`` when it was
    made by the same VAE file, else encoded and written there."""
    sha = hashlib.sha256(vae_path.read_bytes()).hexdigest()
    if cache.exists():
        data = torch.load(cache, map_location="cpu", weights_only=True)
        if data.get("vae_sha256") == sha and len(data["mean"]) == len(images_NHW):
            return data
    vae, _ = load_fashion_kl_vae(vae_path)
    mean, std = encode_latents(vae, images_NHW)
    data = {"mean": mean, "std": std, "vae_sha256": sha}
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(data, cache)
    return data


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim == 1 or name.endswith(".bias") or "diffloss" in name  # official add_weight_decay
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _training_part(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without what only sampling reads (the ``eval_*`` settings and the head's
    ``num_sampling_steps``): a finished run can be re-evaluated with other ones."""
    model = {k: v for k, v in config["model"].items() if k != "num_sampling_steps"}
    train = {k: v for k, v in config["train"].items() if not k.startswith("eval_")}
    return {**config, "model": model, "train": train}


def _reseed(seed: int, step: int) -> None:
    # mask orders, mask ratios, label drops, diffusion timesteps/noise and dropout come from the
    # global generators, as in the official model: seed them from (seed, step) on every (re)start
    torch.manual_seed(seed * 1_000_003 + step)
    np.random.seed((seed * 1_000_003 + step) % 2**32)


def train(
    mar_cfg: MARConfig,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    latents: dict[str, torch.Tensor],
    labels_N: torch.Tensor,
    latent_scale: float,
    max_steps: int | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Train on cached posterior moments ``latents["mean"/"std"]`` ``[N, C, h, w]`` (or resume
    ``out_dir/ckpt.pt``) up to ``cfg.steps``. Returns the model (eval mode, raw weights), the EMA
    state dict, and a record: ``step``, ``finished``, ``train_seconds``, last logged metrics."""
    from tqdm.auto import tqdm

    from mmaccel.image_ar.mar.model import build_mar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {**full_config(mar_cfg, cfg), "latent_scale": latent_scale}
    _reseed(cfg.seed, 0)
    model = build_mar(mar_cfg).train()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(cfg.seed)
    step, seconds, metrics = 0, 0.0, {}
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if _training_part(json.loads(ckpt["config"])) != _training_part(config):
            raise ValueError(f"{ckpt_path} was written by another config; use another --out-dir or delete it")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        ema = ckpt["ema"]
        gen.set_state(ckpt["rng"])
        step, seconds, metrics = int(ckpt["step"]), float(ckpt["train_seconds"]), json.loads(ckpt["metrics"])
        _reseed(cfg.seed, step)
        log.info("resumed %s at step %d of %d", ckpt_path, step, cfg.steps)

    def save() -> None:
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema, "step": step,
                     "rng": gen.get_state(), "train_seconds": seconds, "metrics": json.dumps(metrics),
                     "config": json.dumps(config)}, ckpt_path)  # fmt: skip

    params = dict(model.named_parameters())
    mean_NChw, std_NChw, n = latents["mean"], latents["std"], len(labels_N)
    stop = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    bar = tqdm(total=cfg.steps, initial=step, desc="fashion mar", disable=not progress,
               mininterval=1 if sys.stderr.isatty() else 60, dynamic_ncols=True)  # fmt: skip
    t_start = t_saved = t_log = time.perf_counter()
    step_log, loss_sum, loss_n = step, 0.0, 0
    with (out / "loss.log").open("a") as log_file:
        while step < stop:
            idx_B = batch_indices(step, n, cfg)
            noise_BChw = torch.randn(mean_NChw[idx_B].shape, generator=gen)
            x_BChw = (mean_NChw[idx_B] + std_NChw[idx_B] * noise_BChw) * latent_scale
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = model(x_BChw, labels_N[idx_B])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            opt.step()
            # EMA warm-up (timm's ModelEmaV2 style): the official fixed rate would keep 0.999^N of the
            # random init after N steps, a visible share in a run of a few thousand steps
            rate = min(cfg.ema_rate, (1 + step) / (10 + step))
            with torch.no_grad():
                for name, p in params.items():
                    ema[name].mul_(rate).add_(p.detach(), alpha=1 - rate)
            step += 1
            loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
            if step % cfg.log_every == 0 or step == stop:
                now = time.perf_counter()
                metrics = {"step": step, "loss": loss_sum / loss_n, "grad_norm": float(grad_norm),
                           "lr": opt.param_groups[0]["lr"], "s_per_step": (now - t_log) / max(1, step - step_log)}  # fmt: skip
                t_log, step_log, loss_sum, loss_n = now, step, 0.0, 0
                log_file.write(json.dumps(metrics) + "\n")
                log_file.flush()
                log.info("step %d %s", step, {k: round(v, 5) for k, v in metrics.items() if k != "step"})
                bar.set_postfix({"loss": f"{metrics['loss']:.4f}"}, refresh=False)
            bar.update(1)
            now = time.perf_counter()
            if step == stop or now - t_saved > 60 * cfg.checkpoint_minutes:
                seconds, t_start = seconds + now - t_start, now
                save()
                t_saved = time.perf_counter()
    bar.close()
    record = {"step": step, "finished": step == cfg.steps, "train_seconds": seconds, "last_metrics": metrics}
    return model.eval(), ema, record


@torch.no_grad()
def class_consistency(
    model, vae, latent_scale: float, cfg: TrainConfig, out_png: Path | None = None
) -> dict[str, Any]:
    """Sample ``cfg.eval_n`` images (class ``i % class_num`` for the i-th) with the official
    ``sample_tokens``, decode them with the VAE and return the Fashion classifier's accuracy
    against the asked classes (overall and per class), with the sampling settings and time."""
    from mmaccel.image_ar.fashion.classifier import load_classifier, predict
    from mmaccel.image_ar.fashion.data import CLASS_NAMES
    from mmaccel.image_ar.var.fashion_vq import to_uint8

    model.eval()
    gen = torch.Generator().manual_seed(cfg.eval_seed)
    classes_N = torch.arange(cfg.eval_n) % model.num_classes
    t0 = time.perf_counter()
    images = []
    for i in range(0, cfg.eval_n, cfg.eval_batch):
        labels_B = classes_N[i : i + cfg.eval_batch]
        tokens_BChw = model.sample_tokens(len(labels_B), num_iter=cfg.eval_num_iter, cfg=cfg.eval_cfg,
                                          cfg_schedule=cfg.eval_cfg_schedule, labels=labels_B,
                                          temperature=cfg.eval_temperature, generator=gen)  # fmt: skip
        images.append(to_uint8(vae.decode(tokens_BChw.float() / latent_scale).clamp(-1, 1)))
    images_NHW = torch.cat(images)
    seconds = time.perf_counter() - t0
    pred_N = predict(load_classifier(), images_NHW)
    ok_N = (pred_N == classes_N).float()
    if out_png is not None:
        from PIL import Image

        # one row per class (the i-th image has class i % C), up to 10 samples each
        C, (H, W) = model.num_classes, images_NHW.shape[1:]
        k = min(10, len(images_NHW) // C)
        grid = (
            images_NHW[: k * C].reshape(k, C, H, W).transpose(0, 1).permute(0, 2, 1, 3).reshape(C * H, k * W)
        )
        out_png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid.contiguous().numpy()).save(out_png)
    return {"n": cfg.eval_n, "class_consistency": round(float(ok_N.mean()), 4),
            "per_class": {name: round(float(ok_N[classes_N == k].mean()), 4) for k, name in enumerate(CLASS_NAMES)},
            "num_iter": cfg.eval_num_iter, "cfg": cfg.eval_cfg, "cfg_schedule": cfg.eval_cfg_schedule,
            "temperature": cfg.eval_temperature, "num_sampling_steps": model.diffloss.num_sampling_steps,
            "sample_seconds": round(seconds, 1), "seed": cfg.eval_seed}  # fmt: skip


def export(state: dict[str, torch.Tensor], mar_cfg: MARConfig, path: Path, vae_sha: str, latent_scale: float,
           record: dict[str, Any]) -> None:  # fmt: skip
    """fp16 safetensors (official MAR keys; config, VAE digest and latent scale in the metadata) + json."""
    meta = {"format": "pt", "name": path.stem, "mar_config": json.dumps(mar_cfg.to_dict()),
            "vae_sha256": vae_sha, "latent_scale": repr(latent_scale)}  # fmt: skip
    export_fp16(state, path, meta, record)


def main(argv: list[str] | None = None) -> None:
    from mmaccel.image_ar.fashion.data import PACKAGE, data_dir, load_split

    parser = argparse.ArgumentParser(
        description="Train a class-conditional MAR on the Fashion KL-VAE latents."
    )
    add_config_args(parser)
    parser.set_defaults(recipe=RECIPE)
    parser.add_argument(
        "--preset", choices=PRESETS, default="target", help="the recipe stage fashion_mar_<preset>"
    )
    parser.add_argument(
        "--out-dir", type=Path, help="checkpoint + logs (default outputs/fashion_mar_<preset>)"
    )
    parser.add_argument(
        "--weights", type=Path, help="exported fp16 weights (default image_ar/weights/fashion_mar_<preset>)"
    )
    parser.add_argument("--vae", type=Path, default=VAE_WEIGHTS, help="the KL-VAE weights")
    parser.add_argument(
        "--latents", type=Path, default=Path("outputs/fashion_mar_latents.pt"), help="latent cache"
    )
    parser.add_argument("--steps", type=int, help="override train.steps")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (run again to resume)")
    parser.add_argument("--encode-only", action="store_true", help="only fill the latent cache")
    parser.add_argument("--eval-only", action="store_true", help="only re-evaluate --weights (no training)")
    parser.add_argument(
        "--data-dir", type=Path, help=f"Fashion-MNIST files (default: the {PACKAGE} package's)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.config is None and args.stage is None:
        args.stage = f"fashion_mar_{args.preset}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    config, source = config_from_args(parser, args, CONFIG_KEYS)
    train_config = {**config.get("train", {}), **({"steps": args.steps} if args.steps is not None else {})}
    mar_cfg, cfg = configs_from_dict({**config, "train": train_config})
    out_dir = args.out_dir or Path(f"outputs/fashion_mar_{args.preset}")
    weights = args.weights or weights_path(args.preset)
    folder = data_dir(args.data_dir)
    command = shlex.join([*TRAIN_COMMAND.split(), *(sys.argv[1:] if argv is None else argv)])
    vae, stats = load_fashion_kl_vae(args.vae)
    latent_scale = float(stats["latent_scale"])
    vae_sha = hashlib.sha256(args.vae.read_bytes()).hexdigest()
    macs = forward_macs(mar_cfg)
    target_macs = forward_macs(configs_from_dict(preset_config("target", args.recipe))[0])
    if args.eval_only:
        model, _ = load_fashion_mar(weights)
        full = json.loads(weights.with_suffix(".json").read_text())
        full["eval"] = {
            **class_consistency(model, vae, latent_scale, cfg, out_dir / "samples.png"),
            "command": command,
        }
    else:
        train_split = load_split("train", folder)
        images_NHW = torch.from_numpy(train_split.images.copy())
        latents = cached_latents(args.vae, args.latents, images_NHW)
        if args.encode_only:
            print(f"latents of {len(images_NHW)} images cached at {args.latents}")
            return
        labels_N = torch.from_numpy(train_split.labels.astype(np.int64))
        model, ema, record = train(mar_cfg, cfg, out_dir, latents, labels_N, latent_scale, args.max_steps)
        if not record["finished"]:
            print(
                f"stopped at step {record['step']} of {cfg.steps}; run again with the same arguments to resume"
            )
            return
        results = {"raw": class_consistency(model, vae, latent_scale, cfg, out_dir / "samples_raw.png")}
        raw_state = copy.deepcopy(model.state_dict())
        model.load_state_dict(ema)
        results["ema"] = class_consistency(model, vae, latent_scale, cfg, out_dir / "samples_ema.png")
        shipped = (
            "ema" if results["ema"]["class_consistency"] >= results["raw"]["class_consistency"] else "raw"
        )
        state = ema if shipped == "ema" else raw_state
        n_params = sum(p.numel() for p in model.parameters())
        full = {"name": weights.stem, "command": command, "config_from": source, "preset": args.preset,
                "config": full_config(mar_cfg, cfg), "train_seconds": round(record["train_seconds"], 1),
                "s_per_step": round(record["train_seconds"] / max(1, record["step"]), 3),
                "threads": args.threads, "final_train_metrics": record["last_metrics"],
                "num_parameters": n_params,
                "num_parameters_diffloss": sum(p.numel() for p in model.diffloss.parameters()),
                "forward_macs": macs, "cost_ratio_to_target": round(macs["total"] / target_macs["total"], 4),
                "vae": {"file": args.vae.name, "sha256": vae_sha[:16], "latent_scale": latent_scale},
                "shipped_weights": shipped, "eval": results[shipped], "eval_raw": results["raw"],
                "eval_ema": results["ema"],
                "data": {"package": PACKAGE, "dir": str(folder), "train": len(train_split)},
                "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "torch": torch.__version__}}  # fmt: skip
        export(state, mar_cfg, weights, vae_sha, latent_scale, full)
    full["file_bytes"] = weights.stat().st_size
    weights.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n")
    e = full["eval"]
    print(f"{weights} ({full['file_bytes'] / 1e6:.2f} MB): class consistency {e['class_consistency']:.3f} "
          f"over {e['n']} samples (cfg {e['cfg']}, {e['num_iter']} iterations); cost ratio to target "
          f"{full.get('cost_ratio_to_target', float('nan')):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
