"""Training the Fashion-MNIST VARs: tokens are cached once, the loss falls, resuming is exact, the fp16
export loads through the official-layout loader, class consistency samples through the engine, and
the presets keep the refiner at most a quarter of the drafter's cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmaccel.image_ar.checkpoint import save_safetensors
from mmaccel.image_ar.recipe import read_recipe, stage_config
from mmaccel.image_ar.var import VAR, VQVAE, VQVAEConfig, load_var
from mmaccel.image_ar.var import fashion_tokens as ft
from mmaccel.image_ar.var.fashion_vq import config_from_dict, config_to_dict
from mmaccel.image_ar.var.train_var import (
    CHECKPOINT,
    CONFIG_KEYS,
    PRESETS,
    RECIPE,
    TrainConfig,
    class_consistency,
    cost,
    evaluate_loss,
    export,
    load_fashion_var,
    main,
    read_config,
    train,
    var_config,
)
from tests.test_fashion_data import write_fake_dataset

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8)
TINY_VQ = VQVAEConfig(vocab_size=32, z_channels=4, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, in_channels=1,
                      using_sa=False, using_mid_sa=True, norm_groups=4, patch_nums=PATCH_NUMS)  # fmt: skip
TINY_MODEL = {"depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 10, "drop_path_rate": 0.0}
TINY_TRAIN = TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=2, eval_size=8, eval_every=3, log_every=1,
                         checkpoint_minutes=0.0)  # fmt: skip
CLASSIFIER = Path(__file__).resolve().parents[1] / "image_ar" / "weights" / "fashion_classifier.safetensors"


@pytest.fixture(autouse=True)
def _threads(one_thread):
    """Tiny models: one thread is far faster than two on a busy 2-core machine."""
    yield


@pytest.fixture(scope="module")
def vqvae():
    torch.manual_seed(0)
    return VQVAE(TINY_VQ).eval()


def class_tokens(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens a class fixes at most positions (learnable in a few steps, unlike pure noise)."""
    g = torch.Generator().manual_seed(seed)
    labels_N = torch.randint(0, 10, (n,), generator=g)
    L = sum(pn * pn for pn in PATCH_NUMS)
    tokens_NL = (labels_N[:, None] * 3 + torch.arange(L) * 7) % TINY_VQ.vocab_size
    noise_NL = torch.rand(n, L, generator=g) < 0.1
    tokens_NL = torch.where(noise_NL, torch.randint(0, TINY_VQ.vocab_size, (n, L), generator=g), tokens_NL)
    return tokens_NL.to(torch.int16), labels_N


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "loss.log").read_text().splitlines()]


def test_a_few_steps_lower_the_loss(tmp_path, vqvae):
    data = class_tokens(64)
    cfg = TrainConfig(steps=30, batch_size=16, lr=3e-2, warmup_steps=2, eval_size=32, eval_every=100,
                      checkpoint_minutes=100.0)  # fmt: skip
    var_cfg = var_config(TINY_MODEL, TINY_VQ)
    torch.manual_seed(cfg.seed)
    before = evaluate_loss(VAR(var_cfg), vqvae, *data)
    model, record = train(var_cfg, cfg, tmp_path, vqvae, data, class_tokens(16, seed=1), progress=False)
    assert record["finished"] and record["step"] == 30 and not model.training
    assert record["train_loss"] < 0.6 * before, (before, record)
    assert record["val_loss"] < 0.6 * before, (before, record)


