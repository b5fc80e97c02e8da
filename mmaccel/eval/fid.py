"""Frechet distance with a pluggable feature extractor (torchmetrics' FID).

Owns: building ``torchmetrics.image.fid.FrechetInceptionDistance`` around a feature network,
feeding it PIL images or tensors in batches, caching the reference (real-image) statistics to
a file, and labelling every figure with the extractor that produced it. Inception is used
only when its weights are already on this machine (torchmetrics would otherwise download
them, which cannot work offline).

Must never: download weights, or report a figure without naming its feature extractor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FIDResult:
    fid: float
    extractor: str
    num_real: int
    num_fake: int

    def __str__(self) -> str:
        return f"FD-{self.extractor} = {self.fid:.3f} ({self.num_fake} generated vs {self.num_real} real)"


def to_unit_tensor(images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
    """PIL images (or uint8 / [0, 1] float tensors) -> float ``[N, 3, H, W]`` in [0, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.float()
        return x / 255.0 if images.dtype == torch.uint8 else x
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def inception_available() -> bool:
    """True when torchmetrics' Inception weights are already in the local torch hub cache."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return any(hub.glob("pt_inception-2015-12-05*.pth")) if hub.exists() else False


def make_metric(extractor: nn.Module | None = None, name: str | None = None):
    """A torchmetrics FID metric over ``extractor`` (float images in [0, 1] -> ``[N, F]``).

    The metric never synchronises across processes: distributed evaluations gather the images
    on one process and compute the distance there.

    ``extractor=None``: Inception if its weights are present locally, else a ``ValueError``
    saying which extractor to pass instead.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if extractor is None:
        if not inception_available():
            raise ValueError(
                "Inception weights are not on this machine and cannot be downloaded; pass a feature "
                "extractor (e.g. a benchmark's feature network: mmaccel.eval.benchmarks.FeatureNet.load())"
            )
        return FrechetInceptionDistance(
            feature=2048, normalize=True, sync_on_compute=False
        ), name or "Inception"
    extractor = extractor.eval()
    metric = FrechetInceptionDistance(feature=extractor, normalize=True, input_img_size=(3, 64, 64),
                                      sync_on_compute=False)  # fmt: skip
    return metric, name or type(extractor).__name__


def _feed(metric, images, real: bool, batch: int) -> int:
    n = 0
    chunk: list = []
    for im in images:
        chunk.append(im)
        if len(chunk) == batch:
            metric.update(to_unit_tensor(chunk), real=real)
            n, chunk = n + len(chunk), []
    if chunk:
        metric.update(to_unit_tensor(chunk), real=real)
        n += len(chunk)
    return n


@torch.no_grad()
def frechet_distance(
    fake: Iterable[Image.Image],
    real: Iterable[Image.Image] | None = None,
    extractor: nn.Module | None = None,
    name: str | None = None,
    real_stats: Path | str | None = None,
    batch: int = 128,
) -> FIDResult:
    """FD between generated and real images.

    ``real_stats``: a file caching the real images' feature statistics; read when present
    (then ``real`` may be None), written after computing them otherwise.
    """
    metric, label = make_metric(extractor, name)
    stats_path = Path(real_stats) if real_stats is not None else None
    if stats_path is not None and stats_path.exists():
        saved = torch.load(stats_path, map_location="cpu", weights_only=True)
        if saved["extractor"] != label:
            raise ValueError(f"{stats_path} holds statistics for {saved['extractor']!r}, not {label!r}")
        metric.real_features_sum.copy_(saved["sum"])
        metric.real_features_cov_sum.copy_(saved["cov_sum"])
        metric.real_features_num_samples.copy_(saved["n"])
        num_real = int(saved["n"])
    else:
        if real is None:
            raise ValueError("give real images or an existing real_stats file")
        num_real = _feed(metric, real, True, batch)
        if stats_path is not None:
            stats_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "extractor": label,
                    "sum": metric.real_features_sum,
                    "cov_sum": metric.real_features_cov_sum,
                    "n": metric.real_features_num_samples,
                },
                stats_path,
            )
    num_fake = _feed(metric, fake, False, batch)
    if num_real < 2 or num_fake < 2:
        raise ValueError(f"FD needs at least 2 real and 2 generated images, got {num_real} and {num_fake}")
    return FIDResult(float(metric.compute()), label, num_real, num_fake)
