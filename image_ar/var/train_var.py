"""Train the class-conditional Fashion-MNIST VARs: the large drafter and the small refiner of CoDe.

Implements VAR's training objective (Tian et al. 2024, "Visual Autoregressive Modeling", Sec. 3
and the official ``trainer.py``): teacher-forced next-scale prediction over every scale at once,
the input of scale k being ``area_resize(f_hat_{k-1}, pn_k)`` from the VQ-VAE
(``idxBl_to_var_input``), block-causal attention, and the mean cross-entropy over all ``L``
tokens::

    loss = (1 / L) sum_k sum_{t in scale k} -log p(idx_t | class, scales < k)

with the class dropped to the null class at rate ``cond_drop_rate`` (0.1, for classifier-free
guidance). AdamW (no decay on biases, gains, position / level embeddings, as official), linear
warm-up then cosine, gradient clipping, float32 on the CPU (no bf16).

Owns: the presets (``PRESETS``: large = drafter, small = refiner, at most 1/4 of its cost per
token, see ``cost``), ``TrainConfig``, the loop (data order and label drops functions of
``(seed, step)``, so a resumed run equals an uninterrupted one; ``<out-dir>/ckpt.pt`` written
every ``checkpoint_minutes`` and at the end; ``loss.log``), the fp16 export with its json
record, ``load_fashion_var`` (the shipped weights, through the official-layout ``load_var``) and
``class_consistency`` (samples per class through ``mmaccel.next_scale.decode_scales``, judged by
the Fashion classifier; it picks the guidance scale). Tokens come from ``fashion_tokens``.
Recipe: ``image_ar/configs/fashion_var_recipe.json``. From the repository root::

    OMP_WAIT_POLICY=PASSIVE python -m mmaccel.image_ar.var.train_var --preset large
    OMP_WAIT_POLICY=PASSIVE python -m mmaccel.image_ar.var.train_var --preset small

Must never: train on the test split (it gives the held-out loss only), use unseeded
randomness, change the model's key layout, or print outside ``main``.
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

from mmaccel.image_ar.checkpoint import export_fp16, save_atomic
from mmaccel.image_ar.recipe import add_config_args, config_from_args
from mmaccel.image_ar.schedule import batch_indices, lr_at
from mmaccel.image_ar.var.config import VARConfig, VQVAEConfig, check_compatible
from mmaccel.image_ar.var.fashion_tokens import CACHE_DIR, fashion_tokens, split_scales
from mmaccel.image_ar.var.model import VAR
from mmaccel.image_ar.var.vqvae import VQVAE

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "fashion_var_recipe.json"
_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
WEIGHTS = {name: _WEIGHTS_DIR / f"fashion_var_{name}.safetensors" for name in ("large", "small")}
TRAIN_COMMAND = "python -m mmaccel.image_ar.var.train_var"
CHECKPOINT = "ckpt.pt"
# the sizes of each preset; everything else of the VARConfig comes from the recipe and the VQ-VAE
PRESETS: dict[str, dict[str, int]] = {
    "large": {"depth": 8, "embed_dim": 256, "num_heads": 8},  # the drafter: 9.78 M parameters
    "small": {"depth": 4, "embed_dim": 128, "num_heads": 4},  # the refiner: 1.31 M, ~1/7 the MACs per token
}
_FROM_VQVAE = ("vocab_size", "Cvae", "patch_nums")  # set by the tokenizer, never by a config
_NO_DECAY = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul", "ada_gss")  # official nowd keys we have
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """``lr`` peaks after ``warmup_steps`` of linear warm-up, then a cosine decays it to
    ``lr * min_lr_ratio`` at ``steps``. Step ``s`` reads the ``s``-th batch of an epoch order
    seeded by ``(seed, epoch)``. Every ``eval_every`` steps (and at the end) the loss without
    label dropout is measured on ``eval_size`` fixed training and test images. ``vqvae``: the
    tokenizer's weights (None: the shipped ``fashion_vqvae.safetensors``)."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_size: int = 256
    eval_every: int = 500
    log_every: int = 10
    checkpoint_minutes: float = 3.0
    vqvae: str | None = None


