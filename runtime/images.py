"""Turn an image file into a model input, as the model's metadata says.

>>> from edgekit.runtime.images import load_image
>>> x = load_image("shoe.png", {"height": 28, "width": 28, "channels": 1,
...                             "scale": 1 / 255, "offset": 0.0})
>>> x.shape, x.dtype
((28, 28, 1), dtype('float32'))

Pillow (part of the base install) decodes the file: PNG (every colour type and bit depth,
interlaced too), JPEG, WebP and BMP; an animated file gives its first frame, and EXIF orientation
is not applied (as ``tf.io.decode_image``). The image is then converted to the model's channel
count with Pillow's ``convert`` (RGB to gray with the ITU-R 601-2 luma weights; alpha is dropped,
not composited; 16-bit samples keep their high byte), resized to ``height x width`` by
:func:`resize_bilinear` (bilinear, half-pixel centres, as ``tf.image.resize`` does, so an image
reaches the model as it reached a model trained on resized images; Pillow's own filters widen
when they shrink an image and would give other pixels), and scaled: ``x = pixel * scale + offset``.

An image file is untrusted input, so before Pillow decodes a pixel:

- at most :data:`MAX_FILE_BYTES` are read;
- only Pillow's PNG, JPEG, WebP and BMP readers are reached (``Image.open(formats=...)``), never
  the many other formats Pillow knows (some hand the file to external programs);
- the size the header declares is checked against :data:`MAX_SIDE` and :data:`MAX_PIXELS`. Pillow's
  own guard (``Image.MAX_IMAGE_PIXELS``: a ``DecompressionBombWarning``, then a
  ``DecompressionBombError`` at twice that) sits far above them; it is process-wide state that the
  caller's own code may rely on, so it is left as it is, and its warning is an error here;
- what Pillow reads in Python, one piece at a time, is bounded, because a file made of millions of
  tiny pieces would take seconds per megabyte: at most :data:`MAX_PNG_CHUNKS` PNG chunks, at most
  :data:`MAX_JPEG_HEADER_BYTES` of JPEG markers before the image data, at most
  :data:`MAX_JPEG_SCANS` JPEG scans (libjpeg makes a pass over the whole image for each one), and
  no RLE-compressed BMP (Pillow decodes those pixel by pixel in Python);
- a PNG's chunks are CRC-checked (Pillow's ``verify()``) and its fixed 12-byte ``IEND`` chunk must be
  there, so a changed byte is refused instead of silently giving other pixels (Pillow skips the
  CRC of the image data when it decodes).

Pillow inflates only as much compressed data as the declared size needs, so a small file whose
data inflates to gigabytes (a zlib bomb) costs nothing. Every failure ends in :class:`ImageError`
(a ``ValueError``), with an "Expected ... Received ..." message, which ``edgekit predict`` prints as
one ``Error:`` line with exit status 1.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

__all__ = [
    "FORMATS",
    "MAX_FILE_BYTES",
    "MAX_JPEG_HEADER_BYTES",
    "MAX_JPEG_SCANS",
    "MAX_PIXELS",
    "MAX_PNG_CHUNKS",
    "MAX_SIDE",
    "SUFFIXES",
    "ImageError",
    "decode_image",
    "load_image",
    "resize_bilinear",
]

FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
"""The image formats read (Pillow's names for them)."""
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""File name suffixes ``edgekit predict`` reads as images."""

MAX_SIDE = 8192
"""Largest image width or height accepted (model inputs are tiny; this bounds memory and time)."""
MAX_PIXELS = 1 << 24
"""Largest pixel count accepted (16.8 Mpixel, e.g. 4096x4096)."""
MAX_FILE_BYTES = 256 << 20
"""Largest image file read (a valid image of :data:`MAX_PIXELS` pixels is far smaller)."""
MAX_PNG_CHUNKS = 1 << 18
"""Most chunks a PNG may have (encoders write the image data in 8-64 KiB chunks)."""
MAX_JPEG_HEADER_BYTES = 2 << 20
"""Most bytes of markers (EXIF, ICC profile, comments) a JPEG may have before its image data."""
MAX_JPEG_SCANS = 100
"""Most scans a JPEG may have (a progressive JPEG has about ten)."""

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # length 0, type, CRC32 of b"IEND": the same in every PNG
_JPEG_SOS = b"\xff\xda"  # start of scan; 0xFF in entropy-coded data is always followed by 0x00
_BMP_RLE = (1, 2)  # BI_RLE8, BI_RLE4
_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP"}
_ACCEPTED = "a PNG, JPEG, WebP or BMP image"


class ImageError(EdgekitError, ValueError):
    """The image cannot be read or does not fit the model."""


def _format_of(data: bytes) -> str | None:
    """Pillow's name for the format the first bytes announce, or None (the magic numbers Pillow checks)."""
    if data.startswith(_PNG_SIG):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return None


def _count_png_chunks(data: bytes) -> None:
    """Refuse a PNG of more than :data:`MAX_PNG_CHUNKS` chunks; its damage is left to Pillow to find."""
    pos, count = len(_PNG_SIG), 0
    while pos + 8 <= len(data):
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise ImageError(f"Unsupported PNG. Expected at most {MAX_PNG_CHUNKS} chunks. Received: more")
        if data[pos + 4 : pos + 8] == b"IEND":
            return
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")  # length, type, body, CRC


def _check_jpeg(data: bytes) -> None:
    from PIL import Image

    scans = data.count(_JPEG_SOS)  # an upper bound: the bytes may also occur inside metadata
    if scans > MAX_JPEG_SCANS:
        raise ImageError(f"Unsupported JPEG. Expected at most {MAX_JPEG_SCANS} scans. Received: {scans}")
    if len(data) > MAX_JPEG_HEADER_BYTES:
        # Pillow walks the markers before the image data in Python: let it see only the first
        # MAX_JPEG_HEADER_BYTES. A header that ends there leaves Pillow a tile to decode.
        try:
            with Image.open(io.BytesIO(data[:MAX_JPEG_HEADER_BYTES]), formats=["JPEG"]) as head:
                found = bool(head.tile)
        except Exception:  # Pillow raises many types for what it cannot read: the file is refused below
            found = False
        if not found:
            raise ImageError(
                f"Unsupported JPEG. Expected its image data to start within its first {MAX_JPEG_HEADER_BYTES} bytes "
                "(after the markers and metadata). Received: no image data there"
            )


def _check_size(im, kind: str) -> None:
    width, height = im.size
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise ImageError(
            f"Unsupported {_NAMES[kind]} size. Expected width and height 1 to {MAX_SIDE} and at most {MAX_PIXELS} "
            f"pixels. Received: {width}x{height}"
        )
    if kind == "BMP" and im.info.get("compression") in _BMP_RLE:
        raise ImageError("Unsupported BMP. Expected an uncompressed BMP. Received: RLE compression")


def _pixels(im, channels: int) -> np.ndarray:
    """The decoded image as ``[height, width, channels]`` uint8 (1: gray, 3: RGB)."""
    from PIL import Image

    if im.mode.startswith("I"):  # 16-bit gray ("I;16", "I;16B", "I"): keep the high byte
        values = np.asarray(im).astype(np.int64)
        im = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")
    mode = "L" if channels == 1 else "RGB"
    if im.mode != mode:
        im = im.convert(mode)
    arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_image(data: bytes, *, channels: int) -> np.ndarray:
    """Decode a PNG, JPEG, WebP or BMP file's bytes to ``[height, width, channels]`` uint8.

    ``channels`` is 1 (gray) or 3 (RGB). Raises :class:`ImageError` for anything that is not such
    an image within the limits of this module (see the module guide).
    """
    if channels not in (1, 3):
        raise ImageError(f"Cannot convert an image to {channels} channels. Expected 1 or 3. Received: {channels}")
    data = bytes(data)
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"Image too large. Expected at most {MAX_FILE_BYTES} bytes. Received: {len(data)} bytes")
    kind = _format_of(data)
    if kind is None:
        got = "an empty file" if not data else f"a file starting {data[:8]!r}"
        raise ImageError(f"Unsupported image. Expected {_ACCEPTED}. Received: {got}")
    name = _NAMES[kind]
    # Imported here: an .npy input, and `import edgekit.runtime`, never pay for Pillow (~10 ms).
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on metadata edgekit does not use (EXIF, ICC)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if kind == "PNG":
                _count_png_chunks(data)
            elif kind == "JPEG":
                _check_jpeg(data)
            with Image.open(io.BytesIO(data), formats=[kind]) as im:  # reads the header only
                _check_size(im, kind)
                if kind == "PNG":
                    im.verify()  # every chunk's CRC, from the image data to IEND
            if kind == "PNG" and _IEND not in data:
                raise ImageError("Corrupted PNG file. Expected an intact IEND chunk at its end. Received: none")
            with Image.open(io.BytesIO(data), formats=[kind]) as im:
                im.load()
                return _pixels(im, channels)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(
            f"Unsupported {name} size. Expected at most {MAX_PIXELS} pixels. Received: {_line(e)}"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"Corrupted {name} file. Expected {_ACCEPTED}. Received: a file Pillow cannot read as {name} "
            f"(starting {data[:8]!r})"
        ) from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, even IndexError for bad files
        raise ImageError(
            f"Corrupted {name} file. Expected a complete, undamaged {name}. Received: {type(e).__name__}: {_line(e)}"
        ) from None


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


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


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(f"Image file too large. Expected at most {MAX_FILE_BYTES} bytes. Received: {size} bytes")
        return path.read_bytes()
    except OSError as e:
        raise ImageError(
            f"Cannot read image {str(path)!r}. Expected a readable file. Received: {e.strerror or e}"
        ) from None


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
    if channels not in (1, 3):
        raise ImageError(f"Cannot convert an image to {channels} channels. Expected 1 or 3. Received: {channels}")
    img = decode_image(_read(Path(path)), channels=channels).astype(np.float32)
    img = resize_bilinear(img, height, width)
    return (img * np.float32(scale) + np.float32(offset)).astype(np.float32)
