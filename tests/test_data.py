"""The Fashion-MNIST reader: real idx files are checked, bad ones give one clear DataError."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from edgekit.data import CLASS_NAMES, DataError, data_dir, load_fashion_mnist


def _write_idx(folder, name, magic, dims, body: bytes):
    with gzip.open(folder / name, "wb", compresslevel=1) as f:
        f.write(struct.pack(f">{1 + len(dims)}I", magic, *dims) + body)


def _fake_dataset(folder, n_train=60_000, n_test=10_000, label=3, images_magic=2051):
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        # A repeating 0..255 ramp: every pixel value occurs, and it compresses fast.
        pixels = (np.arange(n * 28 * 28) % 256).astype(np.uint8).tobytes()
        _write_idx(folder, f"{prefix}-images-idx3-ubyte.gz", images_magic, (n, 28, 28), pixels)
        _write_idx(folder, f"{prefix}-labels-idx1-ubyte.gz", 2049, (n,), bytes([label]) * n)


def test_reads_a_well_formed_folder(tmp_path):
    _fake_dataset(tmp_path)
    ds = load_fashion_mnist(tmp_path)
    assert ds.x_train.shape == (60_000, 28, 28) and ds.x_test.shape == (10_000, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.y_test.shape == (10_000,) and set(np.unique(ds.y_test)) == {3}
    assert ds.class_names == CLASS_NAMES and len(CLASS_NAMES) == 10


def test_env_var_overrides_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(DataError, match="not found: .*train-images-idx3-ubyte.gz.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()


def test_wrong_magic(tmp_path):
    _fake_dataset(tmp_path, images_magic=2049)
    with pytest.raises(DataError, match="wrong magic number. Expected: 2051. Received: 2049"):
        load_fashion_mnist(tmp_path)


def test_wrong_count(tmp_path):
    _fake_dataset(tmp_path, n_test=100)
    with pytest.raises(DataError, match=r"wrong shape. Expected: \(10000, 28, 28\). Received: \(100, 28, 28\)"):
        load_fashion_mnist(tmp_path)


def test_labels_out_of_range(tmp_path):
    _fake_dataset(tmp_path, label=12)
    with pytest.raises(DataError, match="out of range. Expected: 0..9. Received: a label 12"):
        load_fashion_mnist(tmp_path)


def test_truncated_and_not_gzip(tmp_path):
    _fake_dataset(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", 2049, 10_000) + b"\x01" * 10)
    with pytest.raises(DataError, match="truncated or padded"):
        load_fashion_mnist(tmp_path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a readable gzip file"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not (data_dir() / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="real Fashion-MNIST not installed (make test installs dataset-fashion-mnist)")
def test_real_fashion_mnist():
    ds = load_fashion_mnist()
    # Facts of the published dataset: 6,000 train and 1,000 test images per class.
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert 0.28 < ds.x_train.mean() < 0.29  # published mean pixel 0.2860
