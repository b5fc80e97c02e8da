"""Write the shipped fp16 weights of the default model from a training checkpoint.

Owns: turning ``<out-dir>/ckpt.pt`` of ``mmaccel.image_ar.train_t2i`` (finished or not) into
``image_ar/weights/shapes_t2i.safetensors`` + ``.json``, recording the step reached, the
losses, the command that trained it and the one that exported it, so an interrupted run
still ships honest, labelled weights. ``train_t2i`` resumes from the same checkpoint.

Usage: ``python -m mmaccel.image_ar.export_t2i --recipe image_ar/configs/shapes_t2i_recipe.json --stage N
--out-dir outputs/t2i_stageN --default-guidance G --default-temperature T`` (or ``--config FILE``
for a run trained from one full config; the stage of the shipped weights, its G and T:
image_ar/configs/README.md)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from mmaccel.image_ar.recipe import add_config_args, config_from_args
from mmaccel.image_ar.t2i_model import ShapesT2IConfig, ShapesT2IModel
from mmaccel.image_ar.train_t2i import CKPT_NAME, CONFIG_KEYS, TrainConfig, config_from_dict


def export(
    out_dir: Path,
    configs: tuple[ShapesT2IConfig, TrainConfig],
    config_args: str,
    target: Path,
    command: str,
    default_guidance: float = 1.0,
    default_temperature: float = 1.0,
) -> Path:
    """Save the checkpoint's model as fp16 weights at ``target``; return the weights path.

    ``configs`` are the run's model and train configs; ``config_args`` the ``train_t2i``
    arguments that name them (``--recipe R --stage N`` or ``--config FILE``), for the recorded
    training command.
    """
    ckpt_path = out_dir / CKPT_NAME
    if not ckpt_path.exists():
        raise FileNotFoundError(f"no training checkpoint at {ckpt_path}")
    model_cfg, train_cfg = configs
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = ShapesT2IModel(model_cfg)
    model.load_state_dict(ckpt["model"])
    meta = {
        "command": f"OMP_WAIT_POLICY=PASSIVE python -m mmaccel.image_ar.train_t2i {config_args} --out-dir {out_dir}",
        "export_command": command,
        "train": ckpt["configs"]["train"],
        "result": {**ckpt["summary"], "step": ckpt["step"], "elapsed_s": ckpt["elapsed"]},
        "finished": ckpt["step"] >= train_cfg.steps,
        "default_guidance": default_guidance,
        "default_temperature": default_temperature,
    }
    path, _ = model.eval().save(target, meta)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True, help="the training run's directory (ckpt.pt)")
    add_config_args(parser)  # the config that run was trained with
    parser.add_argument("--target", type=Path, default=Path("image_ar/weights/shapes_t2i.safetensors"))
    parser.add_argument("--default-guidance", type=float, default=1.0)
    parser.add_argument("--default-temperature", type=float, default=1.0)
    args = parser.parse_args(argv)
    command = "python -m mmaccel.image_ar.export_t2i " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.default_temperature < 0 or args.default_guidance < 0:
        parser.error("--default-guidance and --default-temperature must be >= 0")
    config, config_args = config_from_args(parser, args, CONFIG_KEYS)
    path = export(
        args.out_dir, config_from_dict(config), config_args, args.target, command,
        args.default_guidance, args.default_temperature,
    )  # fmt: skip
    meta = json.loads(path.with_suffix(".json").read_text())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) at step {meta['result']['step']}")


if __name__ == "__main__":
    main()
