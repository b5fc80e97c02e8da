"""Frechet distance with the shipped Shapes-T2I feature network."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmaccel.eval.fid import frechet_distance, inception_available
from mmaccel.image_ar.shapes import sample_item
from mmaccel.image_ar.shapes_features import load_feature_net


def images(n: int, start: int = 0, split: str = "test") -> list[Image.Image]:
    return [Image.fromarray(sample_item(i, 0, split)[1]) for i in range(start, start + n)]


@pytest.fixture(scope="module")
def net():
    return load_feature_net()


def test_real_vs_real_small_and_degraded_large(net, tmp_path):
    real, other = images(300), images(300, start=300)
    same = frechet_distance(other, real, extractor=net, name="ShapesNet", real_stats=tmp_path / "ref.pt")
    # red and blue swapped: same layouts, other colours -- a semantic change the features must see
    swapped = [Image.fromarray(np.asarray(im)[..., ::-1].copy()) for im in other]
    worse = frechet_distance(swapped, None, extractor=net, name="ShapesNet", real_stats=tmp_path / "ref.pt")
    noise = [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        for i in range(300)
    ]
    worst = frechet_distance(noise, None, extractor=net, name="ShapesNet", real_stats=tmp_path / "ref.pt")
    assert same.num_real == 300 and worse.num_real == 300  # second call read the cached statistics
    assert "ShapesNet" in str(same)
    assert same.fid * 1.5 < worse.fid < worst.fid


def test_cached_statistics_belong_to_their_extractor(net, tmp_path):
    frechet_distance(
        images(20), images(20, 20), extractor=net, name="ShapesNet", real_stats=tmp_path / "r.pt"
    )
    with pytest.raises(ValueError, match="holds statistics for 'ShapesNet', not 'Other'"):
        frechet_distance(images(20), None, extractor=net, name="Other", real_stats=tmp_path / "r.pt")


def test_inception_only_when_present():
    if inception_available():
        pytest.skip("Inception weights are present on this machine")
    with pytest.raises(ValueError, match="Inception weights are not on this machine"):
        frechet_distance(images(4), images(4))
