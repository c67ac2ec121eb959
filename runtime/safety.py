"""Guards that run before LiteRT touches a model: tensor-size budget and a crash probe.

A ``.tflite`` file is a program for LiteRT's native code. A damaged or crafted one can pass the
flatbuffer verifier and still crash the process in ``allocate_tensors()``. So, before the host
process loads a model it has not seen yet, :func:`probe_model` loads it in a **child process** with
the same interpreter settings (threads, default XNNPACK delegate), allocates and invokes every
signature once on zeros, and reports how the child ended. A child killed by a signal becomes a
:class:`ModelLoadError` here, and the host process lives on. Passing models are remembered by
content hash (in memory and in ``$XDG_CACHE_HOME/edgekit/probed/``), so the probe costs once.

:func:`declared_tensor_bytes` reads every tensor's declared shape and type from the flatbuffer in
pure Python, so an absurd tensor (say ``[1, 2**31]`` floats) is refused before LiteRT tries to
allocate it.

Only the standard library (and ``edgekit.runtime.metadata``'s flatbuffer reader) is used.
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
from edgekit.runtime.metadata import _Reader, _root

__all__ = ["ModelLoadError", "TensorInfo", "declared_tensors", "probe_model", "probe_cache_dir"]


class ModelLoadError(EdgekitError, RuntimeError):
    """LiteRT cannot load or run the model (the probe child died or reported an error)."""


# TFLite TensorType enum -> bytes per element (schema.fbs order). Unknown types count as 8 bytes.
_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 5: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 13: 1,
               14: 8, 15: 4, 16: 2, 17: 1, 18: 1}


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
    r = _Reader(tflite)
    root = _root(r)
    pos = r.field_pos(root, 2)  # Model.subgraphs
    out: list[TensorInfo] = []
    if pos is None:
        return out
    for si, sg in enumerate(r.table_vector(r.deref(pos))):
        tpos = r.field_pos(sg, 0)  # SubGraph.tensors
        if tpos is None:
            continue
        for t in r.table_vector(r.deref(tpos)):
            shape_pos = r.field_pos(t, 7) or r.field_pos(t, 0)  # shape_signature, else shape
            shape: tuple[int, ...] = ()
            if shape_pos is not None:
                start, n = r.vector(r.deref(shape_pos))
                r._need(start, 4 * n)
                shape = tuple(r.i32(start + 4 * i) for i in range(n))
            type_pos = r.field_pos(t, 1)
            ttype = r.u8(type_pos) if type_pos is not None else 0
            name_pos = r.field_pos(t, 3)
            name = r.string(r.deref(name_pos)).decode("utf-8", "replace") if name_pos is not None else ""
            out.append(TensorInfo(si, name, shape, _TYPE_BYTES.get(ttype, 8)))
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

