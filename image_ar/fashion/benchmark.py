"""The ``fashion-mnist`` benchmark: class-conditional Fashion-MNIST as seen by ``mmaccel eval``.

Owns: ``load_benchmark`` (the ``mmaccel.benchmarks`` entry point) filling in an
``mmaccel.eval.benchmarks.Benchmark`` with the Fashion-MNIST pieces, for the class-conditional
models trained on it (``fashion-var`` by default, ``fashion-mar``): the prompt set (the ten
class names, balanced: every block of ten prompts holds each class once, in a seeded order),
class consistency as the accuracy figure (the shipped ``FashionNet`` classifier, loaded once per
process, via ``classifier.class_accuracy``) and its one table column with a 95% binomial
interval, the FD feature network ``FashionNet`` (its features take the ``[N, 3, H, W]`` in
[0, 1] that ``mmaccel.eval.fid`` feeds: channels are averaged) and the real images FD compares
against (a seeded sample of the 10,000 test images, padded to 32x32).

Must never: generate images, download anything (the data come from the Debian package
``dataset-fashion-mnist``), or print; the evaluation itself is ``mmaccel.eval``'s.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image
from torch import nn

from mmaccel.eval.benchmarks import AccuracyColumn, Benchmark, FeatureNet
from mmaccel.image_ar.fashion.classifier import NAME as FEATURE_NET_NAME
from mmaccel.image_ar.fashion.classifier import FashionNet, class_accuracy, load_classifier
from mmaccel.image_ar.fashion.data import CLASS_NAMES, load_split, to_pil

NAME = "fashion-mnist"
MODEL = "fashion-var"  # what it runs on unless a model is named
MODELS = ("fashion-var", "fashion-mar")  # the class-conditional Fashion-MNIST models it scores
ACCURACY_COLUMNS = (AccuracyColumn("class consistency", "accuracy", "n"),)
DESCRIPTION = (
    "real 28x28 Fashion-MNIST photos padded to 32x32; prompts are class names; class consistency "
    "judged by the shipped FashionNet classifier (93.31% test accuracy)"
)


def class_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` class names, balanced: prompts ``10 b .. 10 b + 9`` are the ten ``CLASS_NAMES`` in
    an order drawn from ``(seed, b)``, so any ``n`` has every class ``n // 10`` or one more
    times, and a longer list starts with the shorter one."""
    k = len(CLASS_NAMES)
    # one generator per block: the first blocks do not depend on how many follow
    order = [i for b in range((n + k - 1) // k) for i in np.random.default_rng([seed, b]).permutation(k)]
    return [CLASS_NAMES[i] for i in order[:n]]


def real_images(n: int, seed: int = 1) -> list[Image.Image]:
    """The first ``n`` of a ``seed``-permuted order of the 10,000 test images, 32x32 grayscale
    PIL images. ValueError when ``n`` is outside 0..10,000 (sampling is without replacement)."""
    test = load_split("test")
    if not 0 <= n <= len(test):
        raise ValueError(f"fashion-mnist has {len(test)} test images; cannot give {n} real images")
    return to_pil(test.images[np.random.default_rng(seed).permutation(len(test))[:n]])


@functools.lru_cache(maxsize=1)
def classifier() -> FashionNet:
    """The shipped classifier, loaded once per process (shared: do not move or train it)."""
    return load_classifier()


def accuracy(images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, float]:
    """Class consistency: ``accuracy`` (share of images the shipped classifier puts in their
    prompt's class), ``n``, and ``accuracy_<class>`` for each class among the prompts.
    ValueError for a prompt that is not a class name (see ``data.class_index``)."""
    return class_accuracy(list(images), list(prompts), classifier())


def feature_net() -> nn.Module:
    """A fresh copy of the shipped classifier (eval mode) as the FD feature network: the FD
    metric takes it as a submodule and may move it, so it is not the cached ``classifier()``."""
    return load_classifier()


def load_benchmark() -> Benchmark:
    """The Fashion-MNIST benchmark, run on the class-conditional VAR pair ``fashion-var`` unless
    another of its ``MODELS`` (the MAR pair ``fashion-mar``) is named."""
    return Benchmark(
        name=NAME,
        model=MODEL,
        models=MODELS,
        prompt_set=class_prompts,
        accuracy=accuracy,
        accuracy_columns=ACCURACY_COLUMNS,
        feature_net=FeatureNet(FEATURE_NET_NAME, feature_net),
        real_images=real_images,
        description=DESCRIPTION,
    )
