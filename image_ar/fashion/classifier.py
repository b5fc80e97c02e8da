"""A small CNN classifier of Fashion-MNIST: class-consistency judge and FD feature network.

Owns: ``FashionNet`` (conv stages -> penultimate ``features``-d vector -> 10 logits), its
config (``ClassifierConfig``, stored in the weights' metadata so a file rebuilds its own
network), the loader of the shipped weights (``image_ar/weights/fashion_classifier.safetensors``,
trained by ``mmaccel.image_ar.fashion.train_classifier``), and the two uses of it:

- class consistency: ``class_accuracy(images, classes)``, the fraction of generated images the
  classifier puts in the class they were asked for;
- "FD-FashionNet": ``FashionNet.forward`` maps float images ``[N, C, H, W]`` in [0, 1] to the
  penultimate features, the contract of ``mmaccel.eval.benchmarks.FeatureNet`` and of the
  torchmetrics FID that ``mmaccel.eval.fid`` builds (``num_features`` tells it the width).

Inputs of any channel count and size are accepted: channels are averaged (grayscale images
arrive from PIL as RGB with equal channels) and other sizes are resized to 32x32.

Must never: download anything, or change the feature definition without retraining and
re-shipping the weights.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmaccel.image_ar.fashion.data import CLASS_NAMES, IMAGE_SIZE, class_index

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "fashion_classifier.safetensors"
NAME = "FashionNet"  # labels FD figures: "FD-FashionNet"


@dataclass(frozen=True)
class ClassifierConfig:
    """Stage ``i`` has ``blocks[i]`` conv3x3-BN-ReLU layers of ``widths[i]`` channels, then a 2x2
    max-pool (32 -> 16 -> 8 -> 4 for three stages); then ``dropout``, a linear layer to
    ``features`` (ReLU: the FD features), ``dropout`` and the 10-way head."""

    widths: tuple[int, ...] = (32, 64, 128)
    blocks: tuple[int, ...] = (1, 2, 1)
    features: int = 128
    dropout: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if len(self.widths) != len(self.blocks) or not self.widths or min(self.blocks) < 1:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks}: one count >= 1 per stage")
        if IMAGE_SIZE % 2 ** len(self.widths):
            raise ValueError(f"{len(self.widths)} pooling stages do not divide {IMAGE_SIZE}x{IMAGE_SIZE}")

    @classmethod
    def from_dict(cls, values: dict) -> ClassifierConfig:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown classifier config key(s) {unknown}")
        return cls(**values)


class FashionNet(nn.Module):
    """``forward(images)`` -> ``[N, features]`` (FD features); ``logits(images)`` -> ``[N, 10]``.

    ``images``: ``[N, C, H, W]`` floats in [0, 1] or uint8 in 0..255 (any C, any H, W)."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 1
        for width, blocks in zip(config.widths, config.blocks, strict=True):
            for _ in range(blocks):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.convs = nn.Sequential(*layers)
        side = IMAGE_SIZE // 2 ** len(config.widths)
        self.proj = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout),
                                  nn.Linear(c_in * side * side, config.features), nn.ReLU())  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.features, len(CLASS_NAMES)))

    @property
    def num_features(self) -> int:  # read by torchmetrics' FID instead of running a dummy image
        return self.config.features

    @staticmethod
    def prepare(images_NCHW: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` in [0, 1] (or uint8) -> ``[N, 1, 32, 32]`` in [-1, 1], the net's input."""
        x = images_NCHW.float() / 255.0 if images_NCHW.dtype == torch.uint8 else images_NCHW.float()
        x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True,
                              align_corners=False)  # fmt: skip
        return x * 2 - 1

    def features_of(self, x_N1HW: torch.Tensor) -> torch.Tensor:
        """Features of already prepared input (``prepare``'s output; training feeds this)."""
        return self.proj(self.convs(x_N1HW))

    def forward(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        return self.features_of(self.prepare(images_NCHW))

    def logits(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self(images_NCHW))


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def weights_metadata(config: ClassifierConfig, **extra: str) -> dict[str, str]:
    """The safetensors metadata a weights file carries: its config as json, plus ``extra``."""
    return {"config": json.dumps(dataclasses.asdict(config)), "name": NAME, **extra}


def load_classifier(path: str | Path = WEIGHTS) -> FashionNet:
    """The shipped (or a given) classifier, eval mode, float32. FileNotFoundError naming the
    training command when the file is absent."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST classifier weights not found at {path}; train them with "
            "`python -m mmaccel.image_ar.fashion.train_classifier`"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path}: no classifier config in its metadata (not written by train_classifier?)")
    net = FashionNet(ClassifierConfig.from_dict(json.loads(meta["config"])))
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return net.eval()


def _as_tensor(images) -> torch.Tensor:
    """PIL images, uint8 ``[N, H, W]`` arrays or ``[N, C, H, W]`` tensors -> one tensor ``[N, C, H, W]``."""
    if isinstance(images, torch.Tensor):
        return images.unsqueeze(1) if images.ndim == 3 else images
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(np.array(images))  # a copy: the dataset's cached arrays are read-only
        return x.unsqueeze(1) if x.ndim == 3 else x
    from mmaccel.eval.fid import to_unit_tensor

    return to_unit_tensor(list(images))


@torch.no_grad()
def predict(net: FashionNet, images, batch: int = 500) -> torch.Tensor:
    """Predicted labels ``[N]`` of images (PIL images, uint8 ``[N, H, W]`` arrays, or tensors
    ``[N, C, H, W]`` in [0, 1] / uint8)."""
    x = _as_tensor(images)
    was_training = net.training
    net.eval()
    out = [net.logits(x[i : i + batch]).argmax(-1) for i in range(0, len(x), batch)]
    net.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def class_accuracy(images, classes: Sequence[int | str], net: FashionNet | None = None) -> dict[str, float]:
    """Class consistency: ``accuracy`` (fraction of images classified as the class asked for,
    names as ``class_index`` reads them, or labels), ``n``, and ``accuracy_<class>`` per class
    present. ``net`` defaults to the shipped classifier."""
    net = load_classifier() if net is None else net
    wanted_N = torch.tensor([c if isinstance(c, (int, np.integer)) else class_index(c) for c in classes])
    got_N = predict(net, images)
    if got_N.shape != wanted_N.shape:
        raise ValueError(f"{len(got_N)} images but {len(wanted_N)} classes")
    right_N = (got_N == wanted_N).float()
    result = {"accuracy": float(right_N.mean()) if len(right_N) else float("nan"), "n": float(len(right_N))}
    for label in sorted(set(wanted_N.tolist())):
        result[f"accuracy_{CLASS_NAMES[label]}"] = float(right_N[wanted_N == label].mean())
    return result
