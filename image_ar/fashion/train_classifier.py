"""Train the Fashion-MNIST classifier (``FashionNet``) that judges class consistency and gives FD features.

Owns: ``TrainConfig``, the training loop (AdamW, one-cycle learning rate, label smoothing;
augmentation: horizontal flips and shifts of up to ``shift`` px, filled with background), its
resumable checkpoint (``<out-dir>/ckpt.pt``: written every ``checkpoint_minutes`` and at every
epoch end; a resumed run is the same run: the data order and augmentation of step ``s`` depend
only on ``(seed, s)``, the dropout RNG is saved), the test-set evaluation, and exporting the
fp16 weights (``image_ar/weights/fashion_classifier.safetensors``) with a json beside them
holding the test accuracy of the exported weights, the config and the command.

Configs come from ``image_ar/configs/fashion_classifier_recipe.json`` (one stage; read with
``mmaccel.image_ar.recipe``) or ``--config FILE``. Run from the repository root::

    python -m mmaccel.image_ar.fashion.train_classifier --out-dir outputs/fashion_classifier

Must never: look at the test split before training ends (no model selection on it), use
unseeded randomness for data, or print outside ``main``.
"""

from __future__ import annotations

import argparse
import dataclasses
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

import torch
import torch.nn.functional as F

from mmaccel.image_ar.checkpoint import export_fp16, save_atomic
from mmaccel.image_ar.fashion.classifier import (
    NAME,
    WEIGHTS,
    ClassifierConfig,
    FashionNet,
    load_classifier,
    num_parameters,
    weights_metadata,
)
from mmaccel.image_ar.fashion.data import CLASS_NAMES, PACKAGE, data_dir, load_split
from mmaccel.image_ar.recipe import add_config_args, config_from_args
from mmaccel.image_ar.schedule import batch_indices
from mmaccel.image_ar.train_config import split_config

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "fashion_classifier_recipe.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 128
    lr: float = 3e-3  # one-cycle peak
    pct_start: float = 0.25  # fraction of the steps spent warming up to the peak
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    flip: bool = True
    shift: int = 1  # max px of random translation (the 2 px padding is background, so nothing is cut at 2)
    seed: int = 0
    checkpoint_minutes: float = 2.0
    eval_batch: int = 1000


CONFIG_KEYS = {
    "model": [f.name for f in dataclasses.fields(ClassifierConfig)],
    "train": [f.name for f in dataclasses.fields(TrainConfig)],
}


def configs_from_dict(config: dict[str, dict[str, Any]]) -> tuple[ClassifierConfig, TrainConfig]:
    """``{"model": ..., "train": ...}`` (a recipe stage or a config file) -> the two configs."""
    return split_config(config, CONFIG_KEYS, ClassifierConfig.from_dict, TrainConfig)


