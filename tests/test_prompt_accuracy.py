"""The analytic prompt-accuracy checker: accepts ground truth, rejects wrong prompts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from mmaccel.image_ar.shapes import COLOURS, POSITIONS, SHAPES, Scene, caption, render, sample_item
from mmaccel.image_ar.shapes_accuracy import ATTRIBUTES, check, report

N = 500
ITEMS = [sample_item(i, seed=0, split="test") for i in range(N // 2)]
ITEMS += [sample_item(i, seed=0, split="train") for i in range(N - N // 2)]
SCENES = [scene for scene, _ in ITEMS]
IMAGES = [Image.fromarray(image_HWC) for _, image_HWC in ITEMS]


def perturb(scene: Scene, attribute: str, rng: np.random.Generator) -> Scene:
    """``scene`` with one attribute (of its first object, or its background) changed."""
    first, rest = scene.objects[0], scene.objects[1:]
    if attribute == "background":
        options = [c for c in COLOURS if c != scene.background and all(c != o.colour for o in scene.objects)]
        return Scene(str(rng.choice(options)), scene.objects)
    taken_colours = {scene.background, *(o.colour for o in rest)}
    options = {
        "colour": [c for c in COLOURS if c not in taken_colours and c != first.colour],
        "position": [p for p in POSITIONS if p != first.position and all(p != o.position for o in rest)],
        "shape": [s for s in SHAPES if s != first.shape],
        "size": ["small" if first.size == "large" else "large"],
    }[attribute]
    changed = dataclasses.replace(first, **{attribute: str(rng.choice(options))})
    return Scene(scene.background, (changed, *rest))


def test_ground_truth_is_accepted():
    result = report(IMAGES, [caption(s) for s in SCENES])
    assert result["n"] == N
    assert result["accuracy"] >= 0.98, result
    assert result["n_one_object"] > 100 and result["n_two_objects"] > 100
    assert result["accuracy_one_object"] >= 0.95 and result["accuracy_two_objects"] >= 0.95, result
    assert result["objects_right_two_objects"] >= result["accuracy_two_objects"]
    for name in ATTRIBUTES:
        assert result[name] >= 0.98, (name, result)


def test_captions_of_other_scenes_are_rejected():
    prompts, images = [], []
    for i, scene in enumerate(SCENES):
        other = SCENES[(i + 1) % N]
        if caption(other) != caption(scene):
            prompts.append(caption(other))
            images.append(IMAGES[i])
    rejected = np.mean(
        [not check(image, prompt).correct for image, prompt in zip(images, prompts, strict=True)]
    )
    assert rejected >= 0.9


@pytest.mark.parametrize("attribute", ["colour", "position", "shape", "size", "background"])
def test_single_attribute_changes_are_rejected(attribute):
    rng = np.random.default_rng(0)
    verdicts = [check(IMAGES[i], caption(perturb(SCENES[i], attribute, rng))) for i in range(0, N, 2)]
    assert np.mean([not v.correct for v in verdicts]) >= 0.9
    # the changed attribute itself is the one flagged (a wrong colour also hides the object)
    assert np.mean([not getattr(v, attribute) for v in verdicts]) >= 0.9


def test_extra_object_fails_the_count():
    two = [(s, im) for s, im in zip(SCENES, IMAGES, strict=True) if len(s.objects) == 2][:50]
    verdicts = [check(image, caption(Scene(s.background, s.objects[:1]))) for s, image in two]
    assert all(v.colour and v.position and v.shape and v.size for v in verdicts)
    assert not any(v.count or v.correct for v in verdicts)


def test_other_sizes_and_arrays_are_resized():
    for scene, image in zip(SCENES[:40], IMAGES[:40], strict=True):
        assert check(image.resize((256, 256), Image.Resampling.NEAREST), caption(scene)).correct
        assert check(np.asarray(image.resize((48, 48), Image.Resampling.BILINEAR)), caption(scene)).correct
        assert check(np.asarray(image), caption(scene)).correct


def test_imperfect_images_mostly_pass():
    # a slightly blurred image stands in for a generated one with soft edges and colour bleed
    blurred = [image.filter(ImageFilter.GaussianBlur(1.0)) for image in IMAGES[:200]]
    assert report(blurred, [caption(s) for s in SCENES[:200]])["accuracy"] >= 0.95


def test_report_shapes_and_errors():
    scene = Scene(SCENES[0].background, SCENES[0].objects[:1])
    result = report([render(scene, 0)], [caption(scene)])
    assert result["accuracy"] == 1.0 and result["n_one_object"] == 1.0
    assert math.isnan(result["accuracy_two_objects"]) and math.isnan(result["objects_right_two_objects"])
    # a two-object prompt whose second object is drawn in the wrong colour: one of two objects right
    two = next(s for s in SCENES if len(s.objects) == 2)
    first, second = two.objects
    recoloured = dataclasses.replace(
        second, colour=next(c for c in COLOURS if c not in (first.colour, second.colour, two.background))
    )
    half = report([render(two, 0)], [caption(Scene(two.background, (first, recoloured)))])
    assert half["accuracy_two_objects"] == 0.0 and half["objects_right_two_objects"] == 0.5
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        report([IMAGES[0], IMAGES[1]], [caption(SCENES[0])])
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        check(IMAGES[0], "a large pink circle at the top on a blue background")
