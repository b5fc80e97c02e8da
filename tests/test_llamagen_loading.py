"""LlamaGen checkpoints: GPT and VQ saved in every official container (DDP ``model`` key, raw
FSDP, DeepSpeed ``module``, ``state_dict``, a stray ``freqs_cis``, fp16, safetensors) load back
to identical outputs; damaged files and wrong keys give errors that name them."""

from __future__ import annotations

import argparse
import dataclasses
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmaccel.image_ar.llamagen import load_gpt, load_state_dict, load_vq

from .test_llamagen import condition, gpt_config, random_gpt, random_vq


def save_official(sd: dict, path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        return path
    obj = {
        "ddp": {"model": sd, "optimizer": {}, "steps": 7, "args": argparse.Namespace(gpt_model="GPT-B")},
        "raw_fsdp": sd,
        "deepspeed": {"module": {f"module.{k}": v for k, v in sd.items()}},
        "state_dict": {"state_dict": sd},
        "stray_freqs_cis": {**sd, "freqs_cis": torch.zeros(5, 4, 2)},
        "fp16": {"model": {k: v.half() for k, v in sd.items()}},
    }[fmt]
    torch.save(obj, path)
    return path


FORMATS = ["ddp", "raw_fsdp", "deepspeed", "state_dict", "stray_freqs_cis", "fp16", "safetensors"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpt_c2i_checkpoint_loads_back(tmp_path, fmt):
    model = random_gpt("gpt_c2i")
    path = save_official(model.state_dict(), tmp_path / "gpt.pt", fmt)
    loaded = load_gpt(path, model.cfg)
    if fmt == "fp16":  # the reference is the same model with fp16-rounded weights
        model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    cond, image_BN = condition(model), torch.randint(0, model.vocab_size, (2, 6))
    with torch.no_grad():
        assert torch.equal(loaded.full_logits(cond, image_BN), model.full_logits(cond, image_BN))


@pytest.mark.parametrize(
    ("fmt", "name"), [("ddp", "gpt_t2i"), ("safetensors", "gpt_t2i"), ("safetensors", "gpt_t2i+gate")]
)
def test_gpt_t2i_checkpoint_loads_back(tmp_path, fmt, name):
    model = random_gpt(name)
    loaded = load_gpt(save_official(model.state_dict(), tmp_path / "gpt.pt", fmt), model.cfg)
    cond, image_BN = condition(model), torch.randint(0, model.vocab_size, (2, 6))
    with torch.no_grad():
        assert torch.equal(loaded.full_logits(cond, image_BN), model.full_logits(cond, image_BN))
    assert torch.equal(loaded.cls_embedding.uncond_embedding, model.cls_embedding.uncond_embedding)


def test_gpt_loads_in_a_requested_dtype(tmp_path):
    model = random_gpt("gpt_c2i")
    loaded = load_gpt(
        save_official(model.state_dict(), tmp_path / "gpt.pt", "ddp"), model.cfg, dtype=torch.bfloat16
    )
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    cond, image_BN = condition(model), torch.randint(0, model.vocab_size, (2, 6))
    with torch.no_grad():
        ref, got = model.full_logits(cond, image_BN), loaded.full_logits(cond, image_BN)
    assert got.dtype == torch.float32 and (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8


@pytest.mark.parametrize("fmt", ["ddp", "raw_fsdp", "safetensors"])
def test_vq_checkpoint_loads_back(tmp_path, fmt):
    model = random_vq()
    loaded = load_vq(save_official(model.state_dict(), tmp_path / "vq.pt", fmt), model.cfg)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(img), model.encode(img))
        codes = model.encode(img)
        assert torch.equal(loaded.decode_codes(codes), model.decode_codes(codes))


def test_missing_file_and_damaged_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state_dict(tmp_path / "nope.pt")
    sd = random_gpt("gpt_c2i").state_dict()
    good = save_official(sd, tmp_path / "good.pt", "ddp")
    data = good.read_bytes()
    for name, payload in [
        ("truncated.pt", data[: len(data) // 2]),
        ("garbage.pt", b"not a checkpoint" * 40),
        ("empty.pt", b""),
    ]:
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=rf"{name}.*corrupted or truncated"):
            load_state_dict(tmp_path / name)
    st = save_official(sd, tmp_path / "good_st", "safetensors")
    (tmp_path / "cut.safetensors").write_bytes(st.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"cut\.safetensors.*corrupted or truncated"):
        load_state_dict(tmp_path / "cut.safetensors")
    with open(tmp_path / "objects.pt", "wb") as f:
        torch.save({"model": sd, "hook": pickle.PickleError("not a tensor")}, f)
    with pytest.raises(ValueError, match="weights-only"):
        load_state_dict(tmp_path / "objects.pt")
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "nostate.pt")
    with pytest.raises(ValueError, match="no state dict"):
        load_state_dict(tmp_path / "nostate.pt")


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path):
    model = random_gpt("gpt_c2i")
    sd = dict(model.state_dict())
    del sd["norm.weight"], sd["layers.1.attention.wo.weight"]
    sd["layers.9.attention.wqkv.weight"] = torch.zeros(3)
    sd["output.weight"] = torch.zeros(5, 5)
    with pytest.raises(ValueError) as err:
        load_gpt(save_official(sd, tmp_path / "bad.pt", "ddp"), model.cfg)
    msg = str(err.value)
    assert (
        "bad.pt" in msg
        and "2 missing keys" in msg
        and "norm.weight" in msg
        and "layers.1.attention.wo.weight" in msg
    )
    assert "1 unexpected keys: layers.9.attention.wqkv.weight" in msg
    assert "output.weight: checkpoint (5, 5)" in msg
    c2i_path = save_official(model.state_dict(), tmp_path / "c2i.pt", "ddp")
    with pytest.raises(ValueError, match=r"missing keys: .*cls_embedding\.cap_proj\.fc1\.weight"):
        load_gpt(c2i_path, gpt_config("gpt_t2i"))
    deeper = dataclasses.replace(model.cfg, n_layer=4)
    with pytest.raises(
        ValueError, match=r"14 missing keys: (layers\.[23]\.[^,]*, ){9}layers[^,]* \(\+4 more\)"
    ):
        load_gpt(c2i_path, deeper)
