"""Prompt accuracy on Shapes-T2I: does an image show what its prompt names?

Owns: a model-free checker that reads a (possibly generated, imperfect) image back into
colours, shapes, sizes and positions and compares them with the scene its prompt describes
(``shapes`` grammar), and the aggregate ``report`` that sits beside FID when a lossy method is
compared with ``ar`` (the ``shapes-t2i`` benchmark's accuracy, see ``shapes_benchmark``).

How an image is read (thresholds measured on rendered ground-truth scenes, see tests):

1. Resize to 64x64 (bilinear) and label each pixel with the nearest of the 8 named colours.
2. Background = the most common label; compared with the prompt's background colour.
3. Blobs: for every other label, 8-connected components of its mask that keep at least one
   pixel after a 3x3 binary opening (drops one-pixel rings that blurred edges leave, e.g.
   purple between red and blue) and have ``min_area`` pixels or more. A blob lying mostly
   within ``artefact_radius`` px of a larger blob, in a colour between that blob's colour and
   the background's, is the larger blob's blurred edge and is dropped too.
4. Each named object takes the largest blob of its colour (colour check); the blob centroid's
   3x3 cell is its position; the geometric mean of its bounding-box sides is its size.
5. Shape. The plain fill ratio area / bounding-box area (square 1.0, circle 0.79-0.80,
   triangle 0.52-0.54 on ground truth) separates ground truth perfectly but drifts under blur
   (blurred small triangles reach 0.67-0.76 and read as circles). Two local fill ratios hold up
   better and are what decides: ``taper`` = mean row width in the top quarter of the box /
   in the bottom quarter (triangle 0.17-0.21, circle and square 0.8-1.2 on ground truth;
   triangles stay <= 0.44 under a 1.5 px Gaussian blur) says triangle when < 0.55; otherwise
   ``corner_fill`` = filled fraction of the four corner squares of side 1/5 of the box
   (square 1.0, circle 0.11-0.22) says square when >= 0.5, else circle. ``fill`` stays in
   ``Blob`` for diagnostics.
6. Count: the number of blobs equals the number of named objects (nothing extra drawn).

Must never: need a model or weights, modify the images it is given, or print. It needs
``scipy`` (the ``eval`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmaccel.image_ar.shapes import CELL_PX, COLOURS, IMAGE_SIZE, POSITIONS, ShapeObject, parse_caption

ATTRIBUTES: tuple[str, ...] = ("colour", "position", "shape", "size", "background", "count")


@dataclass(frozen=True)
class CheckerConfig:
    """Thresholds of the checker (defaults measured on rendered Shapes-T2I scenes).

    ``min_area``: smallest blob (px) that counts as an object (a small triangle has ~105).
    ``triangle_max_taper`` / ``square_min_corner_fill``: the shape rule (module docstring).
    ``large_min_extent`` (px): splits small (~14 px across) from large (~26 px).
    ``artefact_*``: a blob with >= ``artefact_min_near`` of its pixels within
    ``artefact_radius`` px of a larger blob of colour c, whose colour m has
    (|c - m| + |m - bg|) / |c - bg| <= ``artefact_max_detour`` (m lies between c and the
    background), is an edge artefact of that blob.
    """

    min_area: int = 20
    triangle_max_taper: float = 0.55
    square_min_corner_fill: float = 0.5
    large_min_extent: float = 20.0
    artefact_radius: int = 3
    artefact_min_near: float = 0.6
    artefact_max_detour: float = 1.15


@dataclass(frozen=True)
class Blob:
    """One connected region of a non-background colour; coordinates in 64x64 pixels."""

    colour: str
    area: int
    centroid: tuple[float, float]  # (x, y)
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), exclusive ends
    fill: float  # area / bounding-box area
    extent: float  # sqrt(bbox width * bbox height)
    taper: float  # mean row width in the top quarter of the box / in the bottom quarter
    corner_fill: float  # filled fraction of the four corner squares (side 1/5 of the box)


@dataclass(frozen=True)
class ObjectCheck:
    """How one named object fared; every check but ``colour`` is False when it was not found."""

    expected: ShapeObject
    blob: Blob | None
    colour: bool
    position: bool
    shape: bool
    size: bool

    @property
    def correct(self) -> bool:
        """Drawn with its colour, position, shape and size."""
        return self.colour and self.position and self.shape and self.size


@dataclass(frozen=True)
class PromptCheck:
    """The verdict for one (image, prompt) pair: per-attribute booleans and ``correct``.

    An object attribute is True when it holds for every named object; ``correct`` is the AND
    of all attributes in ``ATTRIBUTES``.
    """

    prompt: str
    n_objects: int
    colour: bool
    position: bool
    shape: bool
    size: bool
    background: bool
    count: bool
    correct: bool
    detected_background: str
    objects: tuple[ObjectCheck, ...]
    blobs: tuple[Blob, ...]


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 ``[64, 64, 3]`` RGB from a PIL image or an ``[H, W, 3]`` uint8 array of any size."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [H, W, 3] array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def classify_pixels(image_HWC: np.ndarray) -> np.ndarray:
    """``[H, W]`` int labels: the index (in ``COLOURS`` order) of each pixel's nearest colour."""
    palette_KC = np.asarray(list(COLOURS.values()), dtype=np.float32)
    dist_HWK = ((image_HWC[:, :, None, :].astype(np.float32) - palette_KC) ** 2).sum(-1)
    return dist_HWK.argmin(-1)


