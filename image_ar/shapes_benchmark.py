"""The ``shapes-t2i`` benchmark: Shapes-T2I as seen by ``mmaccel eval``.

Owns: ``load_benchmark`` (the ``mmaccel.benchmarks`` entry point) filling in an
``mmaccel.eval.benchmarks.Benchmark`` with the Shapes-T2I pieces: the prompt set (held-out,
test-split captions), the analytic prompt-accuracy checker (``shapes_accuracy.report``) and
how the results table shows it (one- and two-object accuracy with their 95% binomial
intervals, then all prompts), the FD feature network ``ShapesNet`` (``shapes_features``) and
the real images FD compares against (rendered test-split scenes).

Must never: generate images, download anything, or print; the evaluation itself is
``mmaccel.eval``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torch import nn

from mmaccel.eval.benchmarks import AccuracyColumn, Benchmark, FeatureNet
from mmaccel.image_ar.shapes import ShapesT2I, caption, sample_item

NAME = "shapes-t2i"
ACCURACY_COLUMNS = (
    AccuracyColumn("acc 1-obj", "accuracy_one_object", "n_one_object"),
    AccuracyColumn("acc 2-obj", "accuracy_two_objects", "n_two_objects"),
    AccuracyColumn("acc all", "accuracy"),
)


def held_out_prompts(n: int, seed: int = 0) -> list[str]:
    """The first ``n`` held-out (test-split) Shapes-T2I captions of dataset seed ``seed``."""
    data = ShapesT2I(n, seed=seed, split="test")
    return [caption(data.scene(i)) for i in range(n)]


def real_images(n: int, seed: int = 1) -> list[Image.Image]:
    """``n`` rendered test-split Shapes-T2I scenes of dataset seed ``seed``."""
    return [Image.fromarray(sample_item(i, seed, "test")[1]) for i in range(n)]


def accuracy(images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, float]:
    """``shapes_accuracy.report`` of images paired with their prompts (scipy imported on use)."""
    from mmaccel.image_ar.shapes_accuracy import report

    return report(list(images), list(prompts))


def feature_net() -> nn.Module:
    """The shipped ShapesNet feature network (eval mode)."""
    from mmaccel.image_ar.shapes_features import load_feature_net

    return load_feature_net()


def load_benchmark() -> Benchmark:
    """The Shapes-T2I benchmark, run on the embedded default model ``shapes-t2i``."""
    return Benchmark(
        name=NAME,
        model="shapes-t2i",
        prompt_set=held_out_prompts,
        accuracy=accuracy,
        accuracy_columns=ACCURACY_COLUMNS,
        feature_net=FeatureNet("ShapesNet", feature_net),
        real_images=real_images,
        description="procedural 64x64 scenes of 1-2 coloured shapes; held-out captions",
    )
