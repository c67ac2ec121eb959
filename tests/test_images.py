"""``edgekit.runtime.images``: Pillow behind strict bounds, checked against the image standards.

No TensorFlow and no model: these tests feed image bytes to :func:`decode_image` and
:func:`load_image`. PNG pixels are checked against a per-byte transcription of the PNG
specification's filters (section 9) and an Adam7 interlacer written from the standard (section
8.2), so they test what a file *means*, not what Pillow happens to return; the other formats
round-trip through Pillow's encoders. Every malformed or hostile file must raise
:class:`ImageError` (a ``ValueError``, which ``edgekit predict`` prints as one ``Error:`` line)
naming what was expected. ``tests/test_robust_images.py`` runs a fuzzed corpus through
``edgekit predict`` itself.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from fuzz.images import bmp
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edgekit.runtime.images import (
    MAX_FILE_BYTES,
    MAX_JPEG_HEADER_BYTES,
    MAX_JPEG_SCANS,
    MAX_PIXELS,
    MAX_PNG_CHUNKS,
    MAX_SIDE,
    ImageError,
    decode_image,
    load_image,
)

SIG = b"\x89PNG\r\n\x1a\n"
GRAY = {"height": 0, "width": 0, "channels": 1, "scale": 1.0, "offset": 0.0}


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def ihdr(width, height, depth=8, color=0, compression=0, filtering=0, interlace=0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, compression, filtering, interlace))


def png(width, height, raw: bytes, *, depth=8, color=0, plte: bytes | None = None, interlace=0) -> bytes:
    """A PNG whose scanlines (filter byte + stored bytes) are exactly ``raw``."""
    return (SIG + ihdr(width, height, depth, color, interlace=interlace)
            + (chunk(b"PLTE", plte) if plte is not None else b"") + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def gray(width=4, height=3, fill=0) -> bytes:
    return png(width, height, b"".join(b"\x00" + bytes([fill]) * width for _ in range(height)))


def reference_unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """PNG spec section 9.2-9.4, one byte at a time (the obvious, slow reading of the standard)."""
    out, prev = [], [0] * (rows.shape[1] - 1)
    for filt, *line in rows.tolist():
        for i in range(len(line)):
            a, b = (line[i - bpp] if i >= bpp else 0), prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            else:
                pred = (0, a, b, (a + b) // 2)[filt]
            line[i] = (line[i] + pred) % 256
        out.append(line)
        prev = line
    return np.array(out, np.uint8)


def _without_alpha(pixels: np.ndarray, color: int) -> tuple[np.ndarray, int]:
    """(the colour samples of ``[h, w, samples]``, the channel count to ask for)."""
    if color in (4, 6):  # gray+alpha, RGBA: alpha is dropped
        pixels = pixels[..., :-1]
    return pixels, 1 if color in (0, 4) else 3


# Every filter mix matters to a decoder that treats rows of None/Sub, Up and Average/Paeth apart.
FILTER_SETS = [(0,), (1,), (2,), (3,), (4,), (0, 1, 2), (3, 4), (2, 4), (1, 3), (0, 1, 2, 3, 4)]
LAYOUTS = [(0, 8, 1), (4, 8, 2), (2, 8, 3), (6, 8, 4), (0, 16, 2), (4, 16, 4), (2, 16, 6), (6, 16, 8)]


@settings(max_examples=80, deadline=None)
@given(
    width=st.integers(1, 9),
    height=st.integers(1, 9),
    layout=st.sampled_from(LAYOUTS),
    filters=st.sampled_from(FILTER_SETS),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_filter_and_layout_decodes_to_the_spec_pixels(width, height, layout, filters, seed):
    color, depth, bpp = layout  # bpp: bytes per pixel, the distance to the "left" byte
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (height, 1 + width * bpp), dtype=np.uint8)
    rows[:, 0] = rng.choice(filters, height)
    want = reference_unfilter(rows, bpp).reshape(height, width, -1)
    if depth == 16:
        want = want[..., 0::2]  # samples are big-endian; 8 bits keep the high byte
    want, channels = _without_alpha(want, color)
    got = decode_image(png(width, height, rows.tobytes(), depth=depth, color=color), channels=channels)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_large_paeth_and_average_image_matches_the_spec():
    # 40x37 RGB: rows of all five filters interleave, with a run of Paeth rows.
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 256, (37, 1 + 40 * 3), dtype=np.uint8)
    rows[:, 0] = np.arange(37) % 5
    rows[10:20, 0] = 4
    want = reference_unfilter(rows, 3).reshape(37, 40, 3)
    np.testing.assert_array_equal(decode_image(png(40, 37, rows.tobytes(), color=2), channels=3), want)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_low_bit_depth_gray_is_scaled_to_0_255(depth):
    rng = np.random.default_rng(depth)
    values = rng.integers(0, 1 << depth, (5, 11), dtype=np.uint8)
    bits = np.unpackbits(values[..., None], axis=-1)[..., 8 - depth :].reshape(5, -1)
    packed = np.packbits(bits, axis=1)  # rows padded to whole bytes, as the standard says
    raw = b"".join(b"\x00" + row.tobytes() for row in packed)
    got = decode_image(png(11, 5, raw, depth=depth), channels=1)
    np.testing.assert_array_equal(got[..., 0], values * (255 // ((1 << depth) - 1)))


@pytest.mark.parametrize("depth,entries", [(1, 2), (2, 4), (4, 16), (8, 200)])
def test_palette_images_look_up_their_palette(depth, entries):
    rng = np.random.default_rng(depth)
    index = rng.integers(0, entries, (9, 14), dtype=np.uint8)
    palette = rng.integers(0, 256, (entries, 3), dtype=np.uint8)
    bits = np.unpackbits(index[..., None], axis=-1)[..., 8 - depth :].reshape(9, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in np.packbits(bits, axis=1))
    got = decode_image(png(14, 9, raw, depth=depth, color=3, plte=palette.tobytes()), channels=3)
    np.testing.assert_array_equal(got, palette[index])


def test_sixteen_bit_gray_keeps_the_high_byte():
    values = np.random.default_rng(3).integers(0, 65536, (6, 10)).astype(np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    np.testing.assert_array_equal(decode_image(png(10, 6, raw, depth=16), channels=1)[..., 0], values >> 8)


def test_palette_index_past_the_palette_is_black():
    # libpng and Pillow read such indices as black (Pillow itself writes such files).
    plte = bytes([10, 20, 30, 40, 50, 60])
    img = decode_image(png(3, 1, b"\x00" + bytes([0, 1, 7]), color=3, plte=plte), channels=3)
    np.testing.assert_array_equal(img[0], [[10, 20, 30], [40, 50, 60], [0, 0, 0]])


def test_ancillary_chunks_split_idat_and_bytes_after_iend_are_fine():
    raw = b"".join(b"\x00" + bytes([5 * y] * 4) for y in range(3))
    comp = zlib.compress(raw)
    data = (SIG + ihdr(4, 3) + chunk(b"tEXt", b"k\x00v") + chunk(b"IDAT", comp[:5]) + chunk(b"IDAT", comp[5:])
            + chunk(b"tIME", bytes(7)) + chunk(b"IEND", b"") + b"trailing junk")
    np.testing.assert_array_equal(decode_image(data, channels=1)[:, :, 0], np.repeat([[0], [5], [10]], 4, axis=1))


# Adam7 (PNG spec section 8.2): (x0, y0, dx, dy) of the seven passes.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _adam7(values: np.ndarray) -> bytes:
    """The scanlines of an interlaced 8-bit gray image: each pass's sub-image, filter 0 on every row."""
    raw = b""
    for x0, y0, dx, dy in _ADAM7:
        sub = values[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    return raw


@pytest.mark.parametrize("shape", [(9, 9), (1, 1), (13, 5), (3, 17)])
def test_interlaced_png_decodes_exactly(shape):
    values = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    data = png(shape[1], shape[0], _adam7(values), interlace=1)
    np.testing.assert_array_equal(decode_image(data, channels=1)[..., 0], values)


def test_damaged_interlaced_png_is_refused():
    values = np.arange(81, dtype=np.uint8).reshape(9, 9)
    data = bytearray(png(9, 9, _adam7(values), interlace=1))
    data[-20] ^= 0x10  # inside the IDAT data: only the CRC tells
    with pytest.raises(ImageError, match="checksum"):
        decode_image(bytes(data), channels=1)


def _encode(img: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **kwargs)
    return buf.getvalue()


def _smooth_rgb(height=14, width=16) -> np.ndarray:
    """Three ramps within 0..240 (no wrap-around: a smooth image, which JPEG keeps closely)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 240 // width, yy * 240 // height, (xx + yy) * 120 // max(width, height)], -1).astype(np.uint8)


@pytest.mark.parametrize("fmt, kwargs", [("WEBP", {"lossless": True}), ("BMP", {}), ("PNG", {"optimize": True})])
def test_lossless_formats_round_trip_exactly(fmt, kwargs):
    img = _smooth_rgb()
    np.testing.assert_array_equal(decode_image(_encode(img, fmt, **kwargs), channels=3), img)


def test_jpeg_decodes_close_to_what_was_encoded():
    img = _smooth_rgb(32, 32)
    got = decode_image(_encode(img, "JPEG", quality=95, subsampling=0), channels=3).astype(int)
    # JPEG is lossy: quality 95 without chroma subsampling quantizes a smooth ramp's DCT
    # coefficients by a few levels at most; 6 levels (of 255) allows that, a wrong decode is far off.
    assert got.shape == img.shape and np.abs(got - img).max() <= 6


def test_rgb_to_gray_uses_the_itu_r_601_luma_and_alpha_is_dropped():
    img = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    luma = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    got = decode_image(_encode(img, "PNG"), channels=1)[..., 0].astype(float)
    assert np.abs(got - luma).max() <= 0.5 + 1e-6  # Pillow rounds to the nearest integer
    rgba = np.concatenate([img, np.zeros((5, 7, 1), np.uint8)], axis=-1)  # fully transparent
    np.testing.assert_array_equal(decode_image(_encode(rgba, "PNG"), channels=3), img)  # not composited
    gray_img = img[..., 0]
    want = np.repeat(gray_img[..., None], 3, -1)
    np.testing.assert_array_equal(decode_image(_encode(gray_img, "PNG"), channels=3), want)


def _bad(name):
    ok_raw = b"".join(b"\x00" + bytes(4) for _ in range(3))
    ok_idat = chunk(b"IDAT", zlib.compress(ok_raw))
    end = chunk(b"IEND", b"")
    cases = {
        "no signature": (b"GIF89a" + bytes(40), "Expected a PNG, JPEG, WebP or BMP image"),
        "only signature": (SIG, "Corrupted PNG"),
        "ihdr 12 bytes": (SIG + chunk(b"IHDR", bytes(12)) + ok_idat + end, "IHDR"),
        "width 0": (SIG + ihdr(0, 3) + ok_idat + end, "Corrupted PNG"),
        "height 0": (SIG + ihdr(4, 0) + ok_idat + end, "Corrupted PNG"),
        "width past MAX_SIDE": (SIG + ihdr(MAX_SIDE + 1, 1) + ok_idat + end, "width and height 1 to"),
        "pixels past MAX_PIXELS": (SIG + ihdr(MAX_SIDE, MAX_PIXELS // MAX_SIDE + 1) + ok_idat + end, "pixels"),
        "rgb depth 4": (SIG + ihdr(4, 3, 4, 2) + ok_idat + end, "Corrupted PNG"),
        "palette depth 16": (SIG + ihdr(4, 3, 16, 3) + ok_idat + end, "Corrupted PNG"),
        "colour type 5": (SIG + ihdr(4, 3, 8, 5) + ok_idat + end, "Corrupted PNG"),
        "filter method 1": (SIG + ihdr(4, 3, filtering=1) + ok_idat + end, "Corrupted PNG"),
        "interlace 2": (SIG + ihdr(4, 3, interlace=2) + ok_idat + end, "Corrupted PNG"),
        "no IDAT": (SIG + ihdr(4, 3) + end, "Corrupted PNG"),
        "no IEND": (SIG + ihdr(4, 3) + ok_idat, "Corrupted PNG"),
        "IEND with data": (SIG + ihdr(4, 3) + ok_idat + chunk(b"IEND", b"x"), "intact IEND"),
        "chunk type not letters": (SIG + ihdr(4, 3) + chunk(b"ID\x00T", b"") + ok_idat + end, "Corrupted PNG"),
        "chunk length past 2**31": (SIG + ihdr(4, 3) + b"\xff\xff\xff\xffIDAT" + bytes(8), "Corrupted PNG"),
        "chunk longer than the file": (SIG + ihdr(4, 3) + ok_idat[:-6], "Corrupted PNG"),
        "bad CRC": (SIG + ihdr(4, 3) + ok_idat[:-1] + bytes([ok_idat[-1] ^ 1]) + end, "checksum"),
        "PLTE after IDAT": (SIG + ihdr(4, 3, 8, 2) + ok_idat + chunk(b"PLTE", bytes(3)) + end, "Corrupted PNG"),
        "filter type 5": (png(4, 3, b"\x05" + bytes(4) + ok_raw[5:]), "Corrupted PNG"),
        "too little data": (png(4, 3, ok_raw[:-1]), "Corrupted PNG"),
        "not zlib": (SIG + ihdr(4, 3) + chunk(b"IDAT", b"\x00" * 20) + end, "Corrupted PNG"),
    }
    return cases[name] if name else cases


@pytest.mark.parametrize("name", list(_bad(None)))
def test_every_malformed_png_is_one_clear_image_error(name):
    data, match = _bad(name)
    with pytest.raises(ImageError, match=match) as info:
        decode_image(data, channels=1)
    message = str(info.value)
    assert "\n" not in message and "Expected" in message and "Received" in message, message


def test_malformed_variants_pillow_reads_give_the_declared_size():
    # Pillow reads these anyway (an unusual order, a second header, a palette where none is needed,
    # a stream without its checksum that holds every row): what comes out has the declared size.
    ok_raw = b"".join(b"\x00" + bytes(4) for _ in range(3))
    ok_idat = chunk(b"IDAT", zlib.compress(ok_raw))
    end = chunk(b"IEND", b"")
    tolerated = [
        SIG + chunk(b"tEXt", b"k\x00v") + ihdr(4, 3) + ok_idat + end,  # IHDR not first
        SIG + ihdr(4, 3) + ihdr(4, 3) + ok_idat + end,
        SIG + ihdr(4, 3) + ok_idat + chunk(b"tEXt", b"k\x00v") + ok_idat + end,  # IDAT split by a chunk
        SIG + ihdr(4, 3) + chunk(b"PLTE", bytes(3)) + ok_idat + end,  # PLTE in a gray image
        SIG + ihdr(4, 3) + chunk(b"IDAT", zlib.compress(ok_raw)[:-4]) + end,  # no Adler-32
        png(4, 3, ok_raw + b"\x00"),  # a byte too many
    ]
    for data in tolerated:
        assert decode_image(data, channels=1).shape == (3, 4, 1)


def test_zlib_bomb_decodes_only_what_the_header_declares():
    # 64 MiB of zeros declared as a 1x1 image: Pillow inflates the 2 bytes it needs.
    comp = zlib.compressobj(9)
    bomb = b"".join(comp.compress(bytes(1 << 20)) for _ in range(64)) + comp.flush()
    img = decode_image(SIG + ihdr(1, 1) + chunk(b"IDAT", bomb) + chunk(b"IEND", b""), channels=1)
    assert img.shape == (1, 1, 1) and img[0, 0, 0] == 0  # its memory is measured in test_robust_images


def test_a_flood_of_tiny_chunks_is_refused_before_pillow_walks_it():
    flood = chunk(b"tEXt", b"") * (MAX_PNG_CHUNKS + 1)
    with pytest.raises(ImageError, match=f"at most {MAX_PNG_CHUNKS} chunks"):
        decode_image(SIG + ihdr(4, 3) + flood + gray()[33:], channels=1)
    under = chunk(b"tEXt", b"") * 1000  # a thousand chunks is a normal file
    assert decode_image(SIG + ihdr(4, 3) + under + gray()[33:], channels=1).shape == (3, 4, 1)


def test_jpeg_with_too_many_scans_is_refused():
    prog = _encode(np.full((64, 64), 128, np.uint8), "JPEG", progressive=True)
    assert decode_image(prog, channels=1).shape == (64, 64, 1)
    last, eoi = prog.rfind(b"\xff\xda"), prog.rfind(b"\xff\xd9")
    repeated = prog[:eoi] + prog[last:eoi] * MAX_JPEG_SCANS + prog[eoi:]
    with pytest.raises(ImageError, match=f"Expected at most {MAX_JPEG_SCANS} scans"):
        decode_image(repeated, channels=1)


def test_jpeg_whose_image_data_starts_too_late_is_refused():
    jpeg = _encode(np.zeros((8, 8), np.uint8), "JPEG")
    comments = b"\xff\xfe\x00\x02" * (MAX_JPEG_HEADER_BYTES // 4 + 1)  # empty comment markers
    with pytest.raises(ImageError, match=f"image data to start within its first {MAX_JPEG_HEADER_BYTES} bytes"):
        decode_image(jpeg[:2] + comments + jpeg[2:], channels=1)
    # A large file whose header is short is fine: the limit is on the markers, not the file.
    big = _encode(np.random.default_rng(0).integers(0, 256, (1400, 1400), dtype=np.uint8), "JPEG", quality=100)
    assert len(big) > MAX_JPEG_HEADER_BYTES and decode_image(big, channels=1).shape == (1400, 1400, 1)


def test_rle_bmp_is_refused_and_plain_bmp_reads():
    rows = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    plain = bmp(4, 3, b"".join(row.tobytes() for row in rows[::-1]))  # bottom-up, rows of 4 bytes
    np.testing.assert_array_equal(decode_image(plain, channels=1)[..., 0], rows)
    rle = bmp(4, 3, b"\x04\x00\x00\x00" * 3 + b"\x00\x01", compression=1)  # RLE8: 4 x index 0, end of line
    with pytest.raises(ImageError, match="Expected an uncompressed BMP. Received: RLE compression"):
        decode_image(rle, channels=1)


def test_pillows_bomb_warning_is_an_error_and_never_printed():
    # 9500x9500 = 90 Mpixel: over Image.MAX_IMAGE_PIXELS, so Pillow warns while it opens the file.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping decode_image fails this test
        with pytest.raises(ImageError, match="Expected at most"):
            decode_image(SIG + ihdr(9500, 9500) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""), channels=1)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own default, left as it is


@pytest.mark.parametrize("data, got", [
    (b"", "an empty file"),
    (b"GIF89a\x01\x00\x01\x00", "a file starting b'GIF89a"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n", "a file starting b'%!PS-Ado'"),  # Pillow would run Ghostscript on it
    (b"II*\x00" + bytes(20), "a file starting b'II*"),  # TIFF
])
def test_other_formats_never_reach_pillow(data, got):
    with pytest.raises(ImageError, match="Expected a PNG, JPEG, WebP or BMP image. Received: " + got[:12]):
        decode_image(data, channels=1)


def test_file_past_the_size_cap_is_not_read(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.write(gray())
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ImageError, match="too large"):
        load_image(path, {**GRAY, "height": 3, "width": 4})


def test_jpeg_declaring_too_many_pixels_is_refused_before_decoding(tmp_path):
    data = bytearray(_encode(np.zeros((8, 8), np.uint8), "JPEG"))
    sof = data.find(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", 5000, 5000)  # 25 Mpixel: under Pillow's own bomb limit, over ours
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=f"at most {MAX_PIXELS} pixels. Received: 5000x5000"):
        load_image(path, {**GRAY, "height": 8, "width": 8})


def test_load_image_resizes_and_scales(tmp_path):
    path = tmp_path / "ramp.png"
    path.write_bytes(_encode(np.tile(np.arange(0, 240, 60, dtype=np.uint8), (2, 1)), "PNG"))  # 2x4: 0 60 120 180
    x = load_image(path, {"height": 2, "width": 2, "channels": 1, "scale": 1 / 60, "offset": -1.0})
    assert x.shape == (2, 2, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0], [0.5 - 1, 2.5 - 1], rtol=1e-6)  # half-pixel centres, then scale


def test_bad_metadata_and_channel_counts_are_image_errors(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(gray())
    with pytest.raises(ImageError, match="input.image metadata is incomplete"):
        load_image(path, {"height": 3})
    with pytest.raises(ImageError, match="Expected 1 or 3. Received: 4"):
        load_image(path, {**GRAY, "height": 3, "width": 4, "channels": 4})
    with pytest.raises(ImageError, match="Cannot read image"):
        load_image(tmp_path / "missing.png", {**GRAY, "height": 3, "width": 4})


def test_predict_prints_one_error_line_for_a_malformed_png(tmp_path):
    from click.testing import CliRunner
    from fuzz.corrupt import FIXTURES

    from edgekit.cli import cli

    path = tmp_path / "zero.png"
    path.write_bytes(_bad("width past MAX_SIDE")[0])
    res = CliRunner().invoke(cli, ["predict", str(FIXTURES / "cnn_ingraph.tflite"), str(path)])
    assert res.exit_code == 1, res.output
    assert res.output.strip().count("\n") == 0 and res.output.startswith("Error: Unsupported PNG size."), res.output
