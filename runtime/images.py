"""Turn an image file into a model input, as the model's metadata says (no Pillow needed for PNG).

>>> from edgekit.runtime.images import load_image
>>> x = load_image("shoe.png", {"height": 28, "width": 28, "channels": 1,
...                             "scale": 1 / 255, "offset": 0.0})
>>> x.shape, x.dtype
((28, 28, 1), dtype('float32'))

PNG is decoded here with ``zlib`` and numpy, because the base install (what a device gets) has no
Pillow: grayscale, gray+alpha, RGB, RGBA and palette images at every bit depth the PNG standard
allows (1, 2, 4, 8, 16; 16-bit samples keep their high byte, 1/2/4-bit gray is scaled to 0..255),
non-interlaced. Interlaced (Adam7) PNGs and JPEG need Pillow (``pip install pillow``); without it
the error says so. The image is converted to the model's channel count (RGB to gray with the
ITU-R 601 luma weights Pillow uses), resized to ``height x width`` with bilinear interpolation
(half-pixel centres), then ``x = pixel * scale + offset``.

An image file is untrusted input, so the decoder is strict and bounded:

- every chunk's CRC32 is checked and the file must end with an ``IEND`` chunk, so a changed or
  missing byte is refused instead of silently giving other pixels (Pillow does not check every
  CRC, so a damaged PNG is never handed to it: only well-formed variants this decoder lacks);
- every ``IHDR`` field is validated (13 bytes; width and height 1 to :data:`MAX_SIDE`, at most
  :data:`MAX_PIXELS` pixels; a bit depth allowed for the colour type; compression, filter and
  interlace methods), as are the chunk order and the palette (1 to ``2**depth`` RGB entries, present
  for palette images; an index past its end reads as black, as in libpng);
- the compressed data is inflated to at most the exact size the header implies (+1 byte, to notice
  extra data), so a small file that inflates to gigabytes (a zlib bomb) costs no memory;
- scanlines are unfiltered with numpy: Sub and Up rows whole, Average and Paeth rows (sequential
  along a row) together along anti-diagonals, so the Python loop runs ``width + height`` times
  instead of once per byte (a 3000x3000 Paeth image: about 0.5 s here, was minutes; a 28x28
  image about 2.5 ms).

Every bad image ends in :class:`ImageError` (a ``ValueError``), which ``edgekit predict`` prints as
one ``Error:`` line with exit status 1.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

from edgekit.errors import EdgekitError

__all__ = ["ImageError", "MAX_FILE_BYTES", "MAX_PIXELS", "MAX_SIDE", "decode_png", "load_image", "resize_bilinear"]

MAX_SIDE = 8192
"""Largest PNG width or height accepted (model inputs are tiny; this bounds memory and time)."""
MAX_PIXELS = 1 << 24
"""Largest PNG pixel count accepted (16.8 Mpixel, e.g. 4096x4096), and at most ``4 * MAX_PIXELS``
bytes of samples (so a 16-bit RGBA image may have a quarter of it): the worst case measured here
(8192x2048 RGB, every row Paeth) decodes in about 2 s with a peak RSS near 250 MB."""
MAX_FILE_BYTES = 256 << 20
"""Largest image file read (a valid PNG or JPEG of :data:`MAX_PIXELS` pixels is far smaller)."""
_MAX_CHUNKS = 1 << 18  # encoders write IDAT in 8-64 KiB chunks; a flood of tiny chunks is an attack

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # PNG spec table 11.1


class ImageError(EdgekitError, ValueError):
    """The image cannot be read or does not fit the model."""


class _UnsupportedPNG(ImageError):
    """A well-formed PNG variant this decoder does not handle (Pillow may)."""


def _chunks(data: bytes):
    """Yield ``(type, body)`` for each chunk up to and including IEND, checking lengths and CRCs."""
    view, pos, count = memoryview(data), 8, 0
    while True:
        if pos + 12 > len(data):
            raise ImageError(
                "Truncated PNG file. Expected an IEND chunk at the end. "
                f"Received: {len(data)} bytes ending inside or after chunk {count}"
            )
        length, kind = struct.unpack_from(">I4s", data, pos)
        if length > 2**31 - 1 or not kind.isalpha():
            raise ImageError(
                f"Corrupted PNG file. Expected a chunk header at byte {pos}. Received: type {kind!r}, length {length}"
            )
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ImageError(
                f"Truncated PNG file. Expected {end + 4} bytes for the {kind.decode()} chunk. Received: {len(data)}"
            )
        body = view[pos + 8 : end]
        (crc,) = struct.unpack_from(">I", data, end)
        if crc != zlib.crc32(body, zlib.crc32(kind)):  # a changed byte anywhere in the chunk
            raise ImageError(
                f"Corrupted PNG file: the {kind.decode()} chunk at byte {pos} fails its CRC check. "
                f"Expected CRC {zlib.crc32(body, zlib.crc32(kind)):#010x}. Received: {crc:#010x}"
            )
        count += 1
        if count > _MAX_CHUNKS:
            raise ImageError(f"Unsupported PNG. Expected at most {_MAX_CHUNKS} chunks. Received: more")
        yield kind, body
        if kind == b"IEND":
            return  # bytes after IEND are ignored, as libpng does
        pos = end + 4


def _header(body: memoryview) -> tuple[int, int, int, int, int]:
    """Validate IHDR; return ``(width, height, depth, colour, interlace)``."""
    if len(body) != 13:
        raise ImageError(f"Corrupted PNG file. Expected a 13-byte IHDR chunk. Received: {len(body)} bytes")
    width, height, depth, color, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise ImageError(
            f"Unsupported PNG size. Expected width and height 1 to {MAX_SIDE} and at most {MAX_PIXELS} pixels. "
            f"Received: {width}x{height}"
        )
    if color not in _DEPTHS or depth not in _DEPTHS[color]:
        raise ImageError(
            "Corrupted PNG header. Expected a colour type and bit depth from the PNG standard (gray 1/2/4/8/16, "
            f"RGB 8/16, palette 1/2/4/8, gray+alpha 8/16, RGBA 8/16). Received: colour type {color}, bit depth {depth}"
        )
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise ImageError(
            "Corrupted PNG header. Expected compression method 0, filter method 0 and interlace method 0 or 1. "
            f"Received: {compression}, {filtering}, {interlace}"
        )
    if height * ((width * _CHANNELS[color] * depth + 7) // 8) > 4 * MAX_PIXELS:
        raise ImageError(
            f"Unsupported PNG size. Expected at most {4 * MAX_PIXELS} bytes of samples. Received: {width}x{height} "
            f"pixels of {_CHANNELS[color]} {depth}-bit samples"
        )
    return width, height, depth, color, interlace


def _parse(data: bytes):
    """Walk the chunks in order; return the header, the palette (or None) and the compressed data."""
    header, palette, idat, idat_done = None, None, [], False
    for kind, body in _chunks(data):
        if header is None and kind != b"IHDR":
            raise ImageError(f"Corrupted PNG file. Expected IHDR as the first chunk. Received: {kind.decode()}")
        if kind == b"IHDR":
            if header is not None:
                raise ImageError("Corrupted PNG file. Expected one IHDR chunk. Received: a second one")
            header = _header(body)
        elif kind == b"PLTE":
            if palette is not None or idat:
                raise ImageError("Corrupted PNG file. Expected one PLTE chunk before the image data. Received: another")
            depth, color = header[2], header[3]
            entries = 1 << depth if color == 3 else 256
            if len(body) == 0 or len(body) % 3 or len(body) > 3 * entries:
                raise ImageError(
                    f"Corrupted PNG palette. Expected 1 to {entries} RGB entries (a multiple of 3 bytes). "
                    f"Received: {len(body)} bytes"
                )
            if color in (0, 4):
                raise ImageError(f"Corrupted PNG file. Expected no PLTE chunk in a colour type {color} image. Received: one")
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            if idat_done:
                raise ImageError("Corrupted PNG file. Expected consecutive IDAT chunks. Received: IDAT after other chunks")
            idat.append(body)
        elif kind == b"IEND":
            if len(body):
                raise ImageError(f"Corrupted PNG file. Expected an empty IEND chunk. Received: {len(body)} bytes")
        elif kind[0] < ord("a"):  # an unknown critical chunk (upper-case first letter): the image needs it
            raise ImageError(f"Unsupported PNG. Expected only known critical chunks. Received: {kind.decode()}")
        elif idat:
            idat_done = True
    if not idat:
        raise ImageError("Corrupted PNG file. Expected at least one IDAT chunk. Received: none")
    if header[3] == 3 and palette is None:
        raise ImageError("Corrupted PNG file. Expected a PLTE chunk in a palette image. Received: none")
    return header, palette, b"".join(idat)


def _inflate(compressed: bytes, size: int) -> bytes:
    """Inflate exactly ``size`` bytes; never more than ``size + 1`` (a zlib bomb stops here)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, size + 1)
    except zlib.error as e:
        raise ImageError(f"Corrupted PNG data. Expected a zlib stream. Received: bytes zlib refuses ({e})") from None
    if len(raw) != size or not inflater.eof:
        got = f"{len(raw)}" if len(raw) <= size else "more"
        raise ImageError(
            f"Corrupted PNG data. Expected {size} bytes in one complete zlib stream. Received: {got} bytes"
            + ("" if len(raw) > size or inflater.eof else " (the stream is cut short)")
        )
    return raw


