"""The condition cell map's layout pretraining (mmaccel.image_ar.cell_map) and its use in train_t2i."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmaccel.image_ar.caption_encoder import tokenize
from mmaccel.image_ar.cell_map import layout_labels, pretrain_cell_map
from mmaccel.image_ar.shapes import COLOURS, SHAPES, caption, sample_scene
from mmaccel.image_ar.t2i_model import ShapesT2IModel, t2i_config
from mmaccel.image_ar.train_t2i import TrainConfig, train

from .conftest import token_file


def small_model(cells: int = 3, **gpt_kw) -> ShapesT2IModel:
    torch.manual_seed(0)
    return ShapesT2IModel(
        t2i_config(dim=32, n_layer=1, n_head=2, image_pos_embedding=True, condition_cell_map=cells, **gpt_kw)
    )


def test_layout_labels_put_each_object_in_its_cell():
    labels = layout_labels(["a small yellow square at the left and a large white triangle at the bottom right "
                            "on a green background"])  # fmt: skip
    expected = torch.zeros(9, 3, dtype=torch.long)
    expected[3] = torch.tensor([list(COLOURS).index("yellow") + 1, SHAPES.index("square") + 1, 1])
    expected[8] = torch.tensor([list(COLOURS).index("white") + 1, SHAPES.index("triangle") + 1, 2])
    assert torch.equal(labels[0], expected)


def test_pretraining_fits_the_layout_and_touches_only_the_map_mlp(one_thread):
    model = small_model()
    captions = [caption(sample_scene(i)) for i in range(64)]
    ids, _ = tokenize(captions, model.cfg.caption.seq_len)
    model.gpt.cell_map.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = pretrain_cell_map(model, ids, captions, steps=1, seed=0)
    model.load_state_dict(before)
    result = pretrain_cell_map(
        model, ids, captions, steps=150, batch_size=64, lr=3e-3, seed=0, heldout=(ids, captions)
    )
    assert result["cell_map_pretrain_loss"] < 0.5 * first["cell_map_pretrain_loss"]
    assert result["heldout_layout_accuracy"] > 0.5  # on its own training captions
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"gpt.cell_map.{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")}
    assert not any(p.requires_grad for p in model.gpt.cell_map.parameters())  # flags restored


def test_pretraining_needs_a_three_by_three_map_and_matching_inputs():
    captions = ["a large red circle at the top left on a blue background"]
    ids, _ = tokenize(captions, 24)
    with pytest.raises(ValueError, match="condition_cell_map=2, condition_cell_code=16"):
        pretrain_cell_map(small_model(cells=2), ids, captions, steps=1)
    with pytest.raises(ValueError, match="one tokenized row per caption"):
        pretrain_cell_map(small_model(), ids, captions * 2, steps=1)
    regrouped = small_model(condition_cell_read="onehot", condition_cell_groups=(4, 9, 3))
    with pytest.raises(
        ValueError, match=r"one-hot groups \(4, 9, 3\), but the layout code's groups .* \(9, 4, 3\)"
    ):
        pretrain_cell_map(regrouped, ids, captions, steps=1)


def test_a_pretrained_map_stays_fixed_while_its_code_embedding_trains(tmp_path, one_thread):
    model_cfg = t2i_config(dim=32, n_layer=1, n_head=2, image_pos_embedding=True, condition_cell_map=3)
    cfg = TrainConfig(data=token_file(tmp_path, 16), vq=None, steps=3, batch_size=4, warmup_steps=1,
                      heldout_size=4, eval_every=100, log_every=1, lr=1e-3, cell_map_pretrain_steps=20,
                      cell_map_pretrain_batch=8)  # fmt: skip
    started, summary = train(model_cfg, cfg, tmp_path / "run", progress=False, stop_at=0)
    assert "heldout_layout_accuracy" in summary["cell_map_pretrain"]
    assert started.gpt.cell_embed.weight.abs().sum() == 0  # the map still adds nothing
    trained, _ = train(model_cfg, cfg, tmp_path / "run", progress=False)  # resumes: no second pretraining
    for i in (0, 2, 4):
        torch.testing.assert_close(
            trained.gpt.cell_map[i].weight, started.gpt.cell_map[i].weight, atol=0, rtol=0
        )
    assert trained.gpt.cell_embed.weight.abs().sum() > 0
    later = dataclasses.replace(cfg, init_from=str(tmp_path / "run" / "ckpt.pt"))  # a later stage
    continued, summary = train(model_cfg, later, tmp_path / "later", progress=False)
    assert "cell_map_pretrain" not in summary
    for i in (0, 2, 4):
        torch.testing.assert_close(
            continued.gpt.cell_map[i].weight, started.gpt.cell_map[i].weight, atol=0, rtol=0
        )
    assert not torch.equal(continued.gpt.cell_embed.weight, trained.gpt.cell_embed.weight)


def test_cell_embed_may_start_from_a_random_init(tmp_path, one_thread):
    model_cfg = t2i_config(dim=32, n_layer=1, n_head=2, image_pos_embedding=True, condition_cell_map=3)
    cfg = TrainConfig(data=token_file(tmp_path, 8), vq=None, steps=1, batch_size=4, heldout_size=4,
                      cell_embed_init=0.5)  # fmt: skip
    started, _ = train(model_cfg, cfg, tmp_path / "run", progress=False, stop_at=0)
    assert started.gpt.cell_embed.weight.std().item() == pytest.approx(0.5, rel=0.2)