def find_blobs(labels_HW: np.ndarray, background: int, config: CheckerConfig) -> list[Blob]:
    """Blobs of every non-background label (see the module docstring), largest first."""
    from scipy import ndimage

    eight = np.ones((3, 3), dtype=bool)
    found: list[tuple[Blob, np.ndarray]] = []
    for index in np.unique(labels_HW):
        if index == background:
            continue
        mask_HW = labels_HW == index
        core_HW = ndimage.binary_opening(mask_HW, structure=eight)
        components_HW, n = ndimage.label(mask_HW, structure=eight)
        for k in range(1, n + 1):
            region_HW = components_HW == k
            if region_HW.sum() >= config.min_area and core_HW[region_HW].any():
                found.append((_describe(region_HW, list(COLOURS)[int(index)]), region_HW))
    found.sort(key=lambda pair: -pair[0].area)
    return _drop_edge_artefacts(found, list(COLOURS)[background], config)


def _describe(region_HW: np.ndarray, colour: str) -> Blob:
    ys, xs = np.nonzero(region_HW)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    box_area = (x1 - x0) * (y1 - y0)
    box_HW = region_HW[y0:y1, x0:x1]
    return Blob(
        colour=colour,
        area=len(xs),
        centroid=(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5),
        bbox=(x0, y0, x1, y1),
        fill=len(xs) / box_area,
        extent=math.sqrt(box_area),
        taper=_taper(box_HW),
        corner_fill=_corner_fill(box_HW),
    )


def _drop_edge_artefacts(
    found: list[tuple[Blob, np.ndarray]], background: str, config: CheckerConfig
) -> list[Blob]:
    """Drop blobs that are the blurred edge of a larger blob: mostly within ``artefact_radius``
    of it, in a colour lying between its colour and the background's (purple around red on
    blue). ``found`` is sorted largest first, so every blob is compared with kept larger ones."""
    from scipy import ndimage

    def rgb(name: str) -> np.ndarray:
        return np.asarray(COLOURS[name], dtype=np.float64)

    size = 2 * config.artefact_radius + 1
    kept: list[tuple[Blob, np.ndarray]] = []
    for blob, mask_HW in found:
        artefact = False
        for other, other_HW in kept:
            near_HW = ndimage.binary_dilation(other_HW, structure=np.ones((size, size), dtype=bool))
            near = (mask_HW & near_HW).sum() / blob.area
            c, m, b = rgb(other.colour), rgb(blob.colour), rgb(background)
            detour = (np.linalg.norm(c - m) + np.linalg.norm(m - b)) / np.linalg.norm(c - b)
            if near >= config.artefact_min_near and detour <= config.artefact_max_detour:
                artefact = True
                break
        if not artefact:
            kept.append((blob, mask_HW))
    return [blob for blob, _ in kept]


def _taper(box_HW: np.ndarray) -> float:
    widths_H = box_HW.sum(1)
    quarter = max(1, round(len(widths_H) / 4))
    return float(widths_H[:quarter].mean() / max(widths_H[-quarter:].mean(), 1.0))


def _corner_fill(box_HW: np.ndarray) -> float:
    c = max(1, round(min(box_HW.shape) / 5))
    corners = (box_HW[:c, :c], box_HW[:c, -c:], box_HW[-c:, :c], box_HW[-c:, -c:])
    return float(np.mean([corner.mean() for corner in corners]))


