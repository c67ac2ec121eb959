"""Faults while writing: a killed process, a full disk and a read-only folder lose nothing.

Every edgekit output goes through :func:`edgekit.runtime.fileio.atomic_write_bytes`. These tests
kill a real child process (SIGKILL, which no handler can catch) at each step of a write, fill a real
64 KiB tmpfs (root only: ``mount -t tmpfs``), and cap the file size with ``RLIMIT_FSIZE`` (no root
needed). After each, the output is the earlier file byte for byte, or the whole new one, and no
temporary file is left at the output path. The same checks for ``edgekit convert`` itself are in
``test_robust_convert_faults.py``.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from edgekit.runtime.fileio import atomic_write_bytes

OLD = b"earlier output " * 100
NEW = os.urandom(200_000)  # larger than the 64 KiB tmpfs below


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != name)


# A child that writes NEW over the output and SIGKILLs itself at a chosen step of the write.
_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from edgekit.runtime import fileio

    target, step = sys.argv[1], sys.argv[2]
    data = os.urandom(200_000)
    open(target + ".expected", "wb").write(data)

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    real_fsync, real_replace = os.fsync, os.replace
    if step == "before-fsync":      # bytes written to the temp file, not yet durable
        os.fsync = die
    elif step == "before-replace":  # temp file complete and fsynced, not yet renamed
        os.replace = die
    elif step == "after-replace":   # renamed; killed while syncing the folder
        def replace_then_arm(*a, **k):
            real_replace(*a, **k)
            os.fsync = die
        os.replace = replace_then_arm
    fileio.atomic_write_bytes(target, data)
    print("finished")
    """
)


@pytest.mark.parametrize("step", ["before-fsync", "before-replace", "after-replace"])
def test_sigkill_during_write_leaves_old_or_whole_new_file(tmp_path, step):
    out = tmp_path / "model.tflite"
    out.write_bytes(OLD)
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(out), step], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-500:]
    expected_new = (tmp_path / "model.tflite.expected").read_bytes()
    got = out.read_bytes()
    if step == "after-replace":
        assert got == expected_new
    else:
        assert got == OLD
    # The killed write may leave its hidden temp file (nothing can delete it after SIGKILL), never a
    # file at the output path and never a file a glob on "*.tflite" would pick up.
    stray = [n for n in _leftovers(tmp_path, "model.tflite") if n != "model.tflite.expected"]
    assert all(n.startswith(".model.tflite.") and n.endswith(".tmp") for n in stray), stray
    assert len(stray) <= 1


def test_sigkill_at_random_moments_of_repeated_writes(tmp_path):
    # A writer loop killed from outside at arbitrary moments: the file is always one whole version.
    out = tmp_path / "report.json"
    versions = [bytes([i]) * 300_000 for i in range(1, 40)]
    script = textwrap.dedent(
        f"""
        import sys
        from edgekit.runtime.fileio import atomic_write_bytes
        print("ready", flush=True)
        for i in range(1, 40):
            atomic_write_bytes({str(out)!r}, bytes([i]) * 300_000)
        """
    )
    for delay in (0.0, 0.01, 0.03, 0.08):
        out.write_bytes(versions[0])
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        child.stdout.readline()
        if delay:
            import time

            time.sleep(delay)
        child.kill()
        child.wait()
        assert out.read_bytes() in versions


def test_read_only_folder_gives_clear_error_and_keeps_old_file(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "model.tflite"
    out.write_bytes(OLD)
    if os.geteuid() == 0:
        # root ignores permission bits, so make the folder a read-only mount instead
        if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode:
            pytest.skip("running as root and cannot bind-mount a read-only folder")
        cleanup = ["umount", str(folder)]
    else:
        folder.chmod(0o555)
        cleanup = None
    try:
        with pytest.raises(OSError) as info:
            atomic_write_bytes(out, NEW)
        assert info.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        assert str(folder) in str(info.value)  # the message names where it tried to write
        assert out.read_bytes() == OLD
        assert _leftovers(folder, "model.tflite") == []
    finally:
        if cleanup:
            subprocess.run(cleanup, check=True)
        else:
            folder.chmod(0o755)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (needs root), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 64 KiB tmpfs needs root; test_file_size_limit covers the same path")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", f"edgekit-{uuid.uuid4().hex[:8]}", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_gives_clear_error_and_keeps_old_file(tiny_disk):
    out = tiny_disk / "model.tflite"
    out.write_bytes(OLD)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(out, NEW)
    assert info.value.errno == errno.ENOSPC
    assert out.read_bytes() == OLD
    assert _leftovers(tiny_disk, "model.tflite") == []  # the partial temp file was removed
    # The disk is usable again afterwards: the failed write freed its space.
    atomic_write_bytes(out, b"small")
    assert out.read_bytes() == b"small"


def test_file_size_limit_gives_clear_error_and_keeps_old_file(tmp_path):
    # Without root: RLIMIT_FSIZE makes write() fail (EFBIG) part-way, like a full disk would.
    out = tmp_path / "model.tflite"
    out.write_bytes(OLD)
    script = textwrap.dedent(
        f"""
        import errno, resource, signal
        from edgekit.runtime.fileio import atomic_write_bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            atomic_write_bytes({str(out)!r}, b"x" * 200_000)
        except OSError as e:
            print(errno.errorcode[e.errno])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "EFBIG", proc.stderr[-500:]
    assert out.read_bytes() == OLD
    assert _leftovers(tmp_path, "model.tflite") == []
