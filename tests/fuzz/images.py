"""Corrupted and hostile PNG inputs for ``edgekit predict`` on an image model.

The runtime decodes PNG itself (``edgekit.runtime.images``, no Pillow on a device), so its decoder
gets the same treatment as model files. :func:`make_png_corpus` writes valid PNGs (gray, RGB, RGBA,
palette; every filter type; a size that needs resizing) and damages them:

- ``png-truncate``: cut at many offsets; ``png-flip``: one byte changed in the IHDR, PLTE, IDAT
  or a CRC (a PNG carries a CRC per chunk, so a changed byte is detectable);
- ``png-header``: IHDR too short or too long, zero or 2**31 sizes, 16-bit depth, interlacing, an
  unknown colour type; ``png-palette``: an empty or ragged PLTE, or none;
- ``png-bomb``: a 1x1 image whose IDAT inflates to 512 MiB (memory), and a 3000x3000 image whose
  rows all use the Paeth filter (time: the decoder's per-byte Python loop);
- ``png-not-image``: empty file, text, JPEG magic followed by junk.

``expect`` is ``"valid"`` for the undamaged images (must run) and ``"no-crash"`` otherwise (a clear
error, or a run; never a traceback, a crash or a hang).
"""

from __future__ import annotations

import random
import struct
import zlib

from .corrupt import Case

__all__ = ["png", "make_png_corpus"]

_SIG = b"\x89PNG\r\n\x1a\n"
_BPP = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(width: int, height: int, color: int = 0, *, filters=(0,), seed: int = 0, ihdr: bytes | None = None,
        plte: bytes | None = None, raw: bytes | None = None) -> bytes:
    """An 8-bit PNG with random pixels; each row uses ``filters[row % len(filters)]`` as its filter byte.

    The filter byte only tells the decoder how to reconstruct the row; the stored bytes are random,
    so every filter path runs and the result is a well-formed (if noisy) image.
    """
    rng = random.Random(seed)
    bpp = _BPP.get(color, 1)
    if raw is None:
        raw = b"".join(bytes([filters[y % len(filters)]]) + rng.randbytes(width * bpp) for y in range(height))
    header = ihdr if ihdr is not None else struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    body = _SIG + _chunk(b"IHDR", header)
    if plte is not None:
        body += _chunk(b"PLTE", plte)
    elif color == 3:
        body += _chunk(b"PLTE", rng.randbytes(3 * 256))  # every index a random byte can take
    return body + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def _zlib_bomb(size: int) -> bytes:
    comp = zlib.compressobj(9)
    block = bytes(1 << 22)
    return b"".join(comp.compress(block) for _ in range(size // len(block))) + comp.flush()


def make_png_corpus(seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    valid = {
        "gray12": png(12, 12, 0, filters=(0, 1, 2, 3, 4), seed=1),
        "rgb20x16": png(20, 16, 2, filters=(4, 3, 2, 1, 0), seed=2),
        "rgba12": png(12, 12, 6, filters=(1, 4), seed=3),
        "gray-alpha9": png(9, 9, 4, filters=(3,), seed=4),
        "palette12": png(12, 12, 3, filters=(0, 2), seed=5),
    }
    cases = [Case(f"png:{name}", "png-valid", name, "valid", data, suffix=".png") for name, data in valid.items()]
    for name, data in valid.items():
        for cut in sorted(set([1, 8, 16, 33] + rng.sample(range(1, len(data)), 10))):
            cases.append(Case(f"png:{name}:truncate:{cut}", "png-truncate", name, "no-crash", data[:cut], offset=cut, suffix=".png"))
        for pos in rng.sample(range(8, len(data)), 16):
            bad = bytearray(data)
            bad[pos] ^= rng.choice((0x01, 0x80, 0xFF))
            cases.append(Case(f"png:{name}:flip:{pos}", "png-flip", name, "no-crash", bytes(bad), offset=pos, suffix=".png"))
    headers = {
        "ihdr-short": png(12, 12, ihdr=b"\x00" * 5),
        "ihdr-long": png(12, 12, ihdr=struct.pack(">IIBBBBB", 12, 12, 8, 0, 0, 0, 0) + b"\x00" * 8),
        "zero-size": png(0, 0),
        "zero-width": png(0, 12, raw=b"\x00" * 12),
        "huge-size": png(1, 1, ihdr=struct.pack(">IIBBBBB", 2**31 - 1, 2**31 - 1, 8, 0, 0, 0, 0)),
        "depth16": png(12, 12, ihdr=struct.pack(">IIBBBBB", 12, 12, 16, 0, 0, 0, 0)),
        "interlaced": png(12, 12, ihdr=struct.pack(">IIBBBBB", 12, 12, 8, 0, 0, 0, 1)),
        "color5": png(12, 12, ihdr=struct.pack(">IIBBBBB", 12, 12, 8, 5, 0, 0, 0)),
        "bad-filter": png(12, 12, filters=(9,)),
    }
    for name, data in headers.items():
        cases.append(Case(f"png:{name}", "png-header", name, "no-crash", data, suffix=".png"))
    palettes = {
        "plte-empty": png(12, 12, 3, plte=b""),
        "plte-ragged": png(12, 12, 3, plte=b"\x00" * 4),
        "plte-missing": _SIG + _chunk(b"IHDR", struct.pack(">IIBBBBB", 12, 12, 8, 3, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + bytes(12) for _ in range(12))))
        + _chunk(b"IEND", b""),
    }
    for name, data in palettes.items():
        cases.append(Case(f"png:{name}", "png-palette", name, "no-crash", data, suffix=".png"))
    bomb = _SIG + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) + _chunk(b"IDAT", _zlib_bomb(512 << 20)) + _chunk(b"IEND", b"")
    cases.append(Case("png:zlib-bomb-512MiB", "png-bomb", "zlib", "no-crash", bomb, suffix=".png"))
    slow = png(3000, 3000, 0, raw=b"".join(b"\x04" + bytes(3000) for _ in range(3000)))
    cases.append(Case("png:paeth-3000x3000", "png-bomb", "paeth", "no-crash", slow, suffix=".png"))
    cases += [
        Case("png:empty", "png-not-image", "-", "no-crash", b"", suffix=".png"),
        Case("png:text", "png-not-image", "-", "no-crash", b"not an image\n", suffix=".png"),
        Case("jpg:junk", "png-not-image", "-", "no-crash", b"\xff\xd8\xff\xe0" + rng.randbytes(500), suffix=".jpg"),
    ]
    return cases
