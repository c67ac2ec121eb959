"""``edgekit convert`` killed, out of disk or facing a read-only folder: the earlier output survives.

Each run is a real ``python -m edgekit convert`` child process on a small Keras model (float32, no
evaluation, so no dataset is needed), over an "earlier output" converted in-process. Five runs go
at once (each costs seconds of TensorFlow start-up, so running them together keeps this under a
minute on 2 cores):

- a run SIGKILLed while TensorFlow loads, one SIGKILLed the moment its temporary output file
  appears (during the write or its fsync), and one SIGKILLed mid-conversion;
- a run whose output folder is a read-only mount (a ``chmod 555`` folder when not root), and one
  whose output folder is a tmpfs with room for the earlier output but not for a second copy (root
  only; without root that run is left out and ``test_robust_faults.py`` covers ENOSPC/EFBIG).

After each, the output is the earlier file byte for byte (or, if the run had finished, a complete
file whose digest verifies), the command's error is one line on stderr with exit status 1, and no
file other than the killed run's hidden temporary file is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from edgekit.runtime.metadata import verify_integrity

pytestmark = [pytest.mark.slow, pytest.mark.train]

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _convert_cmd(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "edgekit", "convert", str(model), "-o", str(out), "--examples", "0"]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """(keras model, folder, earlier output path, its bytes): one complete conversion."""
    keras = pytest.importorskip("keras")
    from edgekit.layers import MCDropout

    root = tmp_path_factory.mktemp("convert_faults")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(100, activation="relu"), MCDropout(0.2), keras.layers.Dense(10, activation="softmax")]
    )
    path = root / "model.keras"
    model.save(path)
    from edgekit.converters import convert
    from edgekit.runtime.fileio import atomic_write_bytes

    out = root / "model.tflite"
    atomic_write_bytes(out, convert(model).tflite)
    data = out.read_bytes()
    assert verify_integrity(data)
    assert len(data) > 300_000  # large enough not to fit twice in the tmpfs below
    return path, root, out, data


def _start(model: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(_convert_cmd(model, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _others(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _error_line(returncode: int, stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert returncode == 1, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


def _protect(folder: Path):
    """Make ``folder`` read-only; returns the command that undoes it (or None)."""
    if os.geteuid() == 0:  # root ignores permission bits: make it a read-only mount
        if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode:
            pytest.skip("running as root and cannot bind-mount a read-only folder")
        return ["umount", str(folder)]
    folder.chmod(0o555)
    return None


def _small_disk(folder: Path, size_bytes: int) -> list[str] | None:
    if os.geteuid() != 0:
        return None
    name = f"edgekit-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes // 1024}k", name, str(folder)], capture_output=True).returncode:
        return None
    return ["umount", str(folder)]


def test_killed_read_only_and_full_disk_conversions_keep_the_earlier_output(earlier, tmp_path):
    model, _, _, data = earlier
    undo: list[list[str]] = []
    runs: dict[str, tuple[Path, Path, subprocess.Popen]] = {}
    try:
        for name in ("during-import", "mid-conversion", "at-temp-file", "read-only", "full-disk"):
            folder = tmp_path / name
            folder.mkdir()
            if name == "full-disk":
                # Room for the earlier output, not for a second copy (root: a tmpfs; else skipped).
                cmd = _small_disk(folder, len(data) * 3 // 2)
                if cmd is None:
                    continue
                undo.append(cmd)
            out = folder / "model.tflite"
            out.write_bytes(data)
            if name == "read-only":
                cmd = _protect(folder)
                if cmd:
                    undo.append(cmd)
            runs[name] = (folder, out, _start(model, out))

        start = time.monotonic()
        state: dict[str, str] = {}
        kill_after = {"during-import": 1.0, "mid-conversion": 5.0}
        while any(n not in state for n in runs) and time.monotonic() - start < 600:
            now = time.monotonic() - start
            for name, (folder, out, proc) in runs.items():
                if name in state:
                    continue
                if proc.poll() is not None:
                    state[name] = "finished"
                    continue
                temp = name == "at-temp-file" and any(p.name.startswith(".model.tflite.") for p in folder.iterdir())
                if temp or now > kill_after.get(name, float("inf")):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    state[name] = "killed"
            time.sleep(0.001)

        for name, (folder, out, proc) in runs.items():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            stderr = proc.stderr.read()
            got = out.read_bytes()
            stray = _others(folder, {"model.tflite"})
            if name in kill_after or name == "at-temp-file":
                if state[name] == "killed":
                    assert got == data, f"{name}: the earlier output changed"
                else:
                    assert verify_integrity(got), f"{name}: finished but wrote a bad file"
                # SIGKILL cannot be cleaned up after: at most the hidden temp file stays.
                assert all(n.startswith(".model.tflite.") and n.endswith(".tmp") for n in stray), (name, stray)
            else:
                line = _error_line(proc.returncode, stderr)
                wanted = "No space left on device" if name == "full-disk" else ("Read-only file system", "Permission denied")
                assert any(w in line for w in ([wanted] if isinstance(wanted, str) else wanted)), line
                assert got == data, f"{name}: the earlier output changed"
                assert stray == [], (name, stray)  # the failed write removed its temp file
        print("convert fault runs:", state)
        assert state["during-import"] == "killed"  # the kill points were really reached
    finally:
        for name, (_, _, proc) in runs.items():
            if proc.poll() is None:
                proc.kill()
        for cmd in reversed(undo):
            subprocess.run(cmd, check=False)
