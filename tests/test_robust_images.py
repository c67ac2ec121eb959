"""Hostile PNG inputs through ``edgekit predict`` (the runtime's own PNG decoder). No TensorFlow.

The corpus is ``tests/fuzz/images.py``: valid images of every colour type and filter, then
truncations, byte flips, malformed headers and palettes, a zlib bomb and a decoding-time bomb. Each
file goes through ``edgekit predict`` on the committed CNN fixture (which has ``input.image``
metadata) in a worker process, with a timeout. Valid images must run; damaged ones must end in one
"Error:" line or run; nothing may crash, hang or print a traceback.

No test is marked ``xfail`` any more. Malformed headers and palettes, the zlib bomb, unchecked
CRCs, the fallback to Pillow for damaged files and the Paeth decoding-time bomb were fixed in
``runtime/images.py`` as this suite found them.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from fuzz.corrupt import FIXTURES
from fuzz.harness import run_cases
from fuzz.images import make_png_corpus, png

pytestmark = pytest.mark.slow

MODEL = str(FIXTURES / "cnn_ingraph.tflite")
TIMEOUT_S = 10.0  # a 12x12 image decodes in milliseconds; 10 s is a hang


@pytest.fixture(scope="module")
def corpus():
    return make_png_corpus(0)


@pytest.fixture(scope="module")
def outcomes(corpus):
    # 3 GiB of address space: enough for the runtime, small enough that a bomb fails fast here.
    results = run_cases("predict", corpus, timeout=TIMEOUT_S, model=MODEL, env={"FUZZ_AS_LIMIT": str(3 << 30)})
    return {case.name: (case, result) for case, result in zip(corpus, results, strict=True)}


def _select(outcomes, *kinds):
    return [(case, result) for case, result in outcomes.values() if case.kind in kinds]


def _broken(pairs):
    bad = []
    for case, r in pairs:
        if r["status"] in ("crash", "hang", "uncaught"):
            bad.append((case.name, r["status"], r.get("type"), r.get("message")))
        elif r["status"] == "error" and not (r.get("exit_code") == 1 and r.get("one_line")):
            bad.append((case.name, "unclear", r.get("message")))
        elif r["status"] == "ran" and not r.get("finite"):
            bad.append((case.name, "garbage output"))
    return bad


def test_valid_pngs_decode_like_pillow():
    Image = pytest.importorskip("PIL.Image")
    import io

    from edgekit.runtime.images import decode_png

    for color, mode in ((0, "L"), (2, "RGB"), (6, "RGBA"), (4, "LA"), (3, "P")):
        data = png(13, 11, color, filters=(0, 1, 2, 3, 4), seed=color)
        ours = decode_png(data)
        with Image.open(io.BytesIO(data)) as im:
            theirs = np.asarray(im.convert("RGB") if mode == "P" else im)
        np.testing.assert_array_equal(ours.reshape(theirs.shape), theirs)


def test_valid_images_run(outcomes):
    pairs = _select(outcomes, "png-valid")
    assert len(pairs) == 5
    assert all(r["status"] == "ran" and r["finite"] for _, r in pairs), [(c.name, r) for c, r in pairs]


def test_truncated_flipped_and_non_images_fail_cleanly(outcomes):
    pairs = _select(outcomes, "png-truncate", "png-flip", "png-not-image")
    assert len(pairs) >= 150
    assert not _broken(pairs)


def test_malformed_headers_and_palettes_fail_cleanly(outcomes):
    # An IHDR that is not 13 bytes, a width or height of 0 and an empty PLTE used to escape as
    # tracebacks (struct.error, IndexError, OverflowError).
    pairs = _select(outcomes, "png-header", "png-palette")
    assert len(pairs) == 12
    assert not _broken(pairs)


def test_zlib_bomb_is_not_inflated(corpus):
    # A 1x1 PNG (510 KB) whose IDAT inflates to 512 MiB: the decoder must stop inflating at the
    # size the header allows. tracemalloc sees the bytes zlib returns; 64 MB is far below 512 MiB.
    import tracemalloc

    from edgekit.runtime.images import ImageError, decode_png

    bomb = next(c.data for c in corpus if c.name == "png:zlib-bomb-512MiB")
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="Corrupted PNG data"):
            decode_png(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"decoding peaked at {peak / 2**20:.0f} MB"


def test_decoding_time_bomb_fails_fast(outcomes):
    # A 3000x3000 PNG whose rows all use the Paeth filter (13 KB file) used to decode in a per-byte
    # Python loop for minutes; the decoder now unfilters along anti-diagonals with numpy.
    _, r = outcomes["png:paeth-3000x3000"]
    assert r["status"] in ("error", "ran"), r


def test_every_changed_byte_is_detected(outcomes):
    # Through edgekit predict, with Pillow installed: a damaged PNG must not be handed to Pillow
    # (which accepted 4 of these 80 flips: it does not check every CRC).
    ran = [case.name for case, r in _select(outcomes, "png-flip") if r["status"] == "ran"]
    assert not ran, f"{len(ran)} PNGs with a changed byte were used silently: {ran[:5]}"


def test_decoder_itself_refuses_every_changed_byte(corpus):
    # Without the Pillow fallback (a device's base install), every one-byte flip is refused.
    from edgekit.runtime.images import ImageError, decode_png

    flips = [c for c in corpus if c.kind == "png-flip"]
    accepted = []
    for case in flips:
        try:
            decode_png(case.data)
            accepted.append(case.name)
        except ImageError:
            pass
    assert len(flips) == 80 and not accepted, accepted


def test_corpus_is_varied(corpus):
    kinds = collections.Counter(case.kind for case in corpus)
    assert set(kinds) == {"png-valid", "png-truncate", "png-flip", "png-header", "png-palette", "png-bomb", "png-not-image"}
    assert len(corpus) >= 150
