"""Shapes-T2I model: caption tokenizer/encoder, weights file round trip, key errors, training resume."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmaccel.image_ar.caption_encoder import (
    PAD_ID,
    VOCAB,
    CaptionEncoder,
    CaptionEncoderConfig,
    pretrain,
    tokenize,
)
from mmaccel.image_ar.eval_t2i import sample_tokens
from mmaccel.image_ar.shapes import caption, object_token_mask, parse_caption, reveal_token_mask, sample_scene
from mmaccel.image_ar.t2i_batches import batch_indices, cells_only, object_weights
from mmaccel.image_ar.t2i_model import ShapesT2IConfig, ShapesT2IModel, t2i_config
from mmaccel.image_ar.train_t2i import TrainConfig, load_config, load_tokens, make_optimizer, train

from .conftest import random_t2i_model, token_file

PROMPT = "a large red circle at the top left on a blue background"


def tiny_model(seed: int = 0) -> ShapesT2IModel:
    torch.manual_seed(seed)
    model = ShapesT2IModel(t2i_config(dim=32, n_layer=2, n_head=2)).eval()
    with torch.no_grad():  # the official init zeroes the head; make every tensor matter
        model.gpt.output.weight.normal_(0.0, 0.5)
    return model


# --- caption tokenizer and encoder -------------------------------------------------------------


def test_tokenizer_known_unknown_and_padding():
    ids_BL, dropped = tokenize(
        [PROMPT, "A LARGE, red circle!! at the Top-Left, on a blue zebra background."], 24
    )
    assert ids_BL.shape == (2, 24)
    words = PROMPT.split()
    assert ids_BL[0, : len(words)].tolist() == [VOCAB.index(w) for w in words]
    assert (ids_BL[0, len(words) :] == PAD_ID).all()
    assert dropped[0] == [] and dropped[1] == ["zebra"]
    assert torch.equal(ids_BL[1], ids_BL[0])  # case and punctuation do not matter


def test_tokenizer_reports_words_past_the_slot_limit():
    ids_BL, dropped = tokenize(["red " * 6 + "blue"], 5)
    assert ids_BL.shape == (1, 5) and dropped == [["red", "blue"]]


def test_every_grammar_caption_fits_the_condition_slots():
    longest = max(len(caption(sample_scene(i)).split()) for i in range(3000))
    assert longest <= t2i_config().gpt.cls_token_num
    assert all(w in VOCAB for i in range(200) for w in caption(sample_scene(i)).split())


def test_every_encoder_slot_sees_every_word():
    """The GPT averages condition slots (zero RoPE rows), so each slot must carry the caption."""
    torch.manual_seed(0)
    enc = CaptionEncoder(CaptionEncoderConfig()).eval()
    a, _ = enc.encode([PROMPT])
    b, _ = enc.encode([PROMPT.replace("red", "green")])  # one word changed
    c, _ = enc.encode(
        ["a large red circle at the top left on a blue background".replace("top left", "left top")]
    )
    assert a.shape == (1, 24, 128)
    assert ((a - b).abs().amax(-1) > 1e-4).all()  # every slot, padding included, changed
    assert ((a - c).abs().amax(-1) > 1e-4).all()  # word order reaches every slot too


def test_pretraining_makes_the_slot_mean_readable_and_keeps_frozen_flags(one_thread):
    torch.manual_seed(0)
    enc = CaptionEncoder(CaptionEncoderConfig(n_layer=1)).requires_grad_(False)
    captions = [caption(sample_scene(i)) for i in range(64)]
    first = pretrain(enc, captions, steps=1, batch_size=32)
    later = pretrain(enc, captions, steps=40, batch_size=32, lr=3e-3)
    assert later["loss"] < 0.85 * first["loss"]
    assert not any(p.requires_grad for p in enc.parameters())


def test_config_must_agree_on_slots_and_width():
    cfg = t2i_config()
    with pytest.raises(ValueError, match="cls_token_num"):
        ShapesT2IConfig(cfg.gpt, CaptionEncoderConfig(seq_len=20))
    with pytest.raises(ValueError, match="caption_dim"):
        ShapesT2IConfig(cfg.gpt, CaptionEncoderConfig(dim=64, n_head=4))


# --- model ---------------------------------------------------------------------------------------


def test_teacher_forced_forward_matches_the_gpt_reference_and_cfg_dropout():
    model = tiny_model()
    ids_BL, _ = model.tokenize([PROMPT, "a small black square at the center on a white background"])
    tokens_BN = torch.randint(0, 1024, (2, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits_BNV = model(ids_BL, tokens_BN)
        ref_BNV = model.gpt.full_logits(model.caption_encoder(ids_BL), tokens_BN)[:, :256]
        torch.testing.assert_close(logits_BNV, ref_BNV, atol=1e-4, rtol=1e-4)
        dropped_BNV = model(ids_BL, tokens_BN, drop_B=torch.tensor([True, False]))
        null_BNV = model.gpt.full_logits(model.gpt.null_condition(1), tokens_BN[:1])[:, :256]
        torch.testing.assert_close(dropped_BNV[:1], null_BNV, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(dropped_BNV[1:], logits_BNV[1:], atol=1e-5, rtol=1e-5)
        cond_BLC, unknown = model.encode_captions([PROMPT + " please"])
    assert cond_BLC.shape == (1, 24, 32) and unknown == [["please"]]
    assert model.null_cond_embs(3).shape == (3, 24, 32)


@pytest.mark.parametrize("gated", [False, True])
def test_save_load_roundtrip_gives_identical_logits(tmp_path, gated):
    model = tiny_model()
    if gated:  # a GPT-level parameter (not in a submodule) and the cell map must reach the file too
        torch.manual_seed(0)
        model = ShapesT2IModel(
            t2i_config(dim=32, n_layer=2, n_head=2, condition_rope_gate=True, condition_cell_map=3)
        ).eval()
        with torch.no_grad():
            model.gpt.output.weight.normal_(0.0, 0.5)
            model.gpt.condition_rope_gate.fill_(0.75)
            model.gpt.cell_embed.weight.normal_()  # the map adds nothing while this is zero
    with torch.no_grad():  # the file is fp16: make the weights exactly representable first
        for t in model.state_dict().values():
            t.copy_(t.half().float())
    path, json_path = model.save(tmp_path, {"command": "test"})
    assert path.name == "shapes_t2i.safetensors" and json.loads(json_path.read_text())["command"] == "test"
    sd = load_file(path)
    assert all(t.dtype == torch.float16 for t in sd.values())
    assert {"tok_embeddings.weight", "layers.0.attention.wqkv.weight", "cls_embedding.cap_proj.fc1.weight",
            "cls_embedding.uncond_embedding", "output.weight", "caption_encoder.word_embedding.weight"} <= set(sd)  # fmt: skip
    loaded = ShapesT2IModel.load(path)
    assert loaded.cfg == model.cfg
    assert ("condition_rope_gate" in sd) == gated and ("cell_map.2.weight" in sd) == gated
    assert ("cell_embed.weight" in sd) == gated
    ids_BL, _ = model.tokenize([PROMPT])
    tokens_BN = torch.randint(0, 1024, (1, 256))
    with torch.no_grad():
        assert torch.equal(loaded(ids_BL, tokens_BN), model(ids_BL, tokens_BN))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    path, _ = tiny_model().save(tmp_path / "m.safetensors")
    sd = load_file(path)
    del sd["caption_encoder.pos_embedding"]
    sd["layers.9.attention.wo.weight"] = torch.zeros(2, 2, dtype=torch.float16)
    save_file(sd, str(path))
    with pytest.raises(ValueError, match=r"missing keys: caption_encoder\.pos_embedding") as err:
        ShapesT2IModel.load(path)
    assert "unexpected keys: layers.9.attention.wo.weight" in str(err.value)
    path.with_suffix(".json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a shapes-t2i"):
        ShapesT2IModel.load(path)


def test_sampler_shapes_and_seed(one_thread):
    model = tiny_model()
    a = sample_tokens(model, [PROMPT], cfg_scale=2.0, seed=3)
    b = sample_tokens(model, [PROMPT], cfg_scale=2.0, seed=3)
    assert a.shape == (1, 256) and torch.equal(a, b) and int(a.max()) < 1024


# --- training ------------------------------------------------------------------------------------


def test_data_order_is_a_permutation_per_epoch():
    idx = torch.cat([batch_indices(p, 4, 10, seed=1) for p in range(0, 20, 4)])
    assert sorted(idx[:10].tolist()) == list(range(10)) and sorted(idx[10:].tolist()) == list(range(10))


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, one_thread):
    g = torch.Generator().manual_seed(0)
    captions = [caption(sample_scene(i)) for i in range(16)]
    torch.save({"tokens": torch.randint(0, 1024, (16, 256), generator=g).to(torch.int16), "captions": captions},
               tmp_path / "tokens.pt")  # fmt: skip
    model_cfg = t2i_config(dim=32, n_layer=1, n_head=2)
    cfg = TrainConfig(data=str(tmp_path / "tokens.pt"), vq=None, steps=3, batch_size=4, warmup_steps=1,
                      heldout_size=4, eval_every=2, log_every=1)  # fmt: skip
    full, summary = train(model_cfg, cfg, tmp_path / "full", progress=False)
    assert summary["step"] == 3 and summary["heldout_loss"] is not None
    _, first = train(model_cfg, cfg, tmp_path / "resumed", stop_at=2, progress=False)
    assert first["step"] == 2
    seen = []
    resumed, _ = train(
        model_cfg, cfg, tmp_path / "resumed", progress=False, on_step=lambda s, _: seen.append(s)
    )
    assert seen == [3]  # only the missing step ran
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
    lines = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3]


def test_data_may_be_several_token_files_used_in_order(tmp_path):
    g = torch.Generator().manual_seed(1)
    parts = [torch.randint(0, 1024, (n, 256), generator=g).to(torch.int16) for n in (3, 2)]
    for i, t in enumerate(parts):
        torch.save({"tokens": t, "captions": [f"c{i}{j}" for j in range(len(t))]}, tmp_path / f"{i}.pt")
    tokens, captions = load_tokens([str(tmp_path / "0.pt"), str(tmp_path / "1.pt")])
    assert torch.equal(tokens, torch.cat(parts)) and captions == ["c00", "c01", "c02", "c10", "c11"]
    torch.save({"tokens": parts[0][:, :16], "captions": ["a", "b", "c"]}, tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match="different sizes"):
        load_tokens([str(tmp_path / "0.pt"), str(tmp_path / "narrow.pt")])
    with pytest.raises(ValueError, match="empty list"):
        load_tokens([])
    (tmp_path / "cfg.json").write_text(json.dumps({"train": {"data": ["a.pt", "b.pt"]}}))
    assert load_config(tmp_path / "cfg.json")[1].data == ("a.pt", "b.pt")


def test_a_gated_stage_continues_an_ungated_run_and_moves_its_gate(tmp_path, one_thread):
    """init_from a checkpoint without ``condition_rope_gate``: the gate starts at ``gate_init``
    (at 0 the first logits are the old model's) and, with ``gate_lr_scale``, moves ~scale x
    further than lr would take it."""
    g = torch.Generator().manual_seed(0)
    base = dict(data=token_file(tmp_path, 16), vq=None, batch_size=4, warmup_steps=1, heldout_size=4,
                eval_every=100, log_every=1, lr=1e-3, min_lr_ratio=1.0)  # fmt: skip
    old, _ = train(t2i_config(dim=32, n_layer=1, n_head=2, image_pos_embedding=True), TrainConfig(steps=2, **base),
                   tmp_path / "old", progress=False)  # fmt: skip
    gated_cfg = t2i_config(dim=32, n_layer=1, n_head=2, image_pos_embedding=True, condition_rope_gate=True)
    cfg = TrainConfig(steps=3, init_from=str(tmp_path / "old" / "ckpt.pt"), gate_lr_scale=50.0, **base)
    gated, _ = train(gated_cfg, cfg, tmp_path / "new", progress=False, stop_at=0)
    assert gated.gpt.condition_rope_gate.item() == 0.0
    words, _ = old.tokenize([PROMPT])
    image_BN = torch.randint(0, 1024, (1, 256), generator=g)
    with torch.no_grad():
        assert torch.equal(gated(words, image_BN), old(words, image_BN))
    gated, _ = train(gated_cfg, cfg, tmp_path / "new", progress=False)
    assert 3 * 1e-3 < abs(gated.gpt.condition_rope_gate.item()) <= 3 * 50e-3 * 1.01
    started = train(
        gated_cfg, dataclasses.replace(cfg, gate_init=0.25), tmp_path / "new2", progress=False, stop_at=0
    )
    assert started[0].gpt.condition_rope_gate.item() == 0.25


def test_a_deeper_stage_starts_from_the_earlier_function_and_then_moves_its_new_layers(tmp_path, one_thread):
    """init_layers places the earlier stage's layers; new layers start with zero residual
    branches (the grown model's logits are the old model's) and then learn."""
    g = torch.Generator().manual_seed(0)
    base = dict(data=token_file(tmp_path, 16), vq=None, batch_size=4, warmup_steps=1, heldout_size=4,
                eval_every=100, log_every=1, lr=1e-3, min_lr_ratio=1.0)  # fmt: skip
    old, _ = train(t2i_config(dim=32, n_layer=2, n_head=2), TrainConfig(steps=2, **base), tmp_path / "old",
                   progress=False)  # fmt: skip
    deep_cfg = t2i_config(dim=32, n_layer=4, n_head=2)
    cfg = TrainConfig(
        steps=2, init_from=str(tmp_path / "old" / "ckpt.pt"), init_layers=(0, None, 1, None), **base
    )
    deep, _ = train(deep_cfg, cfg, tmp_path / "deep", progress=False, stop_at=0)
    for i, j in [(0, 0), (2, 1)]:
        for k, v in old.gpt.layers[j].state_dict().items():
            assert torch.equal(deep.gpt.layers[i].state_dict()[k], v), (i, k)
    for i in (1, 3):
        assert (
            not deep.gpt.layers[i].attention.wo.weight.any()
            and not deep.gpt.layers[i].feed_forward.w2.weight.any()
        )
        assert deep.gpt.layers[i].attention.wqkv.weight.std() > 0  # the rest is the usual init
    words, _ = old.tokenize([PROMPT])
    image_BN = torch.randint(0, 1024, (1, 256), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(deep(words, image_BN), old(words, image_BN), atol=1e-5, rtol=0)
    deep, _ = train(deep_cfg, cfg, tmp_path / "deep", progress=False)
    assert deep.gpt.layers[1].attention.wo.weight.abs().max() > 0
    assert deep.gpt.layers[3].feed_forward.w2.weight.abs().max() > 0
    for n, (bad, match) in enumerate([((0, 1, None), "3 entries; the model has n_layer=4"),
                       ((1, None, 0, None), "must each appear once, in order"),
                       ((0, None, 0, None), "must each appear once, in order"),
                       ((0, None, None, None), "must each appear once, in order")]):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            train(
                deep_cfg,
                dataclasses.replace(cfg, init_layers=bad),
                tmp_path / f"bad{n}",
                progress=False,
                stop_at=0,
            )
    with pytest.raises(ValueError, match="init_layers needs init_from"):
        train(
            deep_cfg,
            dataclasses.replace(cfg, init_from=None),
            tmp_path / "bad_none",
            progress=False,
            stop_at=0,
        )


def test_cell_map_parameters_get_their_own_learning_rate_scale():
    """``cell_map_lr_scale`` puts exactly the cell-map MLP in groups of their own (matrices
    decayed, biases not); the rest of the model keeps lr scale 1."""
    model = ShapesT2IModel(
        t2i_config(dim=32, n_layer=1, n_head=2, image_pos_embedding=True, condition_cell_map=3)
    )
    opt = make_optimizer(model, TrainConfig(cell_map_lr_scale=5.0, weight_decay=0.05))
    cell_ids = {id(p) for m in (model.gpt.cell_map, model.gpt.cell_embed) for p in m.parameters()}
    scaled = [g for g in opt.param_groups if g.get("lr_scale", 1.0) == 5.0]
    assert {id(p) for g in scaled for p in g["params"]} == cell_ids
    assert sorted(g["weight_decay"] for g in scaled) == [0.0, 0.05]
    others = [p for g in opt.param_groups if g.get("lr_scale", 1.0) == 1.0 for p in g["params"]]
    assert len(others) + len(cell_ids) == len(list(model.parameters()))


def test_object_weights_mark_the_patches_of_the_named_objects():
    text = "a large red square at the top left on a blue background"
    mask = object_token_mask(parse_caption(text)).reshape(16, 16)
    assert mask[:4, :4].all() and not mask[8:, :].any() and not mask[:, 8:].any()
    weights = object_weights([text, text], 3.0, 16)(torch.tensor([0, 1]))
    assert weights.shape == (2, 256) and set(weights.unique().tolist()) == {1.0, 3.0}
    assert torch.equal(weights[0] == 3.0, torch.from_numpy(mask.reshape(-1)))
    assert object_weights([text], 1.0, 16) is None
    with pytest.raises(ValueError, match="object_loss_weight must be > 0"):
        object_weights([text], 0.0, 16)


def test_a_weighted_loss_with_equal_weights_is_the_plain_loss():
    model = tiny_model()
    words, _ = model.tokenize([PROMPT, PROMPT])
    image_BN = torch.randint(0, 1024, (2, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model.loss(words, image_BN)
        torch.testing.assert_close(model.loss(words, image_BN, None, torch.full((2, 256), 2.5)), plain)
        weights = torch.ones(2, 256)
        weights[:, :128] = 0.0
        half = model.loss(words, image_BN, None, weights)
        assert not torch.allclose(half, plain)


def test_training_runs_with_an_object_weighted_loss(tmp_path, one_thread):
    cfg = TrainConfig(data=token_file(tmp_path, 8), vq=None, steps=2, batch_size=4, heldout_size=4,
                      eval_every=2, object_loss_weight=4.0)  # fmt: skip
    _, summary = train(t2i_config(dim=32, n_layer=1, n_head=2), cfg, tmp_path / "run", progress=False)
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["heldout_loss"])


def test_a_cells_only_row_sees_its_caption_only_through_the_cell_map():
    """Rows flagged ``cells_only_B`` get the null caption in the slots and their own caption's
    cell vectors; unflagged rows are the plain forward; with a zero cell map two different
    captions give a cells-only row the same logits."""
    other = "a small green square at the bottom right on a white background"
    image_BN = torch.randint(0, 1024, (2, 256), generator=torch.Generator().manual_seed(0))
    flags = torch.tensor([True, False])
    with torch.no_grad():
        model = random_t2i_model(3)
        words, _ = model.tokenize([PROMPT, PROMPT])
        plain, mixed = model(words, image_BN), model(words, image_BN, None, flags)
        torch.testing.assert_close(mixed[1], plain[1])
        assert not torch.allclose(mixed[0], plain[0])
        gpt, L = model.gpt, model.gpt.cls_token_num
        caption_BLK = model.caption_encoder(words)
        null = gpt.condition_embeddings(caption_BLK, torch.tensor([True, True]))
        cells = gpt.cell_vectors(gpt.condition_embeddings(caption_BLK))
        T = L + 255
        tokens_BT = torch.cat([image_BN.new_zeros(2, L), image_BN[:, :-1]], 1)
        mask_BTS = torch.ones(T, T, dtype=torch.bool).tril()[None].expand(2, T, T)
        by_hand = gpt(tokens_BT, torch.arange(T).expand(2, T), None, None, mask_BTS, null, cells)[:, L - 1 :]
        torch.testing.assert_close(mixed[0], by_hand[0])
        two, _ = model.tokenize([PROMPT, other])
        read = model(two, image_BN[:1].expand(2, -1), None, torch.tensor([True, True]))
        assert not torch.allclose(read[0], read[1])
        blind = random_t2i_model(3, cell_embed_std=0.0)(
            two, image_BN[:1].expand(2, -1), None, torch.tensor([True, True])
        )
        torch.testing.assert_close(blind[0], blind[1])
        with pytest.raises(ValueError, match="cells_only_B needs a model with condition_cell_map"):
            tiny_model()(words, image_BN, None, flags)


def test_cells_only_draws_rows_by_seed_and_step():
    assert cells_only(5, 32, 0.0, 1) is None
    rows = cells_only(5, 4096, 0.3, 1)
    assert torch.equal(rows, cells_only(5, 4096, 0.3, 1)) and not torch.equal(
        rows, cells_only(6, 4096, 0.3, 1)
    )
    assert 0.27 < rows.float().mean() < 0.33


def test_training_with_cell_only_rows_runs_and_bad_values_are_named(tmp_path, one_thread):
    base = dict(data=token_file(tmp_path, 8), vq=None, steps=2, batch_size=4, heldout_size=4, eval_every=2)
    mapped = t2i_config(dim=32, n_layer=1, n_head=2, condition_cell_map=3)
    _, summary = train(mapped, TrainConfig(cell_only_prob=0.5, **base), tmp_path / "run", progress=False)
    assert math.isfinite(summary["train_loss"])
    with pytest.raises(ValueError, match=r"cell_only_prob must be in \[0, 1\), got 1.0"):
        train(mapped, TrainConfig(cell_only_prob=1.0, **base), tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="cell_only_prob > 0 needs a model with condition_cell_map"):
        train(t2i_config(dim=32, n_layer=1, n_head=2), TrainConfig(cell_only_prob=0.3, **base),
              tmp_path / "bad2", progress=False)  # fmt: skip


def test_reveal_weights_cover_the_rows_above_each_object():
    """A large square at the bottom left fills token rows 9-15, columns 0-6 (as
    ``object_token_mask`` says); the reveal region is rows 6-9, columns 0-7."""
    text = "a large red square at the bottom left on a blue background"
    scene = parse_caption(text)
    obj = object_token_mask(scene).reshape(16, 16)
    rows, cols = obj.any(1).nonzero()[0], obj.any(0).nonzero()[0]
    reveal = reveal_token_mask(scene, 16, 3).reshape(16, 16)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[rows[0] - 3 : rows[0] + 1, : cols[-1] + 2] = True
    assert torch.equal(torch.from_numpy(reveal), expected) and (rows[0], cols[0], cols[-1]) == (9, 0, 6)
    weights = object_weights([text], 2.0, 16, reveal_weight=5.0)(torch.tensor([0])).view(16, 16)
    assert torch.equal(weights == 5.0, expected)
    assert torch.equal(weights == 2.0, torch.from_numpy(obj) & ~expected)
    assert (weights == 1.0).sum() == 256 - (expected | torch.from_numpy(obj)).sum()
    with pytest.raises(ValueError, match="reveal_loss_weight must be > 0, got -1.0"):
        object_weights([text], 1.0, 16, reveal_weight=-1.0)
    with pytest.raises(ValueError, match="rows_above must be >= 0"):
        reveal_token_mask(scene, 16, -1)
