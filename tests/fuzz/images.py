"""Corrupted and hostile image inputs for ``edgekit predict`` on an image model.

An image is untrusted input that reaches Pillow (``edgekit.runtime.images``), so it gets the same
treatment as model files. :func:`make_image_corpus` writes valid images and damages them:

- ``png-valid``: gray, RGB, RGBA, gray+alpha and palette PNGs, every filter type, a size that
  needs resizing; ``png-truncate``: cut at many offsets; ``png-flip``: one byte changed in the IHDR,
  PLTE, IDAT or a CRC (a PNG carries a CRC per chunk, so a changed byte is detectable);
- ``png-header``: IHDR too short or too long, zero or 2**31 sizes, 16-bit depth, interlacing, an
  unknown colour type; ``png-palette``: an empty or ragged PLTE, or none;
- ``other-valid``: a JPEG, a lossless WebP and a BMP; ``other-damaged``: the same cut short or with
  one byte changed (these formats carry no CRC: a changed byte may decode to other pixels, so it
  must only never crash, hang or print a traceback);
- ``bomb``: a 1x1 PNG whose IDAT inflates to 512 MiB (memory), a 3000x3000 PNG whose rows all use
  the Paeth filter (decoding time), a PNG of 2**18 + 1 empty chunks and a JPEG of 4 MiB of comment
  markers (what Pillow walks in Python), a progressive JPEG repeating one scan 1,000 times (libjpeg
  passes over the whole image per scan), a 4096x4096 RLE4 BMP (Pillow decodes RLE in Python, pixel by
  pixel) and a WebP declaring a 12000x12000 canvas;
- ``not-image``: empty file, text, JPEG magic followed by junk, a GIF and an EPS header (formats
  edgekit never hands to Pillow).

``expect`` is ``"valid"`` for the undamaged images (must run) and ``"no-crash"`` otherwise (a clear
error, or a run; never a traceback, a crash or a hang).
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from .corrupt import Case

__all__ = ["bmp", "make_image_corpus", "png"]

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


def bmp(width: int, height: int, pixels: bytes, *, bits: int = 8, compression: int = 0) -> bytes:
    """A bottom-up palette BMP (BITMAPINFOHEADER, gray palette) whose pixel data is ``pixels`` as given."""
    colors = 1 << bits
    palette = b"".join(bytes([v, v, v, 0]) for v in (i * 255 // (colors - 1) for i in range(colors)))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(pixels), 2835, 2835, colors, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def _zlib_bomb(size: int) -> bytes:
    comp = zlib.compressobj(9)
    block = bytes(1 << 22)
    return b"".join(comp.compress(block) for _ in range(size // len(block))) + comp.flush()


def _others(seed: int) -> dict[str, tuple[bytes, str]]:
    """A JPEG, a lossless WebP and a BMP of a smooth 16x14 RGB image: name -> (bytes, suffix)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:14, 0:16]
    rgb = np.stack([xx * 15, yy * 17, (xx + yy + seed) * 8], axis=-1).astype(np.uint8)
    out = {}
    for name, fmt, suffix, kwargs in (("jpeg16x14", "JPEG", ".jpg", {"quality": 90}),
                                      ("webp16x14", "WEBP", ".webp", {"lossless": True}),
                                      ("bmp16x14", "BMP", ".bmp", {})):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt, **kwargs)
        out[name] = (buf.getvalue(), suffix)
    return out


def _bombs() -> list[tuple[str, bytes, str]]:
    """(name, bytes, suffix) of the files built to cost memory or time."""
    import numpy as np
    from PIL import Image

    out = []
    bomb = _SIG + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) + _chunk(b"IDAT", _zlib_bomb(512 << 20)) + _chunk(b"IEND", b"")
    out.append(("png:zlib-bomb-512MiB", bomb, ".png"))
    slow = png(3000, 3000, 0, raw=b"".join(b"\x04" + bytes(3000) for _ in range(3000)))
    out.append(("png:paeth-3000x3000", slow, ".png"))
    small = png(4, 3)
    out.append(("png:chunk-flood", small[:33] + _chunk(b"tEXt", b"") * ((1 << 18) + 1) + small[33:], ".png"))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    out.append(("jpeg:comment-flood-4MiB", jpeg[:2] + b"\xff\xfe\x00\x02" * (1 << 20) + jpeg[2:], ".jpg"))
    buf = io.BytesIO()
    Image.fromarray(np.full((2048, 2048), 128, np.uint8)).save(buf, "JPEG", progressive=True, quality=90)
    prog = buf.getvalue()
    last, eoi = prog.rfind(b"\xff\xda"), prog.rfind(b"\xff\xd9")
    out.append(("jpeg:scan-flood-1000", prog[:eoi] + prog[last:eoi] * 1000 + prog[eoi:], ".jpg"))
    row = b"\xff\x11" * 16 + b"\x10\x11" + b"\x00\x00"  # 16 runs of 255 pixels + 16 pixels, end of line
    out.append(("bmp:rle4-4096x4096", bmp(4096, 4096, row * 4096, bits=4, compression=2), ".bmp"))
    vp8x = struct.pack("<I", 10) + bytes(4) + (12000 - 1).to_bytes(3, "little") + (12000 - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + vp8x
    out.append(("webp:canvas-12000x12000", b"RIFF" + struct.pack("<I", len(body)) + body, ".webp"))
    return out


def make_image_corpus(seed: int = 0) -> list[Case]:
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
    for name, (data, suffix) in _others(seed).items():
        cases.append(Case(f"{name}", "other-valid", name, "valid", data, suffix=suffix))
        for cut in sorted(set([1, 4, 12] + rng.sample(range(1, len(data)), 6))):
            cases.append(Case(f"{name}:truncate:{cut}", "other-damaged", name, "no-crash", data[:cut], offset=cut, suffix=suffix))
        for pos in rng.sample(range(len(data)), 10):
            bad = bytearray(data)
            bad[pos] ^= rng.choice((0x01, 0x80, 0xFF))
            cases.append(Case(f"{name}:flip:{pos}", "other-damaged", name, "no-crash", bytes(bad), offset=pos, suffix=suffix))
    for name, data, suffix in _bombs():
        cases.append(Case(name, "bomb", name.split(":")[1], "no-crash", data, suffix=suffix))
    cases += [
        Case("png:empty", "not-image", "-", "no-crash", b"", suffix=".png"),
        Case("png:text", "not-image", "-", "no-crash", b"not an image\n", suffix=".png"),
        Case("jpg:junk", "not-image", "-", "no-crash", b"\xff\xd8\xff\xe0" + rng.randbytes(500), suffix=".jpg"),
        Case("png:gif", "not-image", "-", "no-crash", b"GIF89a\x0c\x00\x0c\x00\x00\x00\x00;", suffix=".png"),
        Case("jpg:eps", "not-image", "-", "no-crash", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 12 12\n", suffix=".jpg"),
    ]
    return cases
