"""Shapes-T2I: determinism, split disjointness, caption grammar, layout rules, datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmaccel.image_ar import shapes
from mmaccel.image_ar.shapes import (
    CAPTION_WORDS,
    COLOURS,
    SIZES,
    IterableShapesT2I,
    Scene,
    ShapeObject,
    ShapesT2I,
    caption,
    object_mask,
    objects_fit,
    parse_caption,
    render,
    render_array,
    sample_item,
    sample_scene,
    scene_split,
)

SCENES = [sample_scene(seed) for seed in range(500)]


def test_sample_scene_is_deterministic_by_seed():
    assert [sample_scene(seed) for seed in range(50)] == SCENES[:50]
    assert sample_scene(np.random.default_rng(7)) == sample_scene(7)
    assert len({caption(s) for s in SCENES[:50]}) > 40  # different seeds, different scenes


def test_render_is_deterministic_by_seed():
    scene = SCENES[0]
    a, b, c = render_array(scene, 3), render_array(scene, 3), render_array(scene, 4)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    image = render(scene, 3)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), a)


def test_rendering_does_not_touch_global_rng():
    np.random.seed(0)
    torch.manual_seed(0)
    before_np, before_torch = np.random.get_state()[1].copy(), torch.get_rng_state()
    ShapesT2I(5)[2]
    assert np.array_equal(np.random.get_state()[1], before_np)
    assert torch.equal(torch.get_rng_state(), before_torch)


def test_background_is_textured_with_bounded_amplitude():
    scene = Scene("blue", (ShapeObject("circle", "red", "small", "center"),))
    image_HWC = render_array(scene, 0).astype(int)
    background_HW = ~object_mask(scene.objects[0])
    deviation = image_HWC[background_HW] - np.asarray(COLOURS["blue"])
    assert deviation.std() > 10  # textured, not flat
    assert np.abs(deviation).max() <= shapes.NOISE_AMPLITUDE + shapes.GRADIENT_AMPLITUDE + 1


def test_caption_grammar_round_trip():
    for scene in SCENES:
        text = caption(scene)
        assert parse_caption(text) == scene, text
        assert set(text.split()) <= set(CAPTION_WORDS)


def test_design_examples_parse_exactly():
    examples = [
        "a large red circle at the top left on a blue background",
        "a small yellow square at the left and a large white triangle at the bottom right on a green background",
    ]
    for text in examples:
        assert caption(parse_caption(text)) == text
        assert scene_split(parse_caption(text)) == "train"  # the documented examples are trained on
    two = parse_caption(examples[1])
    assert two.background == "green"
    assert two.objects == (
        ShapeObject("square", "yellow", "small", "left"),
        ShapeObject("triangle", "white", "large", "bottom right"),
    )
    assert caption(Scene("red", (ShapeObject("circle", "blue", "small", "center"),))) == (
        "a small blue circle at the center on a red background"
    )
    # lenient about case, spacing, a trailing period and the article
    assert parse_caption("A  large red circle at the top left on an blue background.") == parse_caption(
        examples[0]
    )


def test_scene_invariants_and_layout():
    n_two = 0
    for seed, scene in enumerate(SCENES[:200]):
        assert 1 <= len(scene.objects) <= 2
        assert all(o.colour != scene.background for o in scene.objects)
        masks = [object_mask(o) for o in scene.objects]
        for obj, mask_HW in zip(scene.objects, masks, strict=True):
            ys, xs = np.nonzero(mask_HW)
            across = SIZES[obj.size]
            # never cut by the image edge: full size in both directions
            assert abs((xs.max() - xs.min() + 1) - across) <= 1
            assert abs((ys.max() - ys.min() + 1) - across) <= 1
            row, col = divmod(shapes.POSITIONS.index(obj.position), 3)
            assert int(xs.mean() // shapes.CELL_PX) == col and int(ys.mean() // shapes.CELL_PX) == row
        if len(scene.objects) == 2:
            n_two += 1
            a, b = scene.objects
            assert a.colour != b.colour and a.position != b.position and objects_fit(a, b)
            assert not (masks[0] & masks[1]).any()
        image_HWC = render_array(scene, seed)
        for obj, mask_HW in zip(scene.objects, masks, strict=True):
            assert (image_HWC[mask_HW] == COLOURS[obj.colour]).all()
    assert 60 < n_two < 140  # about half the scenes have two objects


def test_overlapping_pairs_are_rejected_by_the_layout_rule():
    big_corner = ShapeObject("square", "red", "large", "top left")
    assert not objects_fit(big_corner, ShapeObject("square", "blue", "small", "top"))
    assert not objects_fit(big_corner, ShapeObject("square", "blue", "large", "top"))
    assert objects_fit(big_corner, ShapeObject("square", "blue", "large", "top right"))
    assert objects_fit(
        ShapeObject("circle", "red", "small", "top"), ShapeObject("circle", "blue", "small", "center")
    )


def test_dataset_items():
    data = ShapesT2I(8, seed=0, split="train")
    assert len(data) == 8
    image, text = data[3]
    assert isinstance(text, str) and parse_caption(text) == data.scene(3)
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.min() < -0.5 < 0.5 < image.max()
    again, text_again = ShapesT2I(8, seed=0, split="train")[3]
    assert torch.equal(image, again) and text == text_again
    assert torch.equal(data[-1][0], data[7][0])
    other, _ = ShapesT2I(8, seed=1, split="train")[3]
    assert not torch.equal(image, other)
    with pytest.raises(IndexError):
        data[8]
    with pytest.raises(ValueError, match="split"):
        ShapesT2I(8, split="val")


def test_splits_are_disjoint():
    train = {caption(sample_item(i, 0, "train")[0]) for i in range(1500)}
    test_scenes = [sample_item(i, 0, "test")[0] for i in range(500)]
    assert all(scene_split(s) == "test" for s in test_scenes)
    test = {caption(s) for s in test_scenes}
    assert not train & test
    # object order does not move a scene across the split
    for scene in test_scenes:
        assert scene_split(Scene(scene.background, scene.objects[::-1])) == "test"
    # the held-out fraction is about TEST_FRACTION of all compositions
    share = np.mean([scene_split(s) == "test" for s in SCENES])
    assert abs(share - shapes.TEST_FRACTION) < 0.05
    # the same index gives different images in the two splits
    assert not np.array_equal(sample_item(0, 0, "train")[1], sample_item(0, 0, "test")[1])


def test_iterable_matches_map_style_and_shards_over_workers(monkeypatch):
    mapped = ShapesT2I(6, seed=2, split="test")
    streamed = list(IterableShapesT2I(6, seed=2, split="test"))
    assert len(streamed) == 6 == len(IterableShapesT2I(6))
    for (image, text), (image_ref, text_ref) in zip(streamed, (mapped[i] for i in range(6)), strict=True):
        assert torch.equal(image, image_ref) and text == text_ref

    class Worker:
        def __init__(self, worker_id: int) -> None:
            self.id, self.num_workers = worker_id, 2

    shards = []
    for worker_id in range(2):
        monkeypatch.setattr(shapes, "get_worker_info", lambda w=worker_id: Worker(w))
        shards.append([text for _, text in IterableShapesT2I(6, seed=2, split="test")])
    assert shards[0] == [mapped[i][1] for i in (0, 2, 4)]
    assert shards[1] == [mapped[i][1] for i in (1, 3, 5)]

    monkeypatch.setattr(shapes, "get_worker_info", lambda: None)
    infinite = iter(IterableShapesT2I(None, seed=2, split="test"))
    assert [next(infinite)[1] for _ in range(8)][:6] == [mapped[i][1] for i in range(6)]
    with pytest.raises(TypeError):
        len(IterableShapesT2I(None))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a large pink circle at the top on a blue background", "unknown colour 'pink'"),
        ("a large red hexagon at the top on a blue background", "unknown shape 'hexagon'"),
        ("a huge red circle at the top on a blue background", "unknown size 'huge'"),
        ("a large red circle at the middle on a blue background", "unknown position 'middle'"),
        ("a large red circle at the top on a pink background", "unknown colour 'pink'"),
        ("a large red circle at the top", "must end with 'on a <colour> background'"),
        ("", "must end with 'on a <colour> background'"),
        ("red circle at the top on a blue background", "does not match"),
        ("a large red circle at the top on a red background", "equals the background"),
        (
            "a small red circle at the top and a small red square at the left on a blue background",
            "differ in colour",
        ),
        (
            "a small red circle at the top and a small green square at the top on a blue background",
            "differ in position",
        ),
        (
            "a small red circle at the top and a small green square at the left and a small white "
            "circle at the right on a blue background",
            "names 3 objects",
        ),
    ],
)
def test_bad_caption_raises_naming_the_problem(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_caption(text)