def blob_shape(blob: Blob, config: CheckerConfig) -> str:
    """``triangle``, ``circle`` or ``square`` from the blob's taper and corner fill."""
    if blob.taper < config.triangle_max_taper:
        return "triangle"
    return "square" if blob.corner_fill >= config.square_min_corner_fill else "circle"


def blob_size(blob: Blob, config: CheckerConfig) -> str:
    """``small`` or ``large`` from the blob's extent."""
    return "large" if blob.extent >= config.large_min_extent else "small"


def blob_position(blob: Blob) -> str:
    """The grid position (a ``POSITIONS`` name) of the cell holding the blob's centroid."""
    x, y = blob.centroid
    col = min(int(x // CELL_PX), 2)
    row = min(int(y // CELL_PX), 2)
    return POSITIONS[3 * row + col]


def check(image: Image.Image | np.ndarray, prompt: str, config: CheckerConfig | None = None) -> PromptCheck:
    """Whether ``image`` shows the scene ``prompt`` describes.

    Raises ValueError (from ``parse_caption``) when the prompt is outside the Shapes-T2I grammar.
    """
    config = config or CheckerConfig()
    scene = parse_caption(prompt)
    labels_HW = classify_pixels(to_array(image))
    background = int(np.bincount(labels_HW.ravel(), minlength=len(COLOURS)).argmax())
    blobs = find_blobs(labels_HW, background, config)
    objects = tuple(_check_object(obj, blobs, config) for obj in scene.objects)
    verdict = {
        "colour": all(o.colour for o in objects),
        "position": all(o.position for o in objects),
        "shape": all(o.shape for o in objects),
        "size": all(o.size for o in objects),
        "background": list(COLOURS)[background] == scene.background,
        "count": len(blobs) == len(scene.objects),
    }
    return PromptCheck(
        prompt=prompt,
        n_objects=len(scene.objects),
        correct=all(verdict.values()),
        detected_background=list(COLOURS)[background],
        objects=objects,
        blobs=tuple(blobs),
        **verdict,
    )


def _check_object(obj: ShapeObject, blobs: list[Blob], config: CheckerConfig) -> ObjectCheck:
    mine = [b for b in blobs if b.colour == obj.colour]  # blobs are sorted largest first
    if not mine:
        return ObjectCheck(obj, None, colour=False, position=False, shape=False, size=False)
    blob = mine[0]
    return ObjectCheck(
        obj,
        blob,
        colour=True,
        position=blob_position(blob) == obj.position,
        shape=blob_shape(blob, config) == obj.shape,
        size=blob_size(blob, config) == obj.size,
    )


def report(
    images: Sequence[Image.Image | np.ndarray], prompts: Sequence[str], config: CheckerConfig | None = None
) -> dict[str, float]:
    """Aggregate prompt accuracy of ``images`` against ``prompts`` (paired by position).

    Keys: ``n``, ``accuracy`` (fraction fully correct), ``n_one_object`` /
    ``accuracy_one_object``, ``n_two_objects`` / ``accuracy_two_objects``,
    ``objects_right_two_objects`` (of the objects two-object prompts name, the fraction drawn
    with their colour, position, shape and size: where two-object prompts fail, and a figure
    with twice the samples) and ``<attribute>`` for each name in ``ATTRIBUTES`` (fraction of
    prompts where that attribute holds). Empty groups give NaN.
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    results = [check(image, prompt, config) for image, prompt in zip(images, prompts, strict=True)]

    def mean(values: list[bool]) -> float:
        return float(np.mean(values)) if values else float("nan")

    one = [r.correct for r in results if r.n_objects == 1]
    two = [r.correct for r in results if r.n_objects == 2]
    out: dict[str, float] = {
        "n": float(len(results)),
        "accuracy": mean([r.correct for r in results]),
        "n_one_object": float(len(one)),
        "accuracy_one_object": mean(one),
        "n_two_objects": float(len(two)),
        "accuracy_two_objects": mean(two),
        "objects_right_two_objects": mean(
            [o.correct for r in results if r.n_objects == 2 for o in r.objects]
        ),
    }
    for name in ATTRIBUTES:
        out[name] = mean([getattr(r, name) for r in results])
    return out
