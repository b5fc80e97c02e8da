"""Tokenize Shapes-T2I train images with the tiny VQ: the GPT's training set.

Owns: encoding items ``0 .. n-1`` of ``ShapesT2I(seed, split)`` to row-major int16 code grids
``[n, 256]`` and saving ``{"tokens", "captions", "seed", "split", "vq", "vq_config"}`` with
``torch.save`` (load with ``torch.load(path, weights_only=True)``).

Must never: train or modify the VQ, or draw data from anything but the item index and seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from mmaccel.image_ar.checkpoint import save_atomic
from mmaccel.image_ar.llamagen.vq import VQModel
from mmaccel.image_ar.train_vq import batch, load_trained_vq

log = logging.getLogger(__name__)


@torch.no_grad()
def tokenize(
    model: VQModel,
    n: int,
    seed: int = 0,
    split: str = "train",
    batch_size: int = 256,
    progress: bool = True,
    start: int = 0,
) -> tuple[torch.Tensor, list[str]]:
    """Code grids ``[n, h*w]`` (int16) and captions of items ``start .. start + n - 1`` of the split."""
    if n < 1 or start < 0:
        raise ValueError(f"need n >= 1 and start >= 0, got n={n}, start={start}")
    from tqdm.auto import tqdm

    if model.cfg.codebook_size > 2**15:
        raise ValueError(f"codebook of {model.cfg.codebook_size} codes does not fit int16")
    tokens, captions = [], []
    with tqdm(total=n, desc="tokenize", unit="img", disable=not progress, mininterval=10) as bar:
        for first in range(start, start + n, batch_size):
            img_BCHW, caps = batch(first, min(batch_size, start + n - first), seed, split)
            tokens.append(model.encode(img_BCHW).to(torch.int16))
            captions += caps
            bar.update(len(caps))
    return torch.cat(tokens), captions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Encode Shapes-T2I images to VQ token grids.")
    parser.add_argument("--vq", type=Path, default=Path("image_ar/weights/vq_tiny.safetensors"))
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--out", type=Path, default=Path("outputs/shapes_tokens_train.pt"))
    parser.add_argument("--start", type=int, default=0, help="first item index (items start .. start+n-1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=("train", "test"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    model = load_trained_vq(args.vq)
    t0 = time.perf_counter()
    try:
        tokens, captions = tokenize(model, args.n, args.seed, args.split, args.batch_size, start=args.start)
    except ValueError as err:  # bad --n / --start / --vq: a usage error, not a traceback
        parser.error(f"--n {args.n} --start {args.start} --vq {args.vq}: {err}")
    out: dict[str, Any] = {
        "tokens": tokens,
        "captions": captions,
        "seed": args.seed,
        "start": args.start,
        "split": args.split,
        "vq": str(args.vq),
        "vq_config": json.dumps(dataclasses.asdict(model.cfg)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(out, args.out)
    used = torch.unique(tokens.long()).numel() / model.cfg.codebook_size
    print(
        f"wrote {args.out}: {tuple(tokens.shape)} tokens in {time.perf_counter() - t0:.0f} s, "
        f"codebook usage {used:.3f}"
    )


if __name__ == "__main__":
    main()
