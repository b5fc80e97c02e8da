"""Shapes-T2I: the procedural text-to-image data behind the embedded default model.

Owns: the scene grammar (8 named colours, 3 shapes, 2 sizes, a 3x3 grid of positions),
sampling scenes from a seed, rendering them to 64x64 RGB, captions and their inverse parser,
the caption vocabulary, the train/test split rule, and the torch datasets.

Must never: touch global RNG state (every draw goes through a seeded ``numpy`` Generator),
download anything, or print.

Layout rules (``mmaccel.image_ar.shapes_accuracy`` relies on them):

- An object ``s`` px across (small 14, large 26) is centred in its grid cell (cells are 64/3 px);
  the centre is then clamped into ``[s/2, 64 - s/2]`` so the image edge never cuts a shape. A
  large object in a border cell therefore moves up to 2.3 px inwards; its centre stays in its cell.
- Shapes: a filled disc of diameter ``s``; an axis-aligned ``s x s`` square; an isosceles
  triangle pointing up, base ``s`` and height ``s``. Objects are flat colour, background is
  textured: its named colour + a linear gradient (+-10, random direction) + per-pixel uniform
  noise (+-25 per channel), clipped to 0..255.
- Two objects differ in colour (from each other and from the background) and in cell, and
  must not overlap: their bounding boxes are at least ``MIN_GAP_PX`` apart along x or y.
  Two small objects always fit; a large object fits beside a small one in a neighbouring cell
  unless edge clamping pushes it towards that neighbour; two large objects fit only with a
  whole cell between them (so a large object at the center has no large companion); 216 of
  the 288 ordered (position, size) pairs fit.
  ``sample_scene`` draws both objects again until the pair fits, i.e. it is uniform over
  fitting pairs.
- Captions follow DESIGN.md's grammar, with one English fix: ``on an orange background``
  (the only vowel after an article); ``parse_caption`` accepts ``a`` or ``an`` anywhere.
- Split: a scene (up to object order) is a test scene iff a stable hash of its caption falls in
  the held-out ``TEST_FRACTION``; train and test therefore share no caption, and per-item
  seeds are derived from ``(seed, split, index)`` so no image is shared either.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

IMAGE_SIZE = 64
CELL_PX = IMAGE_SIZE / 3
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 14, "large": 26}
# row-major: index // 3 is the row (0 = top), index % 3 the column (0 = left)
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
CAPTION_WORDS: tuple[str, ...] = (
    "a", "an", "and", "at", "the", "on", "background",
    *SIZES, *COLOURS, *SHAPES,
    "top", "bottom", "left", "right", "center",
)  # fmt: skip
NOISE_AMPLITUDE = 25
GRADIENT_AMPLITUDE = 10
MIN_GAP_PX = 1.0
SPLITS: tuple[str, ...] = ("train", "test")
TEST_FRACTION = 0.1
# the salt only fixes which compositions are held out; this one keeps DESIGN.md's example prompts in train
_SPLIT_SALT = b"shapes-t2i/v1"


def _check(name: str, value: str, allowed: Collection[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} for {name}; expected one of: {', '.join(allowed)}")


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene: ``shape`` in SHAPES, ``colour`` in COLOURS, ``size`` in SIZES,
    ``position`` in POSITIONS."""

    shape: str
    colour: str
    size: str
    position: str

    def __post_init__(self) -> None:
        _check("an object", self.shape, SHAPES, "shape")
        _check("an object", self.colour, COLOURS, "colour")
        _check("an object", self.size, SIZES, "size")
        _check("an object", self.position, POSITIONS, "position")


