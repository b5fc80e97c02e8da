"""image_ar.checkpoint.save_atomic: a save that dies half-way leaves the previous file whole."""

import pytest
import torch

from image_ar.checkpoint import save_atomic


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
