"""Guards that run before LiteRT touches a model: tensor-size budget and a crash probe.

A ``.tflite`` file is a program for LiteRT's native code. A damaged or crafted one can pass the
flatbuffer verifier and still crash the process in ``allocate_tensors()``. So, before the host
process loads a model it has not seen yet, :func:`probe_model` loads it in a **child process** with
the same interpreter settings (threads, default XNNPACK delegate), allocates and invokes every
signature once on zeros, and reports how the child ended. A child killed by a signal becomes a
:class:`ModelLoadError` here, and the host process lives on. Passing models are remembered by
content hash (in memory and in ``$XDG_CACHE_HOME/edgekit/probed/``), so the probe costs once.

:func:`declared_tensors` reads every tensor's declared shape and type from the flatbuffer, through
the TFLite schema bindings shipped with LiteRT (guarded as in :mod:`edgekit.runtime.metadata`: a
damaged file is a ``MetadataError``), so an absurd tensor (say ``[1, 2**31]`` floats) is refused
before LiteRT tries to allocate it. Nothing here runs LiteRT in this process.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.runtime.fileio import atomic_write_bytes
from edgekit.runtime.metadata import _count, _model, _reading, _schema

__all__ = ["ModelLoadError", "TensorInfo", "declared_tensors", "probe_cache_dir", "probe_model"]


class ModelLoadError(EdgekitError, RuntimeError):
    """LiteRT cannot load or run the model (the probe child died or reported an error)."""


# Bytes per element of each TFLite TensorType (sub-byte types count a whole byte; STRING, RESOURCE
# and VARIANT a pointer). A type this table does not know counts as 8 bytes.
_NAMED_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "STRING": 8, "BOOL": 1, "INT16": 2,
                "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16, "UINT64": 8, "RESOURCE": 8, "VARIANT": 8,
                "UINT32": 4, "UINT16": 2, "INT4": 1, "BFLOAT16": 2, "INT2": 1, "UINT4": 1, "FLOAT8_E4M3FN": 1,
                "FLOAT8_E5M2": 1}


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the flatbuffer declares it (``-1`` in ``shape`` = dynamic, usually the batch)."""

    subgraph: int
    name: str
    shape: tuple[int, ...]
    itemsize: int

    def nbytes(self, batch: int = 1) -> int:
        n = self.itemsize
        for d in self.shape:
            n *= batch if d < 0 else d
        return n


def declared_tensors(tflite: bytes) -> list[TensorInfo]:
    """Every tensor of every subgraph with its declared shape (shape_signature if present).

    Raises:
        MetadataError: the flatbuffer cannot be read.
    """
    schema = _schema()
    types = schema.TensorType
    itemsize = {getattr(types, name): n for name, n in _NAMED_BYTES.items() if hasattr(types, name)}
    out: list[TensorInfo] = []
    with _reading():
        model = _model(tflite)
        for si in range(_count(model.SubgraphsLength(), tflite, "subgraphs")):
            sg = model.Subgraphs(si)
            for ti in range(_count(sg.TensorsLength(), tflite, "tensors")):
                t = sg.Tensors(ti)
                dims = t.ShapeAsNumpy() if t.ShapeSignatureIsNone() else t.ShapeSignatureAsNumpy()
                shape = () if isinstance(dims, int) else tuple(dims.tolist())  # 0: no shape vector
                name = (t.Name() or b"").decode("utf-8", "replace")
                out.append(TensorInfo(si, name, shape, itemsize.get(t.Type(), 8)))
    return out


def probe_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgekit" / "probed"


_PROBED: set[str] = set()
_LOCK = threading.Lock()

# The child: load with the same settings as the parent, allocate and invoke every signature at
# batch 1 on zeros. Only ai_edge_litert (or tflite_runtime) and numpy are imported.
_CHILD = r"""
import sys, numpy as np
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
data = sys.stdin.buffer.read()
threads = int(sys.argv[1])
it = Interpreter(model_content=data, num_threads=threads)
sigs = it.get_signature_list()
if not sigs:
    it.allocate_tensors(); it.invoke()
for key in sigs:
    runner = it.get_signature_runner(key)
    feeds = {}
    for name, d in runner.get_input_details().items():
        shape = [1 if s < 0 else int(s) for s in d["shape_signature"]]
        feeds[name] = np.zeros(shape, d["dtype"])
    runner(**feeds)
print("ok")
"""


def probe_model(tflite: bytes, *, threads: int, timeout_s: float = 60.0, use_cache: bool = True) -> str:
    """Load and run ``tflite`` once in a child process; raise :class:`ModelLoadError` if it dies.

    Returns the model's content hash. Cached by that hash (memory and disk) when ``use_cache``.
    """
    digest = hashlib.sha256(tflite).hexdigest()
    marker = probe_cache_dir() / f"{digest}-t{threads}"
    if use_cache:
        with _LOCK:
            if digest in _PROBED:
                return digest
        if marker.exists():
            with _LOCK:
                _PROBED.add(digest)
            return digest
    # Imported here, not at the top: a device's every start-up after the first finds the probe
    # cached, and subprocess (with signal, selectors, locale) costs ~5-10 ms of its import time.
    import signal
    import subprocess

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(threads)],
            input=tflite, capture_output=True, timeout=timeout_s, env=env,
        )
    except subprocess.TimeoutExpired:
        raise ModelLoadError(
            f"The model did not load within {timeout_s:.0f} s in a probe process. Expected a model that "
            "loads and runs once on zeros. Received: a timeout"
        ) from None
    if proc.returncode != 0 or b"ok" not in proc.stdout:
        if proc.returncode < 0:
            try:
                how = f"killed by {signal.Signals(-proc.returncode).name}"
            except ValueError:
                how = f"killed by signal {-proc.returncode}"
        else:
            lines = [ln for ln in proc.stderr.decode("utf-8", "replace").strip().splitlines() if ln.strip()]
            how = f"exit status {proc.returncode}: {lines[-1] if lines else 'no message'}"
        raise ModelLoadError(
            "LiteRT cannot load this model: a probe process that loaded it and ran it once on zeros "
            f"ended with {how}. The model file is damaged or not a model LiteRT can run."
        )
    with _LOCK:
        _PROBED.add(digest)
    if use_cache:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(marker, b"ok\n")
        except OSError:
            pass  # a read-only home only costs a probe per process
    return digest