@dataclass(frozen=True)
class Scene:
    """A background colour and one or two objects, in caption order.

    Invariants (checked here, so a parsed caption is valid too): 1 or 2 objects; no object has
    the background colour; two objects differ in colour and in position. Overlap is a layout
    rule, not an invariant: see ``objects_fit``.
    """

    background: str
    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        _check("the background", self.background, COLOURS, "colour")
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"a scene has 1 or 2 objects, got {len(self.objects)}")
        for obj in self.objects:
            if obj.colour == self.background:
                raise ValueError(f"object colour {obj.colour!r} equals the background colour")
        if len(self.objects) == 2:
            a, b = self.objects
            if a.colour == b.colour:
                raise ValueError(f"the two objects must differ in colour, both are {a.colour!r}")
            if a.position == b.position:
                raise ValueError(f"the two objects must differ in position, both are at {a.position!r}")


# ---------------------------------------------------------------- layout and rendering


def object_box(obj: ShapeObject) -> tuple[float, float, float]:
    """``(cx, cy, half)`` in pixels: the object's centre after edge clamping and half its size."""
    row, col = divmod(POSITIONS.index(obj.position), 3)
    half = SIZES[obj.size] / 2
    cx = min(max((col + 0.5) * CELL_PX, half), IMAGE_SIZE - half)
    cy = min(max((row + 0.5) * CELL_PX, half), IMAGE_SIZE - half)
    return cx, cy, half


def objects_fit(a: ShapeObject, b: ShapeObject) -> bool:
    """True when ``a`` and ``b`` are in different cells and their boxes are >= MIN_GAP_PX apart."""
    if a.position == b.position:
        return False
    ax, ay, ah = object_box(a)
    bx, by, bh = object_box(b)
    gap_x = abs(ax - bx) - ah - bh
    gap_y = abs(ay - by) - ah - bh
    return max(gap_x, gap_y) >= MIN_GAP_PX


def object_mask(obj: ShapeObject) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the pixels whose centres lie inside the object."""
    cx, cy, half = object_box(obj)
    coords = np.arange(IMAGE_SIZE) + 0.5
    px_HW, py_HW = np.meshgrid(coords, coords)
    if obj.shape == "circle":
        return (px_HW - cx) ** 2 + (py_HW - cy) ** 2 <= half**2
    if obj.shape == "square":
        return (np.abs(px_HW - cx) <= half) & (np.abs(py_HW - cy) <= half)
    # triangle: apex at (cx, cy - half), base from cx - half to cx + half at cy + half
    depth_HW = py_HW - (cy - half)
    return (depth_HW >= 0) & (depth_HW <= 2 * half) & (np.abs(px_HW - cx) <= depth_HW / 2)


def object_token_mask(scene: Scene, grid: int = 16) -> np.ndarray:
    """Boolean ``[grid * grid]`` (raster order): which patches of a ``grid x grid`` tokenization
    hold a pixel of one of the scene's objects."""
    mask_HW = np.logical_or.reduce([object_mask(obj) for obj in scene.objects])
    return _patches(mask_HW, grid).reshape(-1)


def _patches(mask_HW: np.ndarray, grid: int) -> np.ndarray:
    """``[grid, grid]``: which patches of a pixel mask hold a True pixel."""
    if IMAGE_SIZE % grid:
        raise ValueError(f"grid {grid} does not divide the image size {IMAGE_SIZE}")
    patch = IMAGE_SIZE // grid
    return mask_HW.reshape(grid, patch, grid, patch).any(axis=(1, 3))


def reveal_token_mask(scene: Scene, grid: int = 16, rows_above: int = 3) -> np.ndarray:
    """Boolean ``[grid * grid]`` (raster order): per object, the token rows from ``rows_above``
    above its top token row through that row, in its token columns widened by one each side
    -- where, decoding in raster order, the object first shows (a tokenizer with a receptive
    field wider than a patch shows it early)."""
    if rows_above < 0:
        raise ValueError(f"rows_above must be >= 0, got {rows_above}")
    out_HW = np.zeros((grid, grid), dtype=bool)
    for obj in scene.objects:
        obj_HW = _patches(object_mask(obj), grid)
        rows, cols = np.flatnonzero(obj_HW.any(1)), np.flatnonzero(obj_HW.any(0))
        out_HW[max(0, rows[0] - rows_above) : rows[0] + 1, max(0, cols[0] - 1) : cols[-1] + 2] = True
    return out_HW.reshape(-1)