def test_resume_continues_exactly(tmp_path, vqvae):
    data, var_cfg = class_tokens(24), var_config(TINY_MODEL, TINY_VQ)
    _, first = train(var_cfg, TINY_TRAIN, tmp_path / "run", vqvae, data, max_steps=4, progress=False)
    assert first["step"] == 4 and not first["finished"]
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 4
    model, last = train(var_cfg, TINY_TRAIN, tmp_path / "run", vqvae, data, progress=False)
    assert last["finished"]
    assert [m["step"] for m in logged(tmp_path / "run") if "loss" in m] == [1, 2, 3, 4, 5, 6]
    # an uninterrupted run ends in the same weights (data order, label drops, optimizer state)
    straight, record = train(var_cfg, TINY_TRAIN, tmp_path / "straight", vqvae, data, progress=False)
    for (name, a), b in zip(model.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert last["train_loss"] == record["train_loss"]
    with pytest.raises(ValueError, match="another config"):
        train(var_cfg, TrainConfig(steps=6, lr=1e-4), tmp_path / "run", vqvae, data, progress=False)


def test_export_is_fp16_and_loads_through_load_var(tmp_path):
    torch.manual_seed(0)
    model = VAR(var_config(TINY_MODEL, TINY_VQ)).eval()
    weights = tmp_path / "var.safetensors"
    export(model, weights, {"command": "test"}, "fashion_var_test")
    assert json.loads(weights.with_suffix(".json").read_text()) == {"command": "test"}
    assert all(t.dtype == torch.float16 for t in load_file(weights).values() if t.is_floating_point())
    assert read_config(weights) == model.cfg
    loaded = load_var(weights, read_config(weights), vqvae=TINY_VQ)  # strict official-layout load
    assert not loaded.training and torch.equal(loaded.lvl_1L, model.lvl_1L)
    assert isinstance(load_fashion_var(weights), VAR)
    model.half().float()  # what the fp16 file holds
    labels_B, x_BLCv = torch.tensor([1, 7]), torch.randn(2, model.L - 1, TINY_VQ.z_channels)
    with torch.no_grad():
        assert torch.equal(loaded(labels_B, x_BLCv), model(labels_B, x_BLCv))
    with pytest.raises(FileNotFoundError, match="train_var"):
        load_fashion_var(tmp_path / "absent.safetensors")


def test_presets_fit_the_size_limits_and_the_refiner_costs_at_most_a_quarter():
    vq_recipe = json.loads((RECIPE.parent / "fashion_vqvae_recipe.json").read_text())
    vq_cfg = config_from_dict(vq_recipe["base"]["model"])
    recipe = read_recipe(RECIPE)
    large, small = (var_config(stage_config(recipe, f"fashion_var_{p}", CONFIG_KEYS)["model"], vq_cfg)
                    for p in ("large", "small"))  # fmt: skip
    assert (large.depth, large.embed_dim, small.depth, small.embed_dim) == (8, 256, 4, 128)
    assert {k: getattr(large, k) for k in PRESETS["large"]} == PRESETS["large"]
    assert large.num_classes == small.num_classes == 10 and large.cond_drop_rate == 0.1
    c_large, c_small = cost(large), cost(small)
    assert c_small["macs_per_token"] <= c_large["macs_per_token"] / 4
    assert c_small["params"] <= c_large["params"] / 4
    assert c_large["fp16_mb"] < 20 and c_small["fp16_mb"] < 3
    for p in ("large", "small"):
        assert stage_config(recipe, f"fashion_var_{p}", CONFIG_KEYS)["train"]["steps"] > 0


def tiny_vq_file(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    sd = {k: v.half() for k, v in VQVAE(TINY_VQ).state_dict().items()}
    save_safetensors(sd, path, {"format": "pt", "vqvae_config": json.dumps(config_to_dict(TINY_VQ))})
    return path


def test_tokens_are_cached_per_vqvae(tmp_path, monkeypatch):
    from mmaccel.image_ar.fashion.data import load_split, to_float
    from mmaccel.image_ar.var.fashion_vq import load_fashion_vqvae

    write_fake_dataset(tmp_path / "data", n_train=12, n_test=5)
    vq_path = tiny_vq_file(tmp_path / "vq.safetensors")
    where = (tmp_path / "cache", tmp_path / "data")
    tokens_NL, labels_N = ft.fashion_tokens("train", vq_path, *where, progress=False)
    assert tokens_NL.shape == (12, 155) and tokens_NL.dtype == torch.int16
    assert labels_N.tolist()[:3] == [0, 1, 2]
    images = load_split("train", tmp_path / "data").images
    with torch.no_grad():
        ref = load_fashion_vqvae(vq_path).img_to_idxBl(to_float(images.copy()))
    assert all(torch.equal(a, b) for a, b in zip(ft.split_scales(tokens_NL, PATCH_NUMS), ref, strict=True))

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized again")

    with monkeypatch.context() as m:  # the same weights: read from the cache
        m.setattr(ft, "tokenize_images", refuse)
        again, _ = ft.fashion_tokens("train", vq_path, *where, progress=False)
    assert torch.equal(again, tokens_NL)
    other = tiny_vq_file(tmp_path / "vq.safetensors", seed=1)  # other weights: made again
    remade, _ = ft.fashion_tokens("train", other, *where, progress=False)
    cached = torch.load(ft.cache_path("train", tmp_path / "cache"), weights_only=True)
    assert torch.equal(cached["tokens"], remade) and cached["vqvae_sha256"] == ft.file_digest(other)


@pytest.mark.skipif(not CLASSIFIER.exists(), reason="needs the shipped Fashion classifier")
def test_class_consistency_samples_every_class_through_the_engine(vqvae):
    torch.manual_seed(0)
    large, small = (VAR(var_config({**TINY_MODEL, "depth": d}, TINY_VQ)).eval() for d in (2, 1))
    ar = class_consistency(large, vqvae, per_class=2, cfg=1.5, batch=8)
    code = class_consistency(large, vqvae, per_class=1, cfg=1.5, refiner=small, draft_scales=3)
    assert ar["n"] == 20 and code["n"] == 10 and 0 <= ar["accuracy"] <= 1 and code["draft_scales"] == 3
    assert ar == class_consistency(large, vqvae, per_class=2, cfg=1.5, batch=8)  # seeded


@pytest.mark.skipif(not CLASSIFIER.exists(), reason="needs the shipped Fashion classifier")
def test_main_tokenizes_trains_exports_and_evaluates(tmp_path):
    write_fake_dataset(tmp_path / "data", n_train=16, n_test=6)
    vq_path = tiny_vq_file(tmp_path / "vq.safetensors")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": TINY_MODEL, "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1,
                                                                  "eval_size": 4, "vqvae": str(vq_path)}}))  # fmt: skip
    weights = tmp_path / "w" / "var.safetensors"
    main(["--config", str(config), "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "run"),
          "--cache-dir", str(tmp_path / "cache"), "--weights", str(weights), "--steps", "3", "--threads", "1",
          "--eval-cfg", "2", "--eval-per-class", "1"])  # fmt: skip
    record = json.loads(weights.with_suffix(".json").read_text())
    assert (
        record["steps"] == 3 and record["config"]["train"]["steps"] == 3 and "--steps 3" in record["command"]
    )
    assert (
        record["final_val_loss"] > 0
        and record["train_seconds"] >= 0
        and record["data"] == {"train": 16, "val": 6}
    )
    assert record["class_consistency"][0]["cfg"] == 2.0 and record["class_consistency"][0]["n"] == 10
    assert record["best_cfg"] == 2.0
    assert record["cost"]["params"] == sum(p.numel() for p in load_fashion_var(weights).parameters())
