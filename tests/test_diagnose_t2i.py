"""Teacher-forced caption diagnostics: scene edits, and probes that read zero exactly when the
model cannot see its caption."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mmaccel.image_ar.diagnose_t2i import (
    EDITS,
    binding_costs,
    caption_worth,
    colour_swapped,
    held_out_scenes,
    main,
    moved,
    recoloured,
    reshaped,
    swapped,
    token_nats,
)
from mmaccel.image_ar.shapes import POSITIONS, caption

from .conftest import random_t2i_model


def two_object_scenes(n: int) -> list:
    return held_out_scenes(n, objects=2)[0]


def test_swapped_and_moved_scenes_keep_everything_but_the_positions():
    scene = two_object_scenes(1)[0]
    a, b = scene.objects
    s = swapped(scene)
    assert (s.objects[0].position, s.objects[1].position) == (b.position, a.position)
    assert (s.objects[0].colour, s.objects[1].colour, s.background) == (a.colour, b.colour, scene.background)
    m = moved(scene, np.random.default_rng(0))
    assert m.objects[0].position in POSITIONS and m.objects[0].position not in (a.position, b.position)
    assert m.objects[1] == b and m.objects[0].colour == a.colour


def test_colour_and_shape_edits_change_only_what_they_name():
    rng = np.random.default_rng(0)
    for scene in two_object_scenes(20):
        a, b = scene.objects
        c = colour_swapped(scene)
        assert (c.objects[0].colour, c.objects[1].colour) == (b.colour, a.colour)
        assert [o.position for o in c.objects] == [a.position, b.position]
        assert [o.shape for o in c.objects] == [a.shape, b.shape] and c.background == scene.background
        r = recoloured(scene, rng)
        assert r.objects[0].colour not in (a.colour, b.colour, scene.background)
        assert r.objects[0] == replace(a, colour=r.objects[0].colour) and r.objects[1] == b
        s = reshaped(scene, rng)
        assert s.objects[0].shape != a.shape and s.objects[0] == replace(a, shape=s.objects[0].shape)
        assert s.objects[1] == b


@pytest.mark.parametrize("cell_map", [0, 3])
def test_probes_read_zero_for_a_model_blind_to_its_caption_and_not_otherwise(cell_map, one_thread):
    scenes = two_object_scenes(3)
    tokens_BN = torch.randint(0, 1024, (3, 256), generator=torch.Generator().manual_seed(1))
    blind = binding_costs(random_t2i_model(cell_map, blind=True), scenes, tokens_BN)
    seeing = binding_costs(random_t2i_model(cell_map), scenes, tokens_BN)
    assert sorted(blind) == sorted(seeing) == (["cells-only", "full"] if cell_map else ["full"])
    for mode in blind:
        for edit in EDITS:
            assert blind[mode][f"{edit}_nats_per_image"] == 0.0
            assert seeing[mode][f"{edit}_nats_per_image"] != 0.0
        assert math.isfinite(seeing[mode]["own_nats_per_token"])
    assert caption_worth(random_t2i_model(cell_map, blind=True), scenes, tokens_BN)["nats_per_image"] == 0.0
    worth = caption_worth(random_t2i_model(cell_map), scenes, tokens_BN)
    assert worth["nats_per_image"] != 0.0 and worth["reveal_tokens_per_image"] > 0
    assert worth["object_tokens_per_image"] > 0


def test_bad_input_is_named():
    model = random_t2i_model()
    one, _ = held_out_scenes(1, objects=1)
    with pytest.raises(ValueError, match="needs two-object scenes"):
        binding_costs(model, one, torch.zeros(1, 256, dtype=torch.long))
    with pytest.raises(ValueError, match="mode must be 'full', 'null' or 'cells-only', got 'half'"):
        token_nats(model, [caption(one[0])], torch.zeros(1, 256, dtype=torch.long), "half")


def test_held_out_scenes_come_from_the_test_split():
    scenes, images = held_out_scenes(3, objects=2)
    assert len(scenes) == 3 and all(len(s.objects) == 2 for s in scenes) and images.shape == (3, 3, 64, 64)


def test_the_command_reports_on_the_shipped_model(capsys, one_thread):
    main(["--n", "2", "--threads", "1"])
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"binding", "caption_worth"}
    assert math.isfinite(report["binding"]["full"]["swap_nats_per_image"])
    with pytest.raises(SystemExit):
        main(["--n", "0"])