CONFIG_KEYS = {
    "model": ["preset", *(f.name for f in dataclasses.fields(VARConfig) if f.name not in _FROM_VQVAE)],
    "train": [f.name for f in dataclasses.fields(TrainConfig)],
}


def var_config(model: dict[str, Any], vq_cfg: VQVAEConfig) -> VARConfig:
    """The ``VARConfig`` of a config's ``model`` section (``preset`` sizes, then its own keys) on
    the tokens of ``vq_cfg`` (vocabulary, code width and scales are the tokenizer's)."""
    model = dict(model)
    preset = model.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (known: {sorted(PRESETS)})")
    bad = sorted(set(model) - set(CONFIG_KEYS["model"]))
    if bad:
        raise ValueError(f"unknown model key(s) {bad} (known: {CONFIG_KEYS['model']})")
    return VARConfig(**{**PRESETS.get(preset, {}), **model, "vocab_size": vq_cfg.vocab_size,
                        "Cvae": vq_cfg.z_channels, "patch_nums": tuple(vq_cfg.patch_nums)})  # fmt: skip


def train_config(train: dict[str, Any]) -> TrainConfig:
    bad = sorted(set(train) - set(CONFIG_KEYS["train"]))
    if bad:
        raise ValueError(f"unknown train key(s) {bad} (known: {CONFIG_KEYS['train']})")
    return TrainConfig(**{k: tuple(v) if k == "betas" else v for k, v in train.items()})


