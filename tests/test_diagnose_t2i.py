"""Teacher-forced caption diagnostics: scene edits, and probes that read zero exactly when the
model cannot see its caption."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from image_ar.diagnose_t2i import (
    binding_costs,
    caption_worth,
    held_out_scenes,
    main,
    moved,
    swapped,
    token_nats,
)
from image_ar.shapes import POSITIONS, caption, sample_scene
from image_ar.t2i_model import ShapesT2IModel, t2i_config


def model_with(cell_map: int, blind: bool) -> ShapesT2IModel:
    """A small random model; ``blind`` zeroes the caption projection so every caption (and
    the null caption) gives the same condition."""
    torch.manual_seed(0)
    model = ShapesT2IModel(t2i_config(dim=32, n_layer=2, n_head=2, image_pos_embedding=True,
                                      condition_cell_map=cell_map)).eval()  # fmt: skip
    with torch.no_grad():
        model.gpt.output.weight.normal_(0.0, 0.5)
        if cell_map:
            for layer in model.gpt.cell_map[::2]:
                layer.weight.normal_(0.0, 0.5)
            model.gpt.cell_embed.weight.normal_(0.0, 0.5)
        if blind:
            model.gpt.cls_embedding.cap_proj.fc2.weight.zero_()
    return model


def two_object_scenes(n: int) -> list:
    scenes, seed = [], 0
    while len(scenes) < n:
        scene = sample_scene(seed)
        seed += 1
        if len(scene.objects) == 2:
            scenes.append(scene)
    return scenes


def test_swapped_and_moved_scenes_keep_everything_but_the_positions():
    scene = two_object_scenes(1)[0]
    a, b = scene.objects
    s = swapped(scene)
    assert (s.objects[0].position, s.objects[1].position) == (b.position, a.position)
    assert (s.objects[0].colour, s.objects[1].colour, s.background) == (a.colour, b.colour, scene.background)
    m = moved(scene, np.random.default_rng(0))
    assert m.objects[0].position in POSITIONS and m.objects[0].position not in (a.position, b.position)
    assert m.objects[1] == b and m.objects[0].colour == a.colour


@pytest.mark.parametrize("cell_map", [0, 3])
def test_probes_read_zero_for_a_model_blind_to_its_caption_and_not_otherwise(cell_map, one_thread):
    scenes = two_object_scenes(3)
    tokens_BN = torch.randint(0, 1024, (3, 256), generator=torch.Generator().manual_seed(1))
    blind = binding_costs(model_with(cell_map, True), scenes, tokens_BN)
    seeing = binding_costs(model_with(cell_map, False), scenes, tokens_BN)
    assert sorted(blind) == sorted(seeing) == (["cells-only", "full"] if cell_map else ["full"])
    for mode in blind:
        assert blind[mode]["swap_nats_per_image"] == 0.0 and blind[mode]["move_nats_per_image"] == 0.0
        assert seeing[mode]["swap_nats_per_image"] != 0.0 and seeing[mode]["move_nats_per_image"] != 0.0
        assert math.isfinite(seeing[mode]["own_nats_per_token"])
    assert caption_worth(model_with(cell_map, True), scenes, tokens_BN)["nats_per_image"] == 0.0
    worth = caption_worth(model_with(cell_map, False), scenes, tokens_BN)
    assert worth["nats_per_image"] != 0.0 and worth["reveal_tokens_per_image"] > 0
    assert worth["object_tokens_per_image"] > 0


def test_bad_input_is_named():
    model = model_with(0, False)
    one = [s for s in (sample_scene(i) for i in range(20)) if len(s.objects) == 1][:1]
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
