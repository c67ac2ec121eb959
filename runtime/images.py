"""Turn an 8-bit image file into a model input, as the model's metadata says (no Pillow needed).

>>> from edgekit.runtime.images import load_image
>>> x = load_image("shoe.png", {"height": 28, "width": 28, "channels": 1,
...                             "scale": 1 / 255, "offset": 0.0})
>>> x.shape, x.dtype
((28, 28, 1), dtype('float32'))

PNG is decoded here with ``zlib`` (8-bit grayscale, gray+alpha, RGB, RGBA and palette images,
non-interlaced), because the base install (what a device gets) has no Pillow. JPEG needs Pillow
(``pip install pillow``); without it the error says so. The image is converted to the model's
channel count (RGB to gray with the ITU-R 601 luma weights Pillow uses), resized to
``height x width`` with bilinear interpolation (half-pixel centres), then ``x = pixel * scale +
offset``.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["ImageError", "decode_png", "load_image", "resize_bilinear"]

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


class ImageError(ValueError):
    """The image cannot be read or does not fit the model."""


class _UnsupportedPNG(ImageError):
    """A well-formed PNG variant this decoder does not handle (Pillow may)."""


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a.astype(np.int16) + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)


def decode_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced PNG to ``[height, width, channels]`` uint8 (RGB(A) or gray(+A))."""
    if not data.startswith(_PNG_SIG):
        raise ImageError("Not a PNG file. Expected the PNG signature. Received: other bytes")
    pos, idat, header, palette = 8, [], None, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise ImageError("Truncated PNG file.")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:  # a changed byte
            raise ImageError(f"Corrupted PNG file: the {kind.decode('latin-1')!r} chunk fails its CRC check.")
        if kind == b"IHDR":
            if length != 13:
                raise ImageError(f"Corrupted PNG file. Expected a 13-byte IHDR chunk. Received: {length} bytes")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            if length == 0 or length % 3 or length > 3 * 256:
                raise ImageError(f"Corrupted PNG palette. Expected 1 to 256 RGB entries. Received: {length} bytes")
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ImageError("PNG file has no IHDR chunk.")
    width, height, depth, color, _comp, _filter, interlace = header
    if depth != 8 or interlace != 0 or color not in _CHANNELS:
        raise _UnsupportedPNG(
            "Unsupported PNG. Expected 8-bit, non-interlaced grayscale/RGB/RGBA/palette. Received: "
            f"bit depth {depth}, colour type {color}, interlace {interlace} (install Pillow for other PNGs)"
        )
    if width * height > 64 * 2**20 or width == 0 or height == 0:
        raise ImageError(f"Unsupported PNG size. Expected 1 to 64 Mpixel. Received: {width}x{height}")
    bpp = _CHANNELS[color]
    try:  # inflate no more than the image needs (+1 to notice extra data): a zlib bomb stops here
        raw = zlib.decompressobj().decompress(b"".join(idat), height * (width * bpp + 1) + 1)
    except zlib.error as e:
        raise ImageError(f"Corrupted PNG data: {e}") from None
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        raise ImageError(f"Corrupted PNG data. Expected {height * (stride + 1)} bytes. Received: {len(raw)}")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        f, line = rows[y, 0], rows[y, 1:].copy()
        if f == 1:  # Sub: a running sum over the pixels of each channel, modulo 256
            line = (np.cumsum(line.reshape(width, bpp).astype(np.uint32), axis=0) & 0xFF).astype(np.uint8).ravel()
        elif f == 2:
            line = (line.astype(np.uint16) + prev).astype(np.uint8)
        elif f in (3, 4):  # Average, Paeth: sequential by nature (slow in Python for big images)
            for i in range(stride):
                left = int(line[i - bpp]) if i >= bpp else 0
                up = int(prev[i])
                if f == 3:
                    pred = (left + up) // 2
                else:
                    ul = int(prev[i - bpp]) if i >= bpp else 0
                    pred = int(_paeth(np.uint8(left), np.uint8(up), np.uint8(ul)))
                line[i] = (int(line[i]) + pred) & 0xFF
        elif f != 0:
            raise ImageError(f"Corrupted PNG data: unknown filter type {int(f)}.")
        out[y] = line
        prev = line
    img = out.reshape(height, width, bpp)
    if color == 3:
        if palette is None:
            raise ImageError("Palette PNG without a PLTE chunk.")
        img = palette[np.minimum(img[..., 0], len(palette) - 1)]
    return img


def _read_any(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if data.startswith(_PNG_SIG):
        try:
            return decode_png(data)
        except _UnsupportedPNG:
            pass  # let Pillow try the PNG variants we do not decode, if it is installed
        # A damaged PNG (bad CRC, truncated, malformed) is refused here, not handed to Pillow,
        # which does not check every CRC.
    try:
        from PIL import Image
    except ImportError:
        kind = "PNG variant" if data.startswith(_PNG_SIG) else "JPEG" if data[:3] == b"\xff\xd8\xff" else "image"
        raise ImageError(
            f"Cannot decode {str(path)!r} without Pillow. Expected an 8-bit PNG (decoded without Pillow) or "
            f"Pillow installed (pip install pillow). Received: a {kind}"
        ) from None
    try:
        with Image.open(path) as im:
            im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB" if im.mode != "L" else "L")
            arr = np.asarray(im)
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
