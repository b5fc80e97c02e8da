"""Fashion-MNIST (Zalando Research, MIT) read from the Debian package ``dataset-fashion-mnist``.

Owns: finding the package's files (``/usr/share/datasets/fashion-mnist``, or the folder named by
``$MMACCEL_FASHION_MNIST_DIR``), a small parser of the IDX format they are stored in (gzipped or
not), padding the 28x28 images to 32x32 (2 px of background, value 0, on each side; the image
models tokenize 32x32), conversions to float tensors / PIL images, and the ten class names with
``class_index`` (the names prompts use).

Must never: download anything (the data come from the package manager: ``apt-get install
dataset-fashion-mnist``; ``make test`` and ``.ci/run`` install it), or print.

IDX (the format of MNIST and Fashion-MNIST): two zero bytes, a type code byte (0x08 uint8,
0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then
one big-endian uint32 per dimension and the values, big-endian, C order.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package puts the files
ENV_DIR = "MMACCEL_FASHION_MNIST_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
RAW_SIZE, PAD = 28, 2
IMAGE_SIZE = RAW_SIZE + 2 * PAD  # 32

# The dataset's own label names (its README), and the one name per class that prompts use.
OFFICIAL_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot")  # fmt: skip
PLURALS = ("t-shirts", "trousers", "pullovers", "dresses", "coats",
           "sandals", "shirts", "sneakers", "bags", "ankle boots")  # fmt: skip
_LOOKUP = {
    **{name: i for i, name in enumerate(CLASS_NAMES)},
    **{name.lower(): i for i, name in enumerate(OFFICIAL_NAMES)},
    **{name: i for i, name in enumerate(PLURALS)},
    "top": 0, "tops": 0, "tshirt": 0, "t shirt": 0,
}  # fmt: skip

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def class_index(name: str) -> int:
    """The label (0..9) of a class name: a ``CLASS_NAMES`` entry, the official name
    (``"T-shirt/top"``), a plural, or ``top`` / ``tshirt``; case, surrounding spaces and a leading
    ``a`` / ``an`` are ignored. ValueError listing the ten names for anything else."""
    key = re.sub(r"[\s_]+", " ", str(name).strip().lower())
    key = re.sub(r"^an? (?=\S)", "", key)
    if key not in _LOOKUP:
        raise ValueError(f"unknown Fashion-MNIST class {name!r}; the classes are: {', '.join(CLASS_NAMES)}")
    return _LOOKUP[key]


def class_labels(prompts: list[str]) -> torch.Tensor:
    """Class ids ``[B]`` of class-name prompts; ValueError naming the prompt and the ten classes."""
    ids = []
    for i, prompt in enumerate(prompts):
        try:
            ids.append(class_index(prompt))
        except ValueError as err:
            raise ValueError(f"prompt {i}: {err}") from None
    return torch.tensor(ids, dtype=torch.long)


def class_name(index: int) -> str:
    """The prompt name of label ``index`` (``CLASS_NAMES[index]``); IndexError outside 0..9."""
    if not 0 <= int(index) < len(CLASS_NAMES):
        raise IndexError(f"Fashion-MNIST labels are 0..{len(CLASS_NAMES) - 1}, got {index}")
    return CLASS_NAMES[int(index)]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in IDX file ``path`` (gzipped or not: told apart by its first bytes),
    in native byte order. ValueError when the header or the length does not match the format."""
    raw = Path(path).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (header {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header cut short ({len(raw)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX shape {shape} needs {expected} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the four Fashion-MNIST files: ``root``, else ``$MMACCEL_FASHION_MNIST_DIR``,
    else the Debian package's. FileNotFoundError saying how to install them when any is missing."""
    folder = Path(root if root is not None else os.environ.get(ENV_DIR) or DEFAULT_DIR)
    missing = [stem for pair in FILES.values() for stem in pair if _find(folder, stem) is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(f + '[.gz]' for f in missing)}). "
            f"Install the Debian package: `sudo apt-get install {PACKAGE}` (`make test` and "
            f"`.ci/run` install it when apt is usable), or point ${ENV_DIR} at a folder with the files."
        )
    return folder


def pad(images_NHW: np.ndarray, width: int = PAD) -> np.ndarray:
    """``[N, H, W]`` (or ``[H, W]``) -> ``[N, H + 2 width, W + 2 width]``: background (0) added on
    every side, so 28x28 becomes 32x32 with the garment centred as in the original."""
    spec = [(0, 0)] * (images_NHW.ndim - 2) + [(width, width), (width, width)]
    return np.pad(images_NHW, spec, mode="constant", constant_values=0)


@dataclass(frozen=True)
class FashionSplit:
    """One split: ``images`` uint8 ``[N, 32, 32]`` (padded, 0 = background), ``labels`` int64 ``[N]``.
    The arrays are read-only (they are cached and shared); copy before changing them."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@functools.lru_cache(maxsize=4)
def _load(split: str, folder: Path) -> FashionSplit:
    images_stem, labels_stem = FILES[split]
    images, labels = read_idx(_find(folder, images_stem)), read_idx(_find(folder, labels_stem))
    if images.ndim != 3 or images.shape[1:] != (RAW_SIZE, RAW_SIZE) or images.dtype != np.uint8:
        raise ValueError(f"{folder}: {split} images are {images.dtype} {images.shape}, not uint8 [N, 28, 28]")
    if labels.shape != images.shape[:1] or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"{folder}: {split} labels {labels.shape} do not fit images {images.shape}")
    padded, labels = pad(images), labels.astype(np.int64)
    padded.flags.writeable = labels.flags.writeable = False
    return FashionSplit(padded, labels)


def load_split(split: str, root: str | os.PathLike | None = None) -> FashionSplit:
    """The ``train`` (60,000) or ``test`` (10,000) split, padded to 32x32 (see ``data_dir`` for
    where it is read from; parsed once per process)."""
    if split not in FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; the splits are: {', '.join(FILES)}")
    return _load(split, data_dir(root).resolve())


def to_float(images_NHW: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W]`` -> float32 ``[N, 1, H, W]`` in [-1, 1] (what the image models train on)."""
    x = torch.as_tensor(np.asarray(images_NHW))
    return x.unsqueeze(1).float().div(127.5).sub(1.0)


def to_pil(images_NHW: np.ndarray) -> list:
    """uint8 ``[N, H, W]`` -> grayscale (``"L"``) PIL images, e.g. the real images of an FD."""
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(im, dtype=np.uint8)) for im in np.asarray(images_NHW)]
