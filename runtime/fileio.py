"""Atomic file output: a reader sees the old file or the whole new one, never half of one.

Every file edgekit writes (models, reports, plots, caches) goes through :func:`atomic_write_bytes`:
the bytes go to a temporary file in the destination folder, are fsynced, then ``os.replace``d over
the destination. A process killed mid-write leaves at most a stray ``.*.tmp`` file, never a partial
output, and an earlier output stays intact. Writing over one of the command's own inputs is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from edgekit.errors import InvalidArgumentError, MissingFileError

__all__ = ["atomic_write_bytes", "refuse_overwrite_input"]


def refuse_overwrite_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Raise ValueError if ``output`` names the same file as one of ``inputs``."""
    out = Path(output)
    for src in inputs:
        src = Path(src)
        same = out.resolve() == src.resolve()
        if not same and out.exists() and src.exists():
            same = os.path.samefile(out, src)
        if same:
            raise InvalidArgumentError(
                f"Refusing to overwrite an input. Expected an output path different from the input. "
                f"Received: output={str(output)!r}, input={str(src)!r}"
            )


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        # The umask can only be read by setting it; set it straight back.
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise MissingFileError(f"Output folder does not exist. Expected an existing folder. Received: {str(folder)!r}")
    import tempfile  # here, not at the top: it pulls in shutil, random, bz2, lzma (~5-9 ms of start-up)

    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (or keep the old file's).
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not every filesystem allows fsync on a folder
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path
