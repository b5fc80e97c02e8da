"""LlamaGen GPT + VQ: official key layout, 2D RoPE, the project's condition variants, cached
decoding == full forward (checkpoint loading: tests/test_llamagen_loading.py).

Small models are built here and saved in the official containers (nothing is downloaded).
The official names/shapes come from tests/fixtures/llamagen_official_keys.json, written from
reading FoundationVision/LlamaGen's gpt.py and vq_model.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmaccel.image_ar.llamagen import (
    GPT,
    GPT_PRESETS,
    VQ_PRESETS,
    GPTConfig,
    VQConfig,
    VQModel,
    apply_rope_2d,
    condition_padding_mask,
    gpt_preset,
    rope_2d_table,
)
from mmaccel.image_ar.llamagen.gpt import onehot_code
from mmaccel.models import CausalLM, as_causal_lm

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "llamagen_official_keys.json").read_text())
GPT_FIELDS = set(GPTConfig.__dataclass_fields__)


def gpt_config(name: str) -> GPTConfig:
    """An official config from the fixture; ``+pos`` adds the project's image-position embedding,
    ``+gate`` its condition RoPE gate, ``+cell`` its 3 x 3 condition cell map, ``+onehot`` that
    map read as one-hot groups (9, 4, 3)."""
    base, *variants = name.split("+")
    fields = {k: v for k, v in FIXTURE["configs"][base].items() if k in GPT_FIELDS}
    return GPTConfig(**fields, image_pos_embedding="pos" in variants, condition_rope_gate="gate" in variants,
                     condition_cell_map=3 if "cell" in variants else 0,
                     condition_cell_read="onehot" if "onehot" in variants else "sigmoid",
                     condition_cell_groups=(9, 4, 3) if "onehot" in variants else ())  # fmt: skip


def vq_config() -> VQConfig:
    c = dict(FIXTURE["configs"]["vq"])
    c["encoder_ch_mult"], c["decoder_ch_mult"] = tuple(c["encoder_ch_mult"]), tuple(c["decoder_ch_mult"])
    return VQConfig(**c)


def random_gpt(name: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(gpt_config(name)).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial norms and head, so every tensor matters
            p.normal_(0.0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


def random_vq(seed: int = 0) -> VQModel:
    torch.manual_seed(seed)
    model = VQModel(vq_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.05)
    return model


def condition(model: GPT, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if model.cfg.model_type == "c2i":
        return torch.randint(0, model.cfg.num_classes, (batch,), generator=g)
    return torch.randn(batch, model.cfg.caption_len, model.cfg.caption_dim, generator=g)


# --- official layout ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt_c2i", "gpt_t2i", "vq"])
def test_state_dict_names_and_shapes_equal_official(name):
    model = random_vq() if name == "vq" else random_gpt(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official = FIXTURE["state_dicts"][name]
    assert sorted(set(ours) - set(official)) == [] and sorted(set(official) - set(ours)) == []
    assert ours == official


def test_presets_are_the_official_table():
    sizes = {k: (c.n_layer, c.n_head, c.dim) for k, c in GPT_PRESETS.items()}
    assert sizes["GPT-B"] == (12, 12, 768) and sizes["GPT-L"] == (24, 16, 1024)
    assert sizes["GPT-XL"] == (36, 20, 1280) and sizes["GPT-XXL"] == (48, 24, 1536)
    assert sizes["GPT-3B"] == (24, 32, 3200) and sizes["GPT-XXXL"] == (48, 40, 2560)
    assert GPT_PRESETS["GPT-B"].ffn_hidden_dim == 2048  # int(8 * 768 / 3) = 2048
    assert GPT_PRESETS["GPT-XL"].ffn_hidden_dim == 3584  # int(8 * 1280 / 3) = 3413 -> 3584
    t2i = gpt_preset("GPT-XL", "t2i")
    assert (t2i.cls_token_num, t2i.max_seq_len, t2i.grid_size) == (120, 376, 16)
    assert VQ_PRESETS["VQ-16"].downsample == 16 and VQ_PRESETS["VQ-tiny"].downsample == 4
    with pytest.raises(ValueError, match="GPT-B"):
        gpt_preset("GPT-Q")


def test_protocol_attributes():
    model = random_gpt("gpt_t2i")
    assert isinstance(model, CausalLM) and as_causal_lm(model) is model
    assert (model.vocab_size, model.max_seq_len, model.grid_width, model.family) == (
        64,
        8 + 16,
        4,
        "llamagen",
    )


# --- 2D RoPE ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt_c2i", "gpt_t2i"])
def test_rope_2d_matches_an_independent_derivation(name):
    cfg = gpt_config(name)
    table = rope_2d_table(cfg).double()
    L, G, D = cfg.cls_token_num, cfg.grid_size, cfg.head_dim
    assert table.shape == (L + G * G, D // 2, 2)
    assert torch.all(table[:L] == 0)  # official condition rows: cos = 0 AND sin = 0
    for r, c in [(0, 0), (0, 3), (2, 1), (3, 3)]:
        # pair j < D/4 turns with the row, the next D/4 pairs with the column, f_j = base^(-4j/D)
        angles = [r * cfg.rope_base ** (-4 * j / D) for j in range(D // 4)]
        angles += [c * cfg.rope_base ** (-4 * j / D) for j in range(D // 4)]
        expected = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)
        torch.testing.assert_close(table[L + r * G + c], expected, atol=1e-6, rtol=0)


def test_rope_pairs_are_interleaved_complex_rotations():
    cfg = gpt_config("gpt_c2i")
    pos_BT = torch.tensor([[0, 1 + 2 * 4 + 3]])  # a condition slot, then image token (2, 3)
    x_BHTD = torch.randn(1, 2, 2, cfg.head_dim)
    rope_BTP2 = rope_2d_table(cfg)[pos_BT]
    out = apply_rope_2d(x_BHTD, rope_BTP2)
    assert torch.all(out[:, :, 0] == 0)  # condition q/k are zeroed by the official table
    z = torch.view_as_complex(x_BHTD[:, :, 1].reshape(1, 2, -1, 2).contiguous())
    w = torch.polar(torch.ones(()), torch.atan2(rope_BTP2[0, 1, :, 1], rope_BTP2[0, 1, :, 0]))
    torch.testing.assert_close(out[:, :, 1], torch.view_as_real(z * w).flatten(-2), atol=1e-5, rtol=1e-5)


def test_condition_rope_gate_starts_as_the_official_model_and_learns():
    """At g = 0 the gated model is the official one (same weights, same logits); g != 0 lets
    image tokens tell caption slots apart, and g gets a gradient at 0."""
    official, gated = random_gpt("gpt_t2i+pos"), GPT(gpt_config("gpt_t2i+pos+gate")).eval()
    gated.load_state_dict({**official.state_dict(), "condition_rope_gate": torch.zeros(())})
    assert "condition_rope_gate" not in official.state_dict()
    cond, image_BN = condition(official), torch.randint(0, official.vocab_size, (2, 6))
    with torch.no_grad():
        assert torch.equal(gated.full_logits(cond, image_BN), official.full_logits(cond, image_BN))
    loss = gated.full_logits(cond, image_BN).logsumexp(-1).sum()
    loss.backward()
    assert gated.condition_rope_gate.grad.abs() > 0
    with torch.no_grad():
        gated.condition_rope_gate.fill_(1.0)
        assert not torch.allclose(gated.full_logits(cond, image_BN), official.full_logits(cond, image_BN))


def test_condition_cell_map_starts_as_the_base_model_and_reaches_tokens_by_cell():
    """A zero-output map gives the base model's logits; its code -> vector map gets a gradient;
    a non-zero map changes the logits, and an image token's input gains the vector of the cell
    of the token it predicts (the next raster position)."""
    base, mapped = random_gpt("gpt_t2i+pos"), GPT(gpt_config("gpt_t2i+pos+cell")).eval()
    missing, unexpected = mapped.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("cell_map.", "cell_embed.")) for k in missing)
    assert not any(k.startswith(("cell_map.", "cell_embed.")) for k in base.state_dict())
    cond, image_BN = condition(base), torch.randint(0, base.vocab_size, (2, 6))
    with torch.no_grad():
        assert torch.equal(mapped.full_logits(cond, image_BN), base.full_logits(cond, image_BN))
    mapped.full_logits(cond, image_BN).logsumexp(-1).sum().backward()
    assert mapped.cell_embed.weight.grad.abs().sum() > 0
    with torch.no_grad():
        mapped.cell_embed.weight.normal_()
        assert not torch.allclose(mapped.full_logits(cond, image_BN), base.full_logits(cond, image_BN))
        side, L = mapped.grid_width, mapped.cls_token_num
        # predicting the top-left, top-right (from its left neighbour) and bottom-right tokens
        pos_BT = torch.tensor([[L, L + side - 2, L + side * side - 1]])
        emb_BTC = mapped.condition_embeddings(cond)[:1]
        tokens_BT = torch.zeros(1, 3, dtype=torch.long)
        cells_KC = mapped.cell_vectors(emb_BTC)[0]
        delta_BTC = mapped._image_embed(tokens_BT, pos_BT, cells_KC[None]) - mapped._image_embed(
            tokens_BT, pos_BT
        )
        torch.testing.assert_close(delta_BTC[0], cells_KC[[0, 2, 8]])


def test_condition_cell_lookahead_takes_the_cell_rows_below():
    """With lookahead 3 the token predicting row r reads the cell of row r + 3 (clamped)."""
    cfg = gpt_config("gpt_t2i+pos+cell")
    model = GPT(dataclasses.replace(cfg, block_size=256, condition_cell_lookahead=3)).eval()  # a 16 x 16 grid
    side, L = model.grid_width, model.cls_token_num
    cells_KC = torch.randn(1, 9, model.cfg.dim)
    # predicting (row 2, col 0) -> row 5 (cell 0); (3, 0) -> row 6 (cell 3); (10, 15) -> 13 (cell 8);
    # (14, 6) -> 17, clamped to row 15 (cell 7)
    next_T = torch.tensor([2 * side, 3 * side, 10 * side + 15, 14 * side + 6])
    pos_BT = (L + next_T - 1)[None]
    tokens_BT = torch.zeros(1, 4, dtype=torch.long)
    with torch.no_grad():
        delta_BTC = model._image_embed(tokens_BT, pos_BT, cells_KC) - model._image_embed(tokens_BT, pos_BT)
    torch.testing.assert_close(delta_BTC[0], cells_KC[0, [0, 3, 8, 7]])
    with pytest.raises(ValueError, match="condition_cell_lookahead must be an integer >= 0"):
        dataclasses.replace(cfg, condition_cell_lookahead=-1)


def test_condition_cell_map_size_is_checked():
    with pytest.raises(ValueError, match="condition_cell_map must be an integer in"):
        GPTConfig(dim=32, n_layer=1, n_head=2, block_size=256, condition_cell_map=17)


def test_onehot_code_lights_one_entry_per_group_and_empties_a_cell():
    groups = (9, 4, 3)
    torch.manual_seed(0)
    logits_BKX = torch.randn(2, 9, 16)
    logits_BKX[:, :, 0] = -9.0  # no cell empty ...
    logits_BKX[1, 4, 0] = 9.0  # ... except cell 4 of the second caption
    logits_BKX[0, 2, 9:13] = 5.0  # a four-way tie in cell 2's shape group: the first wins
    code_BKX = onehot_code(logits_BKX, groups)
    for j, (part, hot) in enumerate(
        zip(logits_BKX.split(groups, -1), code_BKX.split(groups, -1), strict=True)
    ):
        assert torch.equal(hot.sum(-1), torch.ones(2, 9))
        expected = part.argmax(-1)
        expected[1, 4] = 0
        assert torch.equal(hot.argmax(-1), expected), f"group {j}"
    assert code_BKX[0, 2, 9:13].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_onehot_cell_read_feeds_one_hot_codes_and_is_checked():
    model = random_gpt("gpt_t2i+pos+cell+onehot")
    with torch.no_grad():
        model.cell_embed.weight.normal_()
        emb_BLC = model.condition_embeddings(condition(model))
        codes_BKX = onehot_code(model.cell_codes(emb_BLC), (9, 4, 3))
        torch.testing.assert_close(model.cell_vectors(emb_BLC), model.cell_embed(codes_BKX))
    cfg = gpt_config("gpt_t2i+pos+cell")
    with pytest.raises(ValueError, match="condition_cell_read must be 'sigmoid' or 'onehot', got 'softmax'"):
        dataclasses.replace(cfg, condition_cell_read="softmax")
    with pytest.raises(ValueError, match=r"summing to condition_cell_code=16, got \(9, 4\)"):
        dataclasses.replace(cfg, condition_cell_read="onehot", condition_cell_groups=[9, 4])
    with pytest.raises(ValueError, match="needs condition_cell_groups"):
        dataclasses.replace(cfg, condition_cell_read="onehot")


# --- cached decoding through the protocol ---------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["gpt_c2i", "gpt_t2i", "gpt_t2i+pos", "gpt_t2i+pos+gate", "gpt_t2i+pos+cell", "gpt_t2i+pos+cell+onehot"],
)
def test_cached_decoding_equals_full_logits(name):
    model = random_gpt(name)
    B, N, L = 2, 10, model.cls_token_num
    cond = condition(model, B)
    image_BN = torch.randint(0, model.vocab_size, (B, N), generator=torch.Generator().manual_seed(2))
    cond_valid_BL = None
    if model.cfg.model_type == "t2i":  # left-padded caption in row 0, as the official sampler
        cond_valid_BL = torch.ones(B, L, dtype=torch.bool)
        cond_valid_BL[0, :3] = False
        cond = cond * F.pad(cond_valid_BL, (0, cond.shape[1] - L), value=True)[..., None]
    with torch.no_grad():
        full_BTV = model.full_logits(cond, image_BN, cond_valid_BL)
        assert full_BTV.shape == (B, N + 1, model.vocab_size)
        cache = model.new_cache(B, model.max_seq_len)
        cond_embs_BLC = model.condition_embeddings(cond)

        def mask(T, slots_BT):
            m = cache.attn_mask(T)
            return m if cond_valid_BL is None else condition_padding_mask(m, slots_BT, cond_valid_BL)

        # one block holding the condition and the first 3 image tokens
        T = L + 3
        tokens_BT = torch.cat([torch.zeros(B, L, dtype=torch.long), image_BN[:, :3]], dim=1)
        slots_BT = cache.slots(T)
        logits_BTV = model.forward(tokens_BT, slots_BT, cache, slots_BT, mask(T, slots_BT), cond_embs_BLC)
        assert torch.all(cache.lens_B == 0)  # forward writes slots, never commits
        torch.testing.assert_close(logits_BTV[:, L - 1 :], full_BTV[:, :4], atol=1e-4, rtol=1e-4)
        cache.commit(torch.full((B,), T))
        for i in range(3, N):
            slots_BT = cache.slots(1)
            step = (image_BN[:, i : i + 1], slots_BT, cache, slots_BT, mask(1, slots_BT))
            if model.cfg.condition_cell_map:  # its image steps need the condition too
                with pytest.raises(ValueError, match="needs cond_embs_BLC in every forward"):
                    model.forward(*step)
                step_BTV = model.forward(*step, cond_embs_BLC)
                cells_BKC = model.cell_vectors(cond_embs_BLC)  # made once, as ConditionedGPT does
                torch.testing.assert_close(model.forward(*step, None, cells_BKC), step_BTV, atol=0, rtol=0)
            else:
                step_BTV = model.forward(*step)
            torch.testing.assert_close(step_BTV[:, 0], full_BTV[:, i + 1], atol=1e-4, rtol=1e-4)
            cache.commit(torch.ones(B))

        # prefill_condition is the same first step
        cache2 = model.new_cache(B, model.max_seq_len)
        first_BV = model.prefill_condition(cond_embs_BLC, cache2, cond_valid_BL)
        torch.testing.assert_close(first_BV, full_BTV[:, 0], atol=1e-4, rtol=1e-4)
        assert torch.all(cache2.lens_B == L)


@pytest.mark.parametrize("name", ["gpt_c2i", "gpt_t2i"])
def test_null_condition_is_the_cfg_dropout_input(name):
    model = random_gpt(name)
    cond = condition(model, 3)
    with torch.no_grad():
        dropped = model.condition_embeddings(cond, drop_B=torch.tensor([True, False, True]))
        null = model.condition_embeddings(model.null_condition(3))
        kept = model.condition_embeddings(cond)
    assert dropped.shape == (3, model.cls_token_num, model.cfg.dim)
    torch.testing.assert_close(dropped[[0, 2]], null[[0, 2]])
    torch.testing.assert_close(dropped[1], kept[1])
    if name == "gpt_c2i":
        assert torch.all(model.null_condition(3) == model.cfg.num_classes)
    else:
        assert torch.equal(model.null_condition(2)[1], model.cls_embedding.uncond_embedding)


# --- VQ -------------------------------------------------------------------------------------


def test_vq_encode_decode_shapes():
    model = random_vq()
    with torch.no_grad():
        codes_BN = model.encode(torch.rand(3, 3, 16, 24) * 2 - 1)
        assert codes_BN.shape == (3, 8 * 12) and codes_BN.dtype == torch.long
        assert model.decode_codes(codes_BN, grid=(8, 12)).shape == (3, 3, 16, 24)
        tiny = VQModel(VQ_PRESETS["VQ-tiny"]).eval()
        codes = tiny.encode(torch.rand(1, 3, 64, 64) * 2 - 1)
        assert codes.shape == (1, 256) and int(codes.max()) < 1024
        assert tiny.decode_codes(codes).shape == (1, 3, 64, 64)


def test_codebook_lookup_is_the_nearest_l2_normalised_code():
    model = random_vq()
    with torch.no_grad():  # rows of very different norms: only the direction may matter
        model.quantize.embedding.weight.mul_(torch.rand(64, 1) * 10 + 0.1)
        z_BDHW = torch.randn(2, 8, 3, 5)
        idx_BN, zq_BDHW = model.quantize.nearest(z_BDHW)
        z_ND = F.normalize(z_BDHW.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
        e_KD = F.normalize(model.quantize.embedding.weight, dim=-1)
        assert torch.equal(idx_BN.reshape(-1), torch.cdist(z_ND, e_KD).argmin(-1))
        torch.testing.assert_close(zq_BDHW.permute(0, 2, 3, 1).reshape(-1, 8), e_KD[idx_BN.reshape(-1)])
        torch.testing.assert_close(model.quantize.lookup(idx_BN, (3, 5)), zq_BDHW)
        img = torch.rand(1, 3, 16, 16) * 2 - 1
        assert torch.equal(model.encode(img), model.quantize.nearest(model.encode_latent(img))[0])