def full_config(model_cfg: ClassifierConfig, cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """Every key of both configs, defaults included, as json data (tuples become lists, as they
    come back from a checkpoint or a config file)."""
    return json.loads(json.dumps({"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(cfg)}))


def augment(images_NHW: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of uint8 images; vacated pixels are background (0)."""
    n, h, w = images_NHW.shape
    x = images_NHW
    if cfg.flip:
        flip_N = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip_N[:, None, None], x.flip(-1), x)
    if cfg.shift:
        s = cfg.shift
        x_pad = F.pad(x, (s, s, s, s))
        dy_N, dx_N = torch.randint(0, 2 * s + 1, (2, n), generator=g)
        rows_NH = dy_N[:, None] + torch.arange(h)
        cols_NW = dx_N[:, None] + torch.arange(w)
        x = x_pad[torch.arange(n)[:, None, None], rows_NH[:, :, None], cols_NW[:, None, :]]
    return x


@torch.no_grad()
def evaluate(net: FashionNet, split: str = "test", root=None, batch: int = 1000) -> dict[str, Any]:
    """Accuracy, mean cross-entropy and per-class accuracy of ``net`` on a split."""
    data = load_split(split, root)
    images, labels_N = torch.from_numpy(data.images.copy()), torch.from_numpy(data.labels.copy())
    was_training = net.training
    net.eval()
    logits_NV = torch.cat([net.logits(images[i : i + batch, None]) for i in range(0, len(images), batch)])
    net.train(was_training)
    right_N = logits_NV.argmax(-1) == labels_N
    return {
        "accuracy": float(right_N.float().mean()),
        "loss": float(F.cross_entropy(logits_NV, labels_N)),
        "n": len(labels_N),
        "per_class": {
            name: float(right_N[labels_N == k].float().mean()) for k, name in enumerate(CLASS_NAMES)
        },
    }


def train(
    model_cfg: ClassifierConfig, cfg: TrainConfig, out_dir: Path, root=None, max_steps: int | None = None
) -> tuple[FashionNet, dict[str, Any]]:
    """Train (or resume ``out_dir/ckpt.pt``) on the train split. ``max_steps``: stop after that many
    steps in this call (checkpointed; a later call resumes). Returns the net and a record with
    ``step``, ``total_steps``, ``finished``, ``train_seconds`` (wall-clock) and ``train_cpu_seconds``
    (process CPU time, all threads), both summed over resumes, and the last
    epoch's running ``train_loss`` / ``train_accuracy``."""
    from tqdm.auto import tqdm

    data = load_split("train", root)
    images_NHW, labels_N = torch.from_numpy(data.images.copy()), torch.from_numpy(data.labels.copy())
    per_epoch = len(labels_N) // cfg.batch_size
    total = cfg.epochs * per_epoch
    config = full_config(model_cfg, cfg)

    torch.manual_seed(cfg.seed)
    # channels-last convolutions are ~25% faster on CPU here; the exported tensors are made contiguous
    net = FashionNet(model_cfg).to(memory_format=torch.channels_last).train()
    decay = [p for p in net.parameters() if p.ndim > 1]  # no weight decay on norms and biases
    other = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr)  # fmt: skip
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.pct_start
    )
    step, seconds, cpu_seconds, sums = 0, 0.0, 0.0, [0.0, 0, 0]  # sums: this epoch's loss, right, examples
    last_epoch = {"train_loss": float("nan"), "train_accuracy": float("nan")}
    ckpt_path = Path(out_dir) / "ckpt.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt["config"] != config:
            raise ValueError(f"{ckpt_path} was written by another config; use another --out-dir or delete it")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        torch.set_rng_state(ckpt["rng"])
        step, seconds, cpu_seconds = ckpt["step"], ckpt["train_seconds"], ckpt["train_cpu_seconds"]
        sums, last_epoch = ckpt["epoch_sums"], ckpt["last_epoch"]
        log.info("resumed %s at step %d of %d", ckpt_path, step, total)

    def save() -> None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                     "rng": torch.get_rng_state(), "step": step, "train_seconds": seconds, "train_cpu_seconds": cpu_seconds,
                     "epoch_sums": sums, "last_epoch": last_epoch, "config": config}, ckpt_path)  # fmt: skip

    stop = total if max_steps is None else min(total, step + max_steps)
    t_start = t_saved = time.perf_counter()
    cpu_start = time.process_time()  # unlike wall-clock, not counting time the process is paused (SIGSTOP)
    bar = tqdm(range(step, stop), initial=step, total=total, desc="fashion classifier", dynamic_ncols=True)
    for s in bar:
        idx_B = batch_indices(s, len(labels_N), cfg)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s)
        x_B1HW = FashionNet.prepare(augment(images_NHW[idx_B], cfg, g)[:, None])
        x_B1HW = x_B1HW.contiguous(memory_format=torch.channels_last)
        logits_BV = net.head(net.features_of(x_B1HW))
        loss = F.cross_entropy(logits_BV, labels_N[idx_B], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step = s + 1  # steps done; the checkpoint resumes at this one
        sums = [sums[0] + loss.item() * len(idx_B),
                sums[1] + int((logits_BV.argmax(-1) == labels_N[idx_B]).sum()), sums[2] + len(idx_B)]  # fmt: skip
        bar.set_postfix(
            epoch=s // per_epoch + 1, loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.4f}"
        )
        end_of_epoch = step % per_epoch == 0
        if end_of_epoch:
            last_epoch = {"train_loss": sums[0] / sums[2], "train_accuracy": sums[1] / sums[2]}
            log.info("epoch %d: train loss %.4f, running train accuracy %.4f", step // per_epoch,
                     last_epoch["train_loss"], last_epoch["train_accuracy"])  # fmt: skip
            sums = [0.0, 0, 0]
        now = time.perf_counter()
        if end_of_epoch or step == stop or now - t_saved > 60 * cfg.checkpoint_minutes:
            seconds, t_start = seconds + now - t_start, now
            cpu_seconds, cpu_start = cpu_seconds + time.process_time() - cpu_start, time.process_time()
            save()
            t_saved = time.perf_counter()
    bar.close()
    record = {"step": step, "total_steps": total, "finished": step == total, "train_seconds": seconds,
              "train_cpu_seconds": cpu_seconds, **last_epoch}  # fmt: skip
    return net.eval(), record


def export(net: FashionNet, path: Path, record: dict[str, Any]) -> None:
    """fp16 safetensors (config in the metadata) + ``record`` as json beside them."""
    # BatchNorm's num_batches_tracked (int64) is a training counter, unused in eval: not shipped
    tensors = {k: v for k, v in net.state_dict().items() if v.is_floating_point()}
    export_fp16(tensors, path, weights_metadata(net.config), record)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory (the repository root) when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the Fashion-MNIST classifier / FD feature network.")
    add_config_args(parser)
    parser.set_defaults(recipe=RECIPE)
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/fashion_classifier"))
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="exported fp16 weights (+ .json)")
    parser.add_argument(
        "--data-dir", type=Path, help=f"Fashion-MNIST files (default: the {PACKAGE} package's)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (resume later)")
    args = parser.parse_args(argv)
    if args.config is None and args.stage is None:
        args.stage = "1"  # the recipe has one stage
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    config, _ = config_from_args(parser, args, CONFIG_KEYS)
    model_cfg, cfg = configs_from_dict(config)
    folder = data_dir(args.data_dir)
    net, record = train(model_cfg, cfg, args.out_dir, folder, args.max_steps)
    if not record["finished"]:
        print(f"stopped at step {record['step']} of {record['total_steps']}; run again to resume")
        return
    export(net, args.weights, {})
    shipped = load_classifier(args.weights)  # evaluate what ships: the fp16 weights
    test = evaluate(shipped, "test", folder, cfg.eval_batch)
    command = [
        "python",
        "-m",
        "mmaccel.image_ar.fashion.train_classifier",
        *(sys.argv[1:] if argv is None else argv),
    ]
    full = {
        "name": NAME,
        "test_accuracy": round(test["accuracy"], 6),
        "test_loss": round(test["loss"], 6),
        "test_n": test["n"],
        "test_accuracy_per_class": {k: round(v, 4) for k, v in test["per_class"].items()},
        "last_epoch_train_loss": round(record["train_loss"], 6),
        "last_epoch_train_accuracy": round(record["train_accuracy"], 6),
        "num_parameters": num_parameters(shipped),
        "train_seconds": round(record["train_seconds"], 1),
        "train_cpu_seconds": round(record["train_cpu_seconds"], 1),
        "threads": args.threads,
        "command": shlex.join(command),
        "config_from": str(args.config) if args.config else f"{_shown(args.recipe)} stage {args.stage}",
        "config": full_config(model_cfg, cfg),
        "data": {
            "package": PACKAGE,
            "dir": str(folder),
            "train": len(load_split("train", folder)),
            "test": test["n"],
        },
        "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "torch": torch.__version__},
    }
    export(net, args.weights, full)
    full["file_bytes"] = args.weights.stat().st_size
    args.weights.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n")
    print(f"wrote {args.weights} ({full['file_bytes'] / 1e6:.2f} MB, {full['num_parameters']} parameters); "
          f"test accuracy {test['accuracy']:.4f} on {test['n']} images; trained in "
          f"{record['train_seconds']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