def config_to_dict(cfg: VARConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def cost(cfg: VARConfig) -> dict[str, float]:
    """Parameters, fp16 bytes and forward multiply-adds per token (averaged over the ``L`` tokens
    of an image): the per-token linears (qkv, proj, FFN, head, word embedding), attention over the
    keys each token sees (block-causal: every scale up to its own), and the per-image AdaLN
    projections spread over ``L``."""
    with torch.device("meta"):
        n_params = sum(p.numel() for p in VAR(cfg).parameters())
    C, F_, L = cfg.embed_dim, cfg.ffn_hidden, cfg.L
    keys = sum((end - begin) * end for begin, end in cfg.begin_ends) / L
    per_block = 4 * C * C + 2 * C * F_ + 2 * C * keys
    adaln = (cfg.depth * 6 * C * C + 2 * C * C) / L  # one condition vector per image
    macs = cfg.depth * per_block + C * cfg.vocab_size + cfg.Cvae * C + adaln
    return {"params": n_params, "fp16_mb": n_params * 2 / 1e6, "macs_per_token": macs}


def label_drops(step: int, batch: int, rate: float, seed: int) -> torch.Tensor:
    """Bool ``[batch]``: the rows of step ``step`` whose class becomes the null class."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step + 1)
    return torch.rand(batch, generator=gen) < rate


def token_loss(
    var: VAR, vqvae: VQVAE, tokens_BL: torch.Tensor, labels_B: torch.Tensor, drop_B: torch.Tensor
) -> torch.Tensor:
    """Mean teacher-forced cross-entropy over every token of every scale."""
    with torch.no_grad():
        x_BLCv = vqvae.quantize.idxBl_to_var_input(split_scales(tokens_BL, var.patch_nums))
    logits_BLV = var(labels_B, x_BLCv, drop_B)
    return F.cross_entropy(logits_BLV.flatten(0, 1), tokens_BL.long().flatten())


@torch.no_grad()
def evaluate_loss(var: VAR, vqvae: VQVAE, tokens_NL: torch.Tensor, labels_N: torch.Tensor, batch=64) -> float:
    """Mean cross-entropy per token without label dropout (eval mode)."""
    was_training = var.training
    var.eval()
    total = 0.0
    for i in range(0, len(tokens_NL), batch):
        t_BL, l_B = tokens_NL[i : i + batch], labels_N[i : i + batch]
        total += token_loss(var, vqvae, t_BL, l_B, torch.zeros(len(l_B), dtype=torch.bool)).item() * len(l_B)
    var.train(was_training)
    return total / max(1, len(tokens_NL))


def make_optimizer(var: VAR, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on vectors (biases, gains) and position / level embeddings."""
    decay, other = [], []
    for name, p in var.named_parameters():
        (other if p.ndim < 2 or any(k in name for k in _NO_DECAY) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def train(
    var_cfg: VARConfig,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    vqvae: VQVAE,
    train_data: tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_steps: int | None = None,
    progress: bool = True,
) -> tuple[VAR, dict[str, Any]]:
    """Train on ``train_data`` = (int16 tokens ``[N, L]``, labels ``[N]``) or resume
    ``out_dir/ckpt.pt``, up to ``cfg.steps``; ``val_data`` gives the held-out loss.

    ``max_steps`` stops after that many steps in this call (checkpointed, as an interruption
    would be). Returns the model (eval mode) and a record: ``step``, ``finished``,
    ``train_seconds`` (summed over resumes), ``train_loss`` / ``val_loss`` (last evaluation,
    no label dropout) and ``last_log``.
    """
    from tqdm.auto import tqdm

    check_compatible(var_cfg, vqvae.cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": config_to_dict(var_cfg), "train": json.loads(json.dumps(dataclasses.asdict(cfg)))}
    tokens_NL, labels_N = train_data
    torch.manual_seed(cfg.seed)
    model = VAR(var_cfg).train()
    opt = make_optimizer(model, cfg)
    step, seconds, record = 0, 0.0, {"train_loss": None, "val_loss": None, "last_log": {}}
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if json.loads(ckpt["config"]) != config:
            raise ValueError(f"{ckpt_path} was written by another config; use another --out-dir or delete it")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, seconds, record = int(ckpt["step"]), float(ckpt["train_seconds"]), json.loads(ckpt["record"])
        log.info("resumed %s at step %d of %d", ckpt_path, step, cfg.steps)
    rows = torch.randperm(len(tokens_NL), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.eval_size]

    def evaluate() -> dict[str, float]:
        res = {"step": step, "train_loss": evaluate_loss(model, vqvae, tokens_NL[rows], labels_N[rows])}
        if val_data is not None:
            n = cfg.eval_size
            res["val_loss"] = evaluate_loss(model, vqvae, val_data[0][:n], val_data[1][:n])
        record.update({k: v for k, v in res.items() if k != "step"})
        return res

    def save() -> None:
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "train_seconds": seconds, "record": json.dumps(record), "config": json.dumps(config)},
                    ckpt_path)  # fmt: skip

    stop = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"fashion var d{var_cfg.depth}", disable=not progress,
               mininterval=1 if sys.stderr.isatty() else 60, dynamic_ncols=True)  # fmt: skip
    t_start = t_saved = t_log = time.perf_counter()
    window: list[float] = []
    with (out / "loss.log").open("a") as log_file:
        while step < stop:
            idx_B = batch_indices(step, len(tokens_NL), cfg)
            drop_B = label_drops(step, len(idx_B), var_cfg.cond_drop_rate, cfg.seed)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = token_loss(model, vqvae, tokens_NL[idx_B], labels_N[idx_B], drop_B)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            opt.step()
            step += 1
            window.append(loss.item())
            if not math.isfinite(window[-1]):
                raise FloatingPointError(f"loss is {window[-1]} at step {step}; lower the lr")
            bar.update(1)
            if step % cfg.log_every == 0 or step == stop:
                now = time.perf_counter()
                record["last_log"] = {"step": step, "loss": sum(window) / len(window), "lr": lr_at(step - 1, cfg),
                                      "grad_norm": float(grad_norm), "s_per_step": (now - t_log) / len(window)}  # fmt: skip
                t_log, window = now, []
                log_file.write(json.dumps(record["last_log"]) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{record['last_log']['loss']:.4f}")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                res = evaluate()
                log_file.write(json.dumps(res) + "\n")
                log_file.flush()
                log.info("step %d: %s", step, {k: round(v, 4) for k, v in res.items() if k != "step"})
            now = time.perf_counter()
            if step == stop or now - t_saved > 60 * cfg.checkpoint_minutes:
                seconds, t_start = seconds + now - t_start, now
                save()
                t_saved = time.perf_counter()
    bar.close()
    return model.eval(), {**record, "step": step, "finished": step == cfg.steps, "train_seconds": seconds}


def export(model: VAR, path: str | os.PathLike, record: dict[str, Any], name: str) -> None:
    """fp16 safetensors in the official key layout (config in the metadata; the integer level ids
    ``lvl_1L`` stay integers) + ``record`` as json."""
    meta = {"format": "pt", "name": name, "var_config": json.dumps(config_to_dict(model.cfg))}
    export_fp16(model.state_dict(), path, meta, record)


def read_config(path: str | os.PathLike) -> VARConfig:
    """The ``VARConfig`` in a weights file's safetensors metadata (key ``var_config``)."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "var_config" not in meta:
        raise ValueError(f"{path}: no var_config in its metadata (not written by train_var?)")
    values = json.loads(meta["var_config"])
    return VARConfig(**{**values, "patch_nums": tuple(values["patch_nums"])})


def load_fashion_var(
    which: str | os.PathLike = "large", dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> VAR:
    """The shipped ``"large"`` (drafter) or ``"small"`` (refiner) Fashion VAR, or a weights file,
    in eval mode. FileNotFoundError naming the training command when the file is absent."""
    from mmaccel.image_ar.var.loader import load_var

    path = WEIGHTS[which] if which in WEIGHTS else Path(which)
    if not path.exists():
        raise FileNotFoundError(f"Fashion VAR weights not found at {path}; train them from the repository root "
                                f"with `{TRAIN_COMMAND} --preset {which if which in WEIGHTS else 'large'}`")  # fmt: skip
    return load_var(path, read_config(path), dtype=dtype, device=device)


@torch.no_grad()
def class_consistency(
    var: VAR,
    vqvae: VQVAE,
    per_class: int = 20,
    cfg: float = 2.0,
    seed: int = 0,
    refiner: VAR | None = None,
    draft_scales: int | None = None,
    batch: int = 100,
    net: Any = None,
) -> dict[str, float]:
    """Sample ``per_class`` images of every class (``decode_scales``: ``ar``, or CoDe with a
    ``refiner``), decode them with the VQ-VAE and classify them with the Fashion classifier
    (``net``, default the shipped one): ``accuracy`` = fraction classified as the class asked
    for, per class too (``class_accuracy``), with the settings used. Batch ``i`` uses seed
    ``seed + i``."""
    from mmaccel.image_ar.fashion.classifier import class_accuracy
    from mmaccel.image_ar.var.fashion_vq import to_uint8
    from mmaccel.next_scale import decode_scales

    labels_N = torch.arange(var.num_classes).repeat_interleave(per_class)
    images = []
    for i, start in enumerate(range(0, len(labels_N), batch)):
        out = decode_scales(var, vqvae, labels_N[start : start + batch], cfg=cfg, seed=seed + i,
                            refiner=refiner, draft_scales=draft_scales, compile="eager")  # fmt: skip
        images.append(to_uint8(vqvae.fhat_to_img(out.f_hat)))
    result = class_accuracy(torch.cat(images), labels_N.tolist(), net)
    return {**result, "cfg": cfg, "seed": seed, "per_class": per_class, "draft_scales": draft_scales or 0}


def main(argv: list[str] | None = None) -> None:
    from mmaccel.image_ar.var.fashion_vq import WEIGHTS as VQ_WEIGHTS
    from mmaccel.image_ar.var.fashion_vq import load_fashion_vqvae

    parser = argparse.ArgumentParser(description="Train a class-conditional VAR on Fashion-MNIST tokens.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="large",
                        help="the recipe's run fashion_var_<preset> (unless --stage/--config)")  # fmt: skip
    add_config_args(parser)
    parser.set_defaults(recipe=RECIPE)
    parser.add_argument("--out-dir", type=Path, help="checkpoint + loss.log (default outputs/<name>)")
    parser.add_argument("--weights", type=Path, help="fp16 weights + .json (default: the shipped file)")
    for flag in ("--steps", "--batch-size", "--seed", "--depth", "--embed-dim", "--num-heads"):
        parser.add_argument(flag, type=int, help="override the config's value")
    parser.add_argument("--lr", type=float, help="override the config's value")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (run again to resume)")
    parser.add_argument("--eval-cfg", default="1.5,2,3", help="guidance scales to judge ('' = none)")
    parser.add_argument("--eval-per-class", type=int, default=20)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the token caches live")
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST files (default: the Debian package's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.config is None and args.stage is None:
        args.stage = f"fashion_var_{args.preset}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    config, source = config_from_args(parser, args, CONFIG_KEYS)
    model_over = {"depth": args.depth, "embed_dim": args.embed_dim, "num_heads": args.num_heads}
    train_over = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    model_sec = {**config.get("model", {}), **{k: v for k, v in model_over.items() if v is not None}}
    cfg = train_config({**config.get("train", {}), **{k: v for k, v in train_over.items() if v is not None}})
    preset = model_sec.get("preset", "custom")
    name = f"fashion_var_{preset}"
    resized = any(v is not None for v in model_over.values())  # never over the shipped file by default
    weights = (
        args.weights or (None if resized else WEIGHTS.get(preset)) or Path(f"outputs/{name}.safetensors")
    )
    out_dir = args.out_dir or Path(f"outputs/{name}")
    vq_path = Path(cfg.vqvae) if cfg.vqvae else VQ_WEIGHTS
    vqvae = load_fashion_vqvae(vq_path)
    var_cfg = var_config(model_sec, vqvae.cfg)
    train_data = fashion_tokens("train", vq_path, args.cache_dir, args.data_dir)
    val_data = fashion_tokens("test", vq_path, args.cache_dir, args.data_dir)
    model, record = train(var_cfg, cfg, out_dir, vqvae, train_data, val_data, args.max_steps)
    if not record["finished"]:
        print(f"stopped at step {record['step']} of {cfg.steps}; run again with the same arguments to resume")
        return
    env = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY",) if k in os.environ]
    command = shlex.join([*env, *TRAIN_COMMAND.split(), *(sys.argv[1:] if argv is None else argv)])
    full = {"name": name, "command": command, "config_from": source, "vqvae": str(vq_path),
            "config": {"model": config_to_dict(var_cfg), "train": json.loads(json.dumps(dataclasses.asdict(cfg)))},
            "steps": record["step"], "train_seconds": round(record["train_seconds"], 1), "threads": args.threads,
            "final_train_loss": record["train_loss"], "final_val_loss": record["val_loss"],
            "eval_size": cfg.eval_size, "last_log": record["last_log"], "cost": cost(var_cfg),
            "data": {"train": len(train_data[1]), "val": len(val_data[1])},
            "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "torch": torch.__version__}}  # fmt: skip
    export(model, weights, full, name)
    shipped = load_fashion_var(weights)  # evaluate what ships: the fp16 weights
    guidance = [float(g) for g in args.eval_cfg.split(",") if g]
    full["class_consistency"] = [class_consistency(shipped, vqvae, args.eval_per_class, g) for g in guidance]
    if full["class_consistency"]:  # the guidance to sample with: the most class-consistent one
        full["best_cfg"] = max(full["class_consistency"], key=lambda r: r["accuracy"])["cfg"]
    full["file_bytes"] = weights.stat().st_size
    weights.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n")
    acc = ", ".join(f"G {r['cfg']}: {r['accuracy']:.3f}" for r in full["class_consistency"])
    print(f"wrote {weights} ({full['file_bytes'] / 1e6:.2f} MB); {record['step']} steps in "
          f"{record['train_seconds'] / 60:.1f} min; loss train {record['train_loss']:.4f} / val "
          f"{record['val_loss']:.4f}; class consistency {acc}")  # fmt: skip


if __name__ == "__main__":
    main()
