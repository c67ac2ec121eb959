"""The runtime's own PNG decoder (``edgekit.runtime.images``): exact pixels, strict checks, bounded cost.

No TensorFlow and no model: these tests feed PNG bytes to :func:`decode_png` and :func:`load_image`.
Pixels are checked against a per-byte transcription of the PNG specification's filters (section 9)
and against Pillow (when installed); every malformed file must raise :class:`ImageError` (a
``ValueError``, which ``edgekit predict`` prints as one ``Error:`` line) naming what was expected.
``tests/test_robust_images.py`` runs a fuzzed corpus through ``edgekit predict`` itself.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.runtime.images import MAX_FILE_BYTES, MAX_PIXELS, MAX_SIDE, ImageError, decode_png, load_image

SIG = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def ihdr(width, height, depth=8, color=0, compression=0, filtering=0, interlace=0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, compression, filtering, interlace))


def png(width, height, raw: bytes, *, depth=8, color=0, plte: bytes | None = None) -> bytes:
    """A PNG whose scanlines (filter byte + stored bytes) are exactly ``raw``."""
    return (SIG + ihdr(width, height, depth, color) + (chunk(b"PLTE", plte) if plte is not None else b"")
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


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


# Every filter mix matters: rows of None/Sub are decoded first, Up rows before the first
# Average/Paeth row one by one, and the rest together along anti-diagonals.
FILTER_SETS = [(0,), (1,), (2,), (3,), (4,), (0, 1, 2), (3, 4), (2, 4), (1, 3), (0, 1, 2, 3, 4)]
LAYOUTS = [(0, 8, 1), (4, 8, 2), (2, 8, 3), (6, 8, 4), (0, 16, 2), (4, 16, 4), (2, 16, 6), (6, 16, 8)]


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 9),
    height=st.integers(1, 9),
    layout=st.sampled_from(LAYOUTS),
    filters=st.sampled_from(FILTER_SETS),
    seed=st.integers(0, 2**32 - 1),
)
def test_unfiltering_matches_the_spec_byte_by_byte(width, height, layout, filters, seed):
    color, depth, bpp = layout  # bpp: bytes per pixel, the distance to the "left" byte
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (height, 1 + width * bpp), dtype=np.uint8)
    rows[:, 0] = rng.choice(filters, height)
    want = reference_unfilter(rows, bpp).reshape(height, width, -1)
    if depth == 16:
        want = want[..., 0::2]  # samples are big-endian; the decoder keeps the high byte
    got = decode_png(png(width, height, rows.tobytes(), depth=depth, color=color))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_large_paeth_and_average_image_matches_the_spec():
    # 40x37 RGB: several rows share each anti-diagonal, and rows of all five filters interleave.
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 256, (37, 1 + 40 * 3), dtype=np.uint8)
    rows[:, 0] = np.arange(37) % 5
    rows[10:20, 0] = 4
    want = reference_unfilter(rows, 3).reshape(37, 40, 3)
    np.testing.assert_array_equal(decode_png(png(40, 37, rows.tobytes(), color=2)), want)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_low_bit_depth_gray_is_scaled_to_0_255(depth):
    rng = np.random.default_rng(depth)
    values = rng.integers(0, 1 << depth, (5, 11), dtype=np.uint8)
    bits = np.unpackbits(values[..., None], axis=-1)[..., 8 - depth :].reshape(5, -1)
    packed = np.packbits(bits, axis=1)  # rows padded to whole bytes, as the standard says
    raw = b"".join(b"\x00" + row.tobytes() for row in packed)
    got = decode_png(png(11, 5, raw, depth=depth))
    np.testing.assert_array_equal(got[..., 0], values * (255 // ((1 << depth) - 1)))


@pytest.mark.parametrize("bits,entries", [(1, 2), (2, 4), (4, 16), (8, 200)])
def test_palette_images_agree_with_pillow(bits, entries):
    Image = pytest.importorskip("PIL.Image")  # dev extra; the decoder itself needs no Pillow
    rng = np.random.default_rng(bits)
    im = Image.fromarray(rng.integers(0, entries, (9, 14), dtype=np.uint8), "P")
    im.putpalette(rng.integers(0, 256, 3 * entries, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    im.save(buf, "PNG", bits=bits, optimize=False)
    with Image.open(io.BytesIO(buf.getvalue())) as back:
        want = np.asarray(back.convert("RGB"))
    np.testing.assert_array_equal(decode_png(buf.getvalue()), want)


def test_sixteen_bit_gray_keeps_the_high_byte_of_what_pillow_reads():
    Image = pytest.importorskip("PIL.Image")
    values = np.random.default_rng(3).integers(0, 65536, (6, 10)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG")
    np.testing.assert_array_equal(decode_png(buf.getvalue())[..., 0], values >> 8)


def test_palette_index_past_the_palette_is_black():
    # libpng and Pillow read such indices as black (Pillow itself writes such files).
    plte = bytes([10, 20, 30, 40, 50, 60])
    img = decode_png(png(3, 1, b"\x00" + bytes([0, 1, 7]), color=3, plte=plte))
    np.testing.assert_array_equal(img[0], [[10, 20, 30], [40, 50, 60], [0, 0, 0]])


def test_ancillary_chunks_split_idat_and_bytes_after_iend_are_fine():
    raw = b"".join(b"\x00" + bytes([5 * y] * 4) for y in range(3))
    comp = zlib.compress(raw)
    data = (SIG + ihdr(4, 3) + chunk(b"tEXt", b"k\x00v") + chunk(b"IDAT", comp[:5]) + chunk(b"IDAT", comp[5:])
            + chunk(b"tIME", bytes(7)) + chunk(b"IEND", b"") + b"trailing junk")
    np.testing.assert_array_equal(decode_png(data)[:, :, 0], np.repeat([[0], [5], [10]], 4, axis=1))


def _bad(name):
    ok_raw = b"".join(b"\x00" + bytes(4) for _ in range(3))
    ok_idat = chunk(b"IDAT", zlib.compress(ok_raw))
    end = chunk(b"IEND", b"")
    cases = {
        "no signature": (b"GIF89a" + bytes(40), "PNG signature"),
        "only signature": (SIG, "IEND"),
        "ihdr 12 bytes": (SIG + chunk(b"IHDR", bytes(12)) + ok_idat + end, "13-byte IHDR"),
        "width 0": (SIG + ihdr(0, 3) + ok_idat + end, "width and height 1 to"),
        "height 0": (SIG + ihdr(4, 0) + ok_idat + end, "width and height 1 to"),
        "width past MAX_SIDE": (SIG + ihdr(MAX_SIDE + 1, 1) + ok_idat + end, "width and height 1 to"),
        "pixels past MAX_PIXELS": (SIG + ihdr(MAX_SIDE, MAX_PIXELS // MAX_SIDE + 1) + ok_idat + end, "pixels"),
        "sample bytes past the cap": (SIG + ihdr(4096, 4096, 16, 6) + ok_idat + end, "bytes of samples"),
        "rgb depth 4": (SIG + ihdr(4, 3, 4, 2) + ok_idat + end, "bit depth"),
        "palette depth 16": (SIG + ihdr(4, 3, 16, 3) + ok_idat + end, "bit depth"),
        "colour type 5": (SIG + ihdr(4, 3, 8, 5) + ok_idat + end, "colour type"),
        "compression 1": (SIG + ihdr(4, 3, compression=1) + ok_idat + end, "compression method 0"),
        "filter method 1": (SIG + ihdr(4, 3, filtering=1) + ok_idat + end, "filter method 0"),
        "interlace 2": (SIG + ihdr(4, 3, interlace=2) + ok_idat + end, "interlace method 0 or 1"),
        "IHDR not first": (SIG + chunk(b"tEXt", b"k\x00v") + ihdr(4, 3) + ok_idat + end, "IHDR as the first"),
        "two IHDR": (SIG + ihdr(4, 3) + ihdr(4, 3) + ok_idat + end, "one IHDR"),
        "no IDAT": (SIG + ihdr(4, 3) + end, "IDAT"),
        "IDAT split by a chunk": (SIG + ihdr(4, 3) + ok_idat + chunk(b"tEXt", b"k\x00v") + ok_idat + end,
                                  "consecutive IDAT"),
        "no IEND": (SIG + ihdr(4, 3) + ok_idat, "IEND"),
        "IEND with data": (SIG + ihdr(4, 3) + ok_idat + chunk(b"IEND", b"x"), "empty IEND"),
        "unknown critical chunk": (SIG + ihdr(4, 3) + chunk(b"ZZZZ", b"") + ok_idat + end, "known critical"),
        "chunk type not letters": (SIG + ihdr(4, 3) + chunk(b"ID\x00T", b"") + ok_idat + end, "chunk header"),
        "chunk length past 2**31": (SIG + ihdr(4, 3) + b"\xff\xff\xff\xffIDAT" + bytes(8), "chunk header"),
        "chunk longer than the file": (SIG + ihdr(4, 3) + ok_idat[:-6], "Truncated"),
        "bad CRC": (SIG + ihdr(4, 3) + ok_idat[:-1] + bytes([ok_idat[-1] ^ 1]) + end, "CRC"),
        "palette image without PLTE": (SIG + ihdr(4, 3, 8, 3) + ok_idat + end, "PLTE chunk in a palette"),
        "empty PLTE": (SIG + ihdr(4, 3, 8, 3) + chunk(b"PLTE", b"") + ok_idat + end, "RGB entries"),
        "ragged PLTE": (SIG + ihdr(4, 3, 8, 3) + chunk(b"PLTE", bytes(4)) + ok_idat + end, "multiple of 3"),
        "PLTE past 2**depth": (SIG + ihdr(4, 3, 1, 3) + chunk(b"PLTE", bytes(9)) + ok_idat + end, "1 to 2 RGB"),
        "PLTE in a gray image": (SIG + ihdr(4, 3) + chunk(b"PLTE", bytes(3)) + ok_idat + end, "no PLTE"),
        "PLTE after IDAT": (SIG + ihdr(4, 3, 8, 2) + ok_idat + chunk(b"PLTE", bytes(3)) + end, "before the image"),
        "filter type 5": (png(4, 3, b"\x05" + bytes(4) + ok_raw[5:]), "filter types 0 to 4"),
        "too little data": (png(4, 3, ok_raw[:-1]), "Expected 15 bytes"),
        "too much data": (png(4, 3, ok_raw + b"\x00"), "Expected 15 bytes"),
        "stream cut short": (SIG + ihdr(4, 3) + chunk(b"IDAT", zlib.compress(ok_raw)[:-4]) + end, "cut short"),
        "not zlib": (SIG + ihdr(4, 3) + chunk(b"IDAT", b"\x00" * 20) + end, "Corrupted PNG data"),
    }
    return cases[name] if name else cases


@pytest.mark.parametrize("name", list(_bad(None)))
def test_every_malformed_png_is_one_clear_image_error(name):
    data, match = _bad(name)
    with pytest.raises(ImageError, match=match) as info:
        decode_png(data)
    message = str(info.value)
    assert "\n" not in message and "Expected" in message, message


def test_zlib_bomb_is_refused_without_inflating_it():
    # 64 MiB of zeros declared as a 1x1 image: only 2 + 1 bytes may come out of the inflater.
    comp = zlib.compressobj(9)
    bomb = b"".join(comp.compress(bytes(1 << 20)) for _ in range(64)) + comp.flush()
    with pytest.raises(ImageError, match=r"Expected 2 bytes .* Received: more"):
        decode_png(SIG + ihdr(1, 1) + chunk(b"IDAT", bomb) + chunk(b"IEND", b""))


def test_a_flood_of_tiny_chunks_is_bounded():
    flood = chunk(b"tEXt", b"") * ((1 << 18) + 1)
    with pytest.raises(ImageError, match="at most 262144 chunks"):
        decode_png(SIG + ihdr(4, 3) + flood + gray()[33:])


def test_interlaced_png_is_left_to_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    values = np.random.default_rng(5).integers(0, 256, (9, 9), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in values)
    data = SIG + ihdr(9, 9, interlace=1) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="non-interlaced"):
        decode_png(data)
    path = tmp_path / "interlaced.png"
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG", interlace=1)  # a real Adam7 file
    path.write_bytes(buf.getvalue())
    x = load_image(path, {"height": 9, "width": 9, "channels": 1, "scale": 1.0, "offset": 0.0})
    np.testing.assert_array_equal(x[..., 0], values)  # same size: no resize, exact


def test_damaged_interlaced_png_is_not_handed_to_pillow(tmp_path):
    pytest.importorskip("PIL.Image")
    data = bytearray(SIG + ihdr(9, 9, interlace=1) + chunk(b"IDAT", zlib.compress(bytes(90))) + chunk(b"IEND", b""))
    data[-20] ^= 0x10  # inside the IDAT data: only the CRC tells
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="CRC"):
        load_image(path, {"height": 9, "width": 9, "channels": 1, "scale": 1.0})


def test_file_past_the_size_cap_is_not_read(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.write(gray())
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ImageError, match="too large"):
        load_image(path, {"height": 3, "width": 4, "channels": 1, "scale": 1.0})


def test_predict_prints_one_error_line_for_a_malformed_png(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    from fuzz.corrupt import FIXTURES

    path = tmp_path / "zero.png"
    path.write_bytes(_bad("width 0")[0])
    res = CliRunner().invoke(cli, ["predict", str(FIXTURES / "cnn_ingraph.tflite"), str(path)])
    assert res.exit_code == 1, res.output
    assert res.output.strip().count("\n") == 0 and res.output.startswith("Error: Unsupported PNG size."), res.output


def test_jpeg_declaring_too_many_pixels_is_refused_before_decoding(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", 5000, 5000)  # 25 Mpixel: under Pillow's own bomb limit, over ours
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=f"at most {MAX_PIXELS} pixels"):
        load_image(path, {"height": 8, "width": 8, "channels": 1, "scale": 1.0})