def _as_rng(rng_or_seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def render_array(scene: Scene, seed: int | np.random.Generator = 0) -> np.ndarray:
    """The scene as a uint8 ``[64, 64, 3]`` array; ``seed`` (or a Generator) fixes the texture."""
    rng = _as_rng(seed)
    angle = rng.uniform(0.0, 2 * math.pi)
    coords = np.arange(IMAGE_SIZE) - (IMAGE_SIZE - 1) / 2
    x_HW, y_HW = np.meshgrid(coords, coords)
    ramp_HW = x_HW * math.cos(angle) + y_HW * math.sin(angle)
    ramp_HW = ramp_HW / np.abs(ramp_HW).max() * GRADIENT_AMPLITUDE
    noise_HWC = rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    base_C = np.asarray(COLOURS[scene.background], dtype=np.float64)
    image_HWC = np.clip(base_C + ramp_HW[..., None] + noise_HWC, 0, 255).round().astype(np.uint8)
    for obj in scene.objects:  # caption order; objects never overlap, so order does not matter
        image_HWC[object_mask(obj)] = COLOURS[obj.colour]
    return image_HWC


def render(scene: Scene, seed: int | np.random.Generator = 0) -> Image.Image:
    """The scene as a 64x64 RGB PIL image; ``seed`` (or a Generator) fixes the texture."""
    return Image.fromarray(render_array(scene, seed))


def sample_scene(rng_or_seed: int | np.random.Generator) -> Scene:
    """A random scene: uniform background, 1 or 2 objects (even odds), uniform attributes.

    Two-object scenes are drawn again until the objects fit (see ``objects_fit``).
    """
    rng = _as_rng(rng_or_seed)
    colours = list(COLOURS)
    background = colours[int(rng.integers(len(colours)))]
    n_objects = 1 + int(rng.integers(2))
    while True:
        free = [c for c in colours if c != background]
        objects = []
        for _ in range(n_objects):
            colour = free.pop(int(rng.integers(len(free))))
            objects.append(
                ShapeObject(
                    shape=SHAPES[int(rng.integers(len(SHAPES)))],
                    colour=colour,
                    size=tuple(SIZES)[int(rng.integers(len(SIZES)))],
                    position=POSITIONS[int(rng.integers(len(POSITIONS)))],
                )
            )
        if n_objects == 1 or objects_fit(*objects):
            return Scene(background=background, objects=tuple(objects))


# ---------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(scene: Scene) -> str:
    """``a large red circle at the top left on a blue background`` (objects joined by ``and``)."""
    parts = [f"a {o.size} {o.colour} {o.shape} at the {o.position}" for o in scene.objects]
    return f"{' and '.join(parts)} on {_article(scene.background)} {scene.background} background"


_CAPTION_RE = re.compile(r"^(?P<objects>.+) on an? (?P<background>\S+) background$")
_OBJECT_RE = re.compile(r"^an? (?P<size>\S+) (?P<colour>\S+) (?P<shape>\S+) at the (?P<position>.+)$")
_FORM = "'a <size> <colour> <shape> at the <position>[ and a ...] on a <colour> background'"


def parse_caption(text: str) -> Scene:
    """The scene a caption describes: the inverse of ``caption``.

    Lenient only about case, repeated whitespace, a trailing period and ``a``/``an``. Raises
    ValueError naming the problem for anything else outside the grammar.
    """
    norm = " ".join(text.lower().split()).rstrip(".").strip()
    match = _CAPTION_RE.match(norm)
    if match is None:
        raise ValueError(f"caption {text!r} must end with 'on a <colour> background'; expected {_FORM}")
    phrases = match["objects"].split(" and ")
    if len(phrases) > 2:
        raise ValueError(f"caption {text!r} names {len(phrases)} objects; a scene has 1 or 2")
    objects = []
    for phrase in phrases:
        obj = _OBJECT_RE.match(phrase)
        if obj is None:
            raise ValueError(f"object phrase {phrase!r} in caption {text!r} does not match {_FORM}")
        try:
            objects.append(ShapeObject(obj["shape"], obj["colour"], obj["size"], obj["position"]))
        except ValueError as err:
            raise ValueError(f"{err} (in caption {text!r})") from None
    try:
        return Scene(background=match["background"], objects=tuple(objects))
    except ValueError as err:
        raise ValueError(f"{err} (in caption {text!r})") from None


# ---------------------------------------------------------------- split and datasets


def scene_split(scene: Scene) -> str:
    """``"test"`` for the held-out ``TEST_FRACTION`` of compositions, else ``"train"``.

    The hash is of the caption with objects in grid order, so object order does not matter.
    """
    ordered = sorted(scene.objects, key=lambda o: POSITIONS.index(o.position))
    key = caption(Scene(scene.background, tuple(ordered))).encode()
    bucket = int.from_bytes(hashlib.blake2b(key, digest_size=8, key=_SPLIT_SALT).digest(), "big")
    return "test" if bucket % 10_000 < TEST_FRACTION * 10_000 else "train"


def item_rng(index: int, seed: int = 0, split: str = "train") -> np.random.Generator:
    """The Generator of item ``index``: a function of ``(seed, split, index)`` only."""
    _check("a dataset", split, SPLITS, "split")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def sample_item(index: int, seed: int = 0, split: str = "train") -> tuple[Scene, np.ndarray]:
    """Item ``index`` of a split: its scene (drawn until it belongs to ``split``) and its
    uint8 ``[64, 64, 3]`` rendering."""
    rng = item_rng(index, seed, split)
    while True:
        scene = sample_scene(rng)
        if scene_split(scene) == split:
            return scene, render_array(scene, rng)


def to_tensor(image_HWC: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(image_HWC).permute(2, 0, 1).float().div(127.5).sub(1.0)


class ShapesT2I(Dataset):
    """Map-style Shapes-T2I: item ``i`` is ``(image [3, 64, 64] float in [-1, 1], caption)``.

    Items are a pure function of ``(seed, split, i)``; ``train`` and ``test`` share no caption.
    """

    def __init__(self, size: int, seed: int = 0, split: str = "train") -> None:
        _check("ShapesT2I", split, SPLITS, "split")
        if size < 0 or seed < 0:
            raise ValueError(f"size and seed must be >= 0, got size={size}, seed={seed}")
        self.size, self.seed, self.split = size, seed, split

    def __len__(self) -> int:
        return self.size

    def _index(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for ShapesT2I of size {self.size}")
        return index % self.size

    def scene(self, index: int) -> Scene:
        """The scene of item ``index``."""
        return sample_item(self._index(index), self.seed, self.split)[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        scene, image_HWC = sample_item(self._index(index), self.seed, self.split)
        return to_tensor(image_HWC), caption(scene)


class IterableShapesT2I(IterableDataset):
    """Streaming Shapes-T2I yielding the same items as ``ShapesT2I`` in index order.

    ``size=None`` streams forever. With DataLoader workers, worker ``w`` of ``n`` yields
    indices ``w, w + n, ...``, so together the workers cover every index exactly once.
    """

    def __init__(self, size: int | None = None, seed: int = 0, split: str = "train") -> None:
        _check("IterableShapesT2I", split, SPLITS, "split")
        if (size is not None and size < 0) or seed < 0:
            raise ValueError(f"size and seed must be >= 0, got size={size}, seed={seed}")
        self.size, self.seed, self.split = size, seed, split

    def __len__(self) -> int:
        if self.size is None:
            raise TypeError("an infinite IterableShapesT2I (size=None) has no length")
        return self.size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        indices = itertools.count(start, step) if self.size is None else range(start, self.size, step)
        for index in indices:
            scene, image_HWC = sample_item(index, self.seed, self.split)
            yield to_tensor(image_HWC), caption(scene)
