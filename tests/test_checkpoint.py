"""mmaccel.image_ar.checkpoint: a save that dies half-way leaves the previous file whole; exported
weights get the umask's mode, not safetensors' 0600."""

import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from mmaccel.image_ar.checkpoint import save_atomic, save_safetensors


def test_save_atomic_round_trips_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"step": 3, "w": torch.arange(4)}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_atomic({"step": 1}, path)

    def dies_half_way(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_save_safetensors_follows_the_umask(tmp_path, umask, mode):
    path = tmp_path / "w.safetensors"
    old = os.umask(umask)
    try:
        save_safetensors({"w": torch.arange(3.0)}, path, metadata={"format": "pt"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert torch.equal(load_file(path)["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
