"""Run by `make test-base` with a venv holding only the base install (numpy, click, ai-edge-litert, Pillow).

It proves what a device gets: `import edgekit.runtime`, `MCModel.predict`, `edgekit --help`, `edgekit predict`
(on an array and on a JPEG image) and `edgekit profile` all work where TensorFlow and Keras are not installed at
all. Not a pytest file: pytest and hypothesis are not in that venv either. Exit status 0 means every check passed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def main() -> int:
    for heavy in ("tensorflow", "keras"):
        assert importlib.util.find_spec(heavy) is None, f"{heavy} is installed: this is not a base-install venv"

    import edgekit.runtime as rt

    model = rt.MCModel(FIXTURES / "book_ingraph.tflite")
    x = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
    pred = model.predict(x, samples=30)
    assert pred.mean.shape == (2, 10) and np.allclose(pred.mean.sum(-1), 1.0, atol=1e-5), pred.mean
    exe = str(Path(sys.executable).with_name("edgekit"))
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "x.npy"
        np.save(npy, x[:1])
        from PIL import Image  # part of the base install: image inputs

        jpeg = Path(tmp) / "x.jpg"
        Image.fromarray((np.random.default_rng(1).random((24, 24)) * 255).astype(np.uint8)).save(jpeg)
        runs = {
            "help": [exe, "--help"],
            "predict": [exe, "predict", str(FIXTURES / "book_ingraph.tflite"), str(npy), "--samples", "20", "--json"],
            "predict an image": [exe, "predict", str(FIXTURES / "cnn_ingraph.tflite"), str(jpeg), "--samples", "5",
                                 "--json"],
            "profile": [exe, "profile", str(FIXTURES / "book_ingraph.tflite"), "--sweep", "1,10", "--runs", "5",
                        "--json"],
        }
        for name, cmd in runs.items():
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"edgekit {name} failed:\n{proc.stderr}"
            if name != "help":
                json.loads(proc.stdout)  # machines get valid JSON
    print("base install: import, MCModel.predict, edgekit --help, predict (array, image) and profile work without "
          "TensorFlow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
