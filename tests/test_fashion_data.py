"""Fashion-MNIST data: the IDX parser, padding, class names, and the Debian package's files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from mmaccel.image_ar.fashion import data
from mmaccel.image_ar.fashion.data import (
    CLASS_NAMES,
    class_index,
    class_name,
    data_dir,
    load_split,
    pad,
    read_idx,
    to_float,
    to_pil,
)

_CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B,
          np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}  # fmt: skip


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``, written here independently of the parser under test."""
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fake_dataset(folder, n_train: int = 40, n_test: int = 20, seed: int = 0, gz: bool = True):
    """The package's four files, holding random 28x28 images with labels cycling 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for stem, array in zip(data.FILES[split], (images, labels), strict=True):
            raw = idx_bytes(array)
            if gz:
                (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_images_and_labels(tmp_path, gz):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    labels = np.array([9, 0, 4], dtype=np.uint8)
    for name, array in (("img", images), ("lab", labels)):
        raw = idx_bytes(array)
        (tmp_path / name).write_bytes(gzip.compress(raw) if gz else raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "img"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "lab"), labels)
    assert read_idx(tmp_path / "img").shape == (3, 28, 28)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "float32", "float64"])
def test_read_idx_is_big_endian_for_every_type(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    (tmp_path / "x").write_bytes(idx_bytes(array))
    got = read_idx(tmp_path / "x")
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_read_idx_rejects_what_is_not_idx(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((4, 5), np.uint8))[:-3])
    with pytest.raises(ValueError, match=r"needs 32 bytes, the file has 29"):
        read_idx(tmp_path / "short")


def test_pad_adds_two_pixels_of_background_on_every_side():
    images = np.full((5, 28, 28), 200, dtype=np.uint8)
    padded = pad(images)
    assert padded.shape == (5, 32, 32) and padded.dtype == np.uint8
    assert (padded[:, 2:30, 2:30] == 200).all()
    border = padded.copy()
    border[:, 2:30, 2:30] = 0
    assert not border.any()
    assert pad(images[0]).shape == (32, 32)


def test_to_float_and_to_pil():
    images = np.array([[[0, 255], [127, 128]]], dtype=np.uint8)
    x = to_float(images)
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    (im,) = to_pil(images)
    assert im.mode == "L" and np.array_equal(np.asarray(im), images[0])


def test_class_names_and_aliases():
    assert len(CLASS_NAMES) == 10 == len(set(CLASS_NAMES))
    for i, name in enumerate(CLASS_NAMES):
        assert class_index(name) == i and class_name(i) == name
    assert class_index("T-shirt/top") == class_index("top") == class_index("t-shirts") == 0
    assert class_index("  An  Ankle Boot ") == class_index("ankle_boots") == 9
    assert class_index("a shirt") == 6 and class_index("sneakers") == 7 and class_index("Trousers") == 1
    with pytest.raises(IndexError):
        class_name(10)


def test_unknown_class_lists_the_ten_names():
    with pytest.raises(ValueError, match="unknown Fashion-MNIST class 'hat'") as err:
        class_index("hat")
    assert all(name in str(err.value) for name in CLASS_NAMES)


def test_missing_files_say_how_to_install_them(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        data_dir(tmp_path)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "make test" in message and ".ci/run" in message and "MMACCEL_FASHION_MNIST_DIR" in message
    assert "train-images-idx3-ubyte" in message and str(tmp_path) in message
    monkeypatch.setenv(data.ENV_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_split("test")


@pytest.mark.parametrize("gz", [True, False])
def test_load_split_from_a_folder(tmp_path, monkeypatch, gz):
    folder = write_fake_dataset(tmp_path / "fm", n_train=30, n_test=10, gz=gz)
    monkeypatch.setenv(data.ENV_DIR, str(folder))
    test = load_split("test")
    assert len(test) == 10 and test.images.shape == (10, 32, 32) and test.labels.dtype == np.int64
    assert test.labels.tolist() == list(range(10))
    assert not test.images[:, :2].any() and not test.images[:, :, -2:].any()
    assert not test.images.flags.writeable  # shared through the cache
    assert len(load_split("train", folder)) == 30
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split 'val'"):
        load_split("val", folder)


# --- the real data: the Debian package ----------------------------------------------------------

try:
    data_dir(data.DEFAULT_DIR)
    HAVE_PACKAGE = True
except FileNotFoundError:
    HAVE_PACKAGE = False
needs_package = pytest.mark.skipif(
    not HAVE_PACKAGE,
    reason=f"Fashion-MNIST is not installed in {data.DEFAULT_DIR} (apt-get install dataset-fashion-mnist)",
)


@needs_package
def test_the_package_splits():
    train, test = load_split("train", data.DEFAULT_DIR), load_split("test", data.DEFAULT_DIR)
    assert train.images.shape == (60_000, 32, 32) and test.images.shape == (10_000, 32, 32)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert not test.images[:, :2].any() and not test.images[:, :, :2].any()
    assert test.images.max() == 255 and 65 < test.images[:, 2:30, 2:30].mean() < 80  # dark background
    assert test.labels[:5].tolist() == [9, 2, 1, 1, 6]  # the official first test labels
