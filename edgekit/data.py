"""Fashion-MNIST from the real idx files, checked before use.

edgekit reads the files that Debian's package ``dataset-fashion-mnist`` installs in
``/usr/share/datasets/fashion-mnist/`` (``sudo apt-get install dataset-fashion-mnist``). Set
``EDGEKIT_DATA`` to a folder holding the same four ``.gz`` files to read them from elsewhere.
Nothing is ever downloaded.

>>> from edgekit.data import load_fashion_mnist
>>> ds = load_fashion_mnist()
>>> ds.x_train.shape, ds.x_train.dtype, ds.class_names[9]
((60000, 28, 28), dtype('float32'), 'Ankle boot')

Pixels are scaled to [0, 1]; labels are uint8 in 0..9. Only numpy and the standard library are used.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

__all__ = ["CLASS_NAMES", "DataError", "FashionMNIST", "data_dir", "load_fashion_mnist"]

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_FILES = {
    "x_train": ("train-images-idx3-ubyte.gz", 60_000),
    "y_train": ("train-labels-idx1-ubyte.gz", 60_000),
    "x_test": ("t10k-images-idx3-ubyte.gz", 10_000),
    "y_test": ("t10k-labels-idx1-ubyte.gz", 10_000),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_HOW_TO_GET = (
    "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set "
    "EDGEKIT_DATA to a folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz."
)


class DataError(EdgekitError, ValueError):
    """The dataset is missing or not what it claims to be."""


@dataclass(frozen=True)
class FashionMNIST:
    """The four splits (images scaled to [0, 1], float32) and the class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES


def data_dir() -> Path:
    """The folder edgekit reads Fashion-MNIST from (``EDGEKIT_DATA`` overrides the default)."""
    return Path(os.environ.get("EDGEKIT_DATA") or DEFAULT_DIR)


def _read_idx(path: Path, magic: int, count: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"Fashion-MNIST file not found: {path}. {_HOW_TO_GET}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"Fashion-MNIST file {path} is not a readable gzip file ({e}). {_HOW_TO_GET}") from None
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"Fashion-MNIST file {path} is truncated: {len(raw)} bytes. {_HOW_TO_GET}")
    got_magic, *dims = struct.unpack(f">{1 + ndim}I", raw[:header])
    if got_magic != magic:
        raise DataError(
            f"Fashion-MNIST file {path} has the wrong magic number. Expected: {magic}. "
            f"Received: {got_magic}. {_HOW_TO_GET}"
        )
    expected_dims = [count, 28, 28] if ndim == 3 else [count]
    if dims != expected_dims:
        raise DataError(
            f"Fashion-MNIST file {path} has the wrong shape. Expected: {tuple(expected_dims)}. "
            f"Received: {tuple(dims)}. {_HOW_TO_GET}"
        )
    body = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        raise DataError(
            f"Fashion-MNIST file {path} is truncated or padded. Expected: {int(np.prod(dims))} "
            f"bytes of data. Received: {body.size}. {_HOW_TO_GET}"
        )
    return body.reshape(dims)


def load_fashion_mnist(folder: str | os.PathLike | None = None) -> FashionMNIST:
    """Read and check the real Fashion-MNIST (60,000 train / 10,000 test, 28x28, labels 0-9).

    Raises:
        DataError: a file is missing, truncated or has the wrong magic number, counts, image
            size or labels; the message says how to get the data.
    """
    root = Path(folder) if folder is not None else data_dir()
    arrays = {}
    for key, (name, count) in _FILES.items():
        magic = _IMAGES_MAGIC if key.startswith("x") else _LABELS_MAGIC
        arrays[key] = _read_idx(root / name, magic, count)
    for key in ("y_train", "y_test"):
        top = int(arrays[key].max())
        if top > 9:
            raise DataError(
                f"Fashion-MNIST labels in {root / _FILES[key][0]} are out of range. Expected: 0..9. "
                f"Received: a label {top}. {_HOW_TO_GET}"
            )
    for key in ("x_train", "x_test"):
        arrays[key] = arrays[key].astype(np.float32) / np.float32(255.0)
    return FashionMNIST(**arrays)
