"""Fashion-MNIST as VAR token pyramids: every image tokenized once by the Fashion VQ-VAE and cached.

Owns: ``tokenize_images`` (uint8 images -> the multi-scale index maps of ``VQVAE.img_to_idxBl``,
concatenated scale by scale into one int16 row of ``L`` tokens: 155 for the scales
1, 2, 3, 4, 5, 6, 8), ``split_scales`` (a row back to one index map per scale, as
``idxBl_to_var_input`` takes them), and ``fashion_tokens`` (a split's tokens and labels, read from
``outputs/fashion_var_tokens_<split>.pt`` or made and saved there atomically). A cache file
records the sha256 of the VQ-VAE weights that made it; a file made by other weights is remade.

The VAR trainer (``train_var``) reads the tokens of the training split; the test split gives
its held-out loss. Run once from the repository root (~a few minutes on 2 cores; the trainer
does the same on its first run)::

    python -m mmaccel.image_ar.var.fashion_tokens

Must never: train or change the VQ-VAE, or write a cache file in place (a killed run must leave
the old file or none).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmaccel.image_ar.checkpoint import save_atomic
from mmaccel.image_ar.var.vqvae import VQVAE

CACHE_DIR = Path("outputs")  # relative to the repository root, where the commands run
log = logging.getLogger(__name__)


def cache_path(split: str, cache_dir: str | os.PathLike = CACHE_DIR) -> Path:
    """Where the tokens of ``split`` are cached."""
    return Path(cache_dir) / f"fashion_var_tokens_{split}.pt"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes: the identity of the VQ-VAE weights a cache was made with."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@torch.no_grad()
def tokenize_images(
    vqvae: VQVAE,
    images_NHW: np.ndarray | torch.Tensor,
    batch: int = 500,
    progress: bool = True,
    desc: str = "",
) -> torch.Tensor:
    """uint8 ``[N, H, W]`` images -> int16 ``[N, L]``: the index maps of every scale (small to
    large, each row-major), concatenated."""
    from tqdm.auto import tqdm

    from mmaccel.image_ar.fashion.data import to_float

    if vqvae.cfg.vocab_size > torch.iinfo(torch.int16).max + 1:
        raise ValueError(f"vocab_size {vqvae.cfg.vocab_size} does not fit int16 tokens")
    p = next(vqvae.parameters())
    out = []
    for i in tqdm(range(0, len(images_NHW), batch), desc=desc, disable=not progress, unit="batch"):
        x_N1HW = to_float(np.array(images_NHW[i : i + batch])).to(device=p.device, dtype=p.dtype)
        out.append(torch.cat(vqvae.img_to_idxBl(x_N1HW), dim=1).to(torch.int16).cpu())
    L = sum(pn * pn for pn in vqvae.cfg.patch_nums)
    return torch.cat(out) if out else torch.zeros(0, L, dtype=torch.int16)


def split_scales(tokens_BL: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
    """``[B, L]`` tokens -> one int64 index map ``[B, pn * pn]`` per scale."""
    sizes = [pn * pn for pn in patch_nums]
    if tokens_BL.shape[1] != sum(sizes):
        raise ValueError(f"rows of {tokens_BL.shape[1]} tokens do not fit the scales {tuple(patch_nums)}")
    return list(tokens_BL.long().split(sizes, dim=1))


def fashion_tokens(
    split: str,
    vqvae_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = CACHE_DIR,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (int16 ``[N, L]``) and labels (int64 ``[N]``) of the ``train`` or ``test`` split.

    Read from the cache when it was made by the same VQ-VAE weights (``vqvae_path``; default the
    shipped ``fashion_vqvae.safetensors``) from as many images; otherwise tokenized (with a
    progress bar) and saved atomically. ``data_root``: the Fashion-MNIST folder (``load_split``).
    """
    from mmaccel.image_ar.fashion.data import load_split
    from mmaccel.image_ar.var.fashion_vq import WEIGHTS, load_fashion_vqvae

    vqvae_path = Path(vqvae_path or WEIGHTS)
    data = load_split(split, data_root)
    digest = file_digest(vqvae_path) if vqvae_path.exists() else None
    path = cache_path(split, cache_dir)
    if path.exists() and digest is not None:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("vqvae_sha256") == digest and len(cached["labels"]) == len(data):
            return cached["tokens"], cached["labels"]
        log.warning("%s was made by other VQ-VAE weights or data; tokenizing %s again", path, split)
    vqvae = load_fashion_vqvae(vqvae_path)  # FileNotFoundError naming the training command
    tokens_NL = tokenize_images(vqvae, data.images, progress=progress, desc=f"tokenize {split}")
    labels_N = torch.from_numpy(data.labels.copy())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"tokens": tokens_NL, "labels": labels_N, "patch_nums": list(vqvae.cfg.patch_nums),
                 "vocab_size": vqvae.cfg.vocab_size, "vqvae": str(vqvae_path), "vqvae_sha256": digest},
                path)  # fmt: skip
    log.info("tokenized %d %s images to %s", len(labels_N), split, path)
    return tokens_NL, labels_N


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Tokenize Fashion-MNIST with the Fashion VQ-VAE (cached).")
    parser.add_argument("--vqvae", type=Path, help="VQ-VAE weights (default: the shipped ones)")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST files (default: the Debian package's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    for split in ("train", "test"):
        tokens_NL, labels_N = fashion_tokens(split, args.vqvae, args.cache_dir, args.data_dir)
        where = cache_path(split, args.cache_dir)
        print(f"{split}: tokens {tuple(tokens_NL.shape)}, {len(labels_N)} labels -> {where}")


if __name__ == "__main__":
    main()