def _unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo the per-row PNG filters (spec section 9) of ``[height, 1 + stride]``; return ``[height, stride // bpp, bpp]``.

    Byte ``x`` of a row is predicted from ``a`` (the byte ``bpp`` to its left), ``b`` (above) and ``c``
    (above-left), all already decoded. None and Sub rows need nothing from other rows: done first,
    Sub as a wrapping cumulative sum. Up rows only add the row above. Average and Paeth are sequential
    along the row, but pixel ``(y, x)`` depends only on ``(y, x-1)``, ``(y-1, x)`` and ``(y-1, x-1)``,
    so every pixel on an anti-diagonal ``y + x = d`` is independent of the others: one numpy step
    per diagonal (``width + height`` steps in all) decodes all rows at once.
    """
    height, stride = rows.shape[0], rows.shape[1] - 1
    width = stride // bpp  # in pixels of bpp bytes (one byte per step for depths below 8)
    filters = rows[:, 0]
    if int(filters.max()) > 4:
        y = int(np.argmax(filters > 4))
        raise ImageError(f"Corrupted PNG data. Expected filter types 0 to 4. Received: {int(filters[y])} in row {y}")
    # A zero row above and a zero pixel on the left: a, b, c outside the image are 0 (spec 9.2).
    padded = np.zeros((height + 1, width + 1, bpp), np.uint8)
    padded[1:, 1:] = rows[:, 1:].reshape(height, width, bpp)
    sub = np.flatnonzero(filters == 1) + 1
    if sub.size:
        padded[sub, 1:] = np.cumsum(padded[sub, 1:], axis=1, dtype=np.uint8)  # uint8 wraps modulo 256
    sequential = np.flatnonzero(filters >= 3)
    first = int(sequential[0]) if sequential.size else height
    for y in np.flatnonzero(filters[:first] == 2) + 1:  # in order: chains of Up rows
        padded[y] += padded[y - 1]
    if first < height:
        _unfilter_diagonals(padded, filters, first + 1)
    return padded[1:, 1:]  # a view: no copy of what may be 64 MiB


def _unfilter_diagonals(padded: np.ndarray, filters: np.ndarray, start: int) -> None:
    """Decode Up/Average/Paeth rows ``start..`` of ``padded`` (row 0 is the zero row) in place."""
    rows, cols, bpp = padded.shape  # height + 1, width + 1
    width = cols - 1
    # diag[d, r] is padded[r, d - r] (valid for 0 <= d - r <= width): rows advance by width pixels.
    diag = as_strided(padded, shape=(rows + cols - 1, rows, bpp), strides=(bpp, width * bpp, 1))
    kind = np.zeros(rows, np.int8)
    kind[1:] = np.where(filters >= 2, filters, 0)  # None and Sub rows are already final
    kind = kind[:, None]
    paeth = bool((kind[start:] == 4).any())
    only_paeth = paeth and bool((kind[start:] == 4).all())
    for d in range(start + 1, rows + cols - 1):
        lo, hi = max(start, d - width), min(rows - 1, d - 1) + 1  # rows whose column d - r is in 1..width
        a = diag[d - 1, lo:hi].astype(np.int16)
        b = diag[d - 1, lo - 1 : hi - 1].astype(np.int16)
        c = diag[d - 2, lo - 1 : hi - 1].astype(np.int16)
        k = kind[lo:hi]
        if paeth:  # p = a + b - c; predict whichever of a, b, c is nearest p (ties: a, then b)
            pa, pb = np.abs(b - c), np.abs(a - c)
            pc = np.abs(a + b - 2 * c)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
            if not only_paeth:
                pred = np.where(k == 4, pred, np.where(k == 3, (a + b) >> 1, np.where(k == 2, b, 0)))
        else:
            pred = np.where(k == 3, (a + b) >> 1, np.where(k == 2, b, 0))
        diag[d, lo:hi] += pred.astype(np.uint8)


def _samples(buf: np.ndarray, width: int, channels: int, depth: int, color: int) -> np.ndarray:
    """Unfiltered bytes ``[height, stride // bpp, bpp]`` -> samples ``[height, width, channels]`` uint8."""
    height = buf.shape[0]
    if depth == 8:  # bpp == channels
        return buf
    if depth == 16:  # big-endian: the high byte is the 8-bit value (what Pillow keeps for RGB)
        return buf.reshape(height, width, channels, 2)[..., 0]
    bits = np.unpackbits(buf[..., 0], axis=1)[:, : width * depth].reshape(height, width, depth)
    values = (bits << np.arange(depth - 1, -1, -1, dtype=np.uint8)).sum(axis=-1, dtype=np.uint8)
    if color == 0:
        values *= np.uint8(255 // ((1 << depth) - 1))  # 1-bit 0/255, 2-bit x85, 4-bit x17: exact
    return values[..., None]


def decode_png(data: bytes) -> np.ndarray:
    """Decode a non-interlaced PNG to ``[height, width, channels]`` uint8 (gray, gray+alpha, RGB or RGBA).

    Palette images come out as RGB. Raises :class:`ImageError` for anything that is not a valid PNG
    within :data:`MAX_SIDE` and :data:`MAX_PIXELS` (see the module guide for every check).
    """
    if not data.startswith(_PNG_SIG):
        raise ImageError(f"Not a PNG file. Expected the PNG signature. Received: {bytes(data[:8])!r}")
    (width, height, depth, color, interlace), palette, compressed = _parse(data)
    if interlace:
        raise _UnsupportedPNG(
            "Unsupported PNG. Expected a non-interlaced PNG (install Pillow for interlaced ones). "
            "Received: Adam7 interlacing"
        )
    channels = _CHANNELS[color]
    bits_per_pixel = channels * depth
    stride = (width * bits_per_pixel + 7) // 8
    raw = _inflate(compressed, height * (stride + 1))
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    img = _samples(_unfilter(rows, max(1, bits_per_pixel // 8)), width, channels, depth, color)
    if color == 3:  # an index past the palette is black, as in libpng and Pillow (which write such files)
        full = np.zeros((256, 3), np.uint8)
        full[: len(palette)] = palette
        img = full[img[..., 0]]
    return np.ascontiguousarray(img)


def _read_any(path: Path) -> np.ndarray:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(f"Image file too large. Expected at most {MAX_FILE_BYTES} bytes. Received: {size} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"Cannot read image {str(path)!r}: {e.strerror or e}") from None
    if data.startswith(_PNG_SIG):
        try:
            return decode_png(data)
        except _UnsupportedPNG:
            pass  # a well-formed variant we do not decode (interlaced): let Pillow try, if installed
        # A damaged PNG (bad CRC, truncated, malformed) was refused above, not handed to Pillow,
        # which does not check every CRC; the size caps were checked before this point too.
    try:
        from PIL import Image
    except ImportError:
        kind = "PNG variant" if data.startswith(_PNG_SIG) else "JPEG" if data[:3] == b"\xff\xd8\xff" else "image"
        raise ImageError(
            f"Cannot decode {str(path)!r} without Pillow. Expected a non-interlaced PNG (decoded without Pillow) "
            f"or Pillow installed (pip install pillow). Received: a {kind}"
        ) from None
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(f"Unsupported image size. Expected at most {MAX_PIXELS} pixels. Received: {im.size}")
            im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB" if im.mode != "L" else "L")
            arr = np.asarray(im)
    except ImageError:
        raise
    except Exception as e:  # Pillow raises many types for bad files
        raise ImageError(f"Cannot read image {str(path)!r}: {e}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    have = img.shape[-1]
    if have in (2, 4):  # drop alpha (composite over black would change the pixel values)
        img, have = img[..., : have - 1], have - 1
    if have == channels:
        return img.astype(np.float32)
    if have == 3 and channels == 1:
        rgb = img.astype(np.float32)
        return (rgb[..., :1] * 0.299 + rgb[..., 1:2] * 0.587 + rgb[..., 2:3] * 0.114)
    if have == 1 and channels == 3:
        return np.repeat(img, 3, axis=-1).astype(np.float32)
    raise ImageError(f"Cannot convert a {have}-channel image. Expected 1 or 3 channels. Received: {channels}")


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``[h, w, c]`` float32 with half-pixel centres."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img

    def grid(n_out, n_in):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = grid(height, h)
    x0, x1, fx = grid(width, w)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def load_image(path: str | os.PathLike, spec: dict) -> np.ndarray:
    """Read an image and turn it into one model input ``[height, width, channels]`` float32.

    ``spec`` is the metadata's ``input.image`` (height, width, channels, scale, offset).
    """
    try:
        height, width, channels = int(spec["height"]), int(spec["width"]), int(spec["channels"])
        scale, offset = float(spec["scale"]), float(spec.get("offset", 0.0))
    except (KeyError, TypeError, ValueError):
        raise ImageError(
            "The model's input.image metadata is incomplete. Expected height, width, channels, scale, offset. "
            f"Received: {spec!r}"
        ) from None
    img = _read_any(Path(path))
    img = resize_bilinear(_to_channels(img, channels), height, width)
    return (img * np.float32(scale) + np.float32(offset)).astype(np.float32)
