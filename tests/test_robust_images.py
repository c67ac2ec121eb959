"""Hostile image inputs through ``edgekit predict`` (Pillow behind the runtime's guards). No TensorFlow.

The corpus is ``tests/fuzz/images.py``: valid PNG, JPEG, WebP and BMP images, then truncations,
byte flips, malformed headers and palettes, memory and time bombs and files that are not images.
Each file goes through ``edgekit predict`` on the committed CNN fixture (which has ``input.image``
metadata) in a worker process, with a timeout. Valid images must run; damaged ones must end in one
"Error:" line or run; nothing may crash, hang or print a traceback.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import pytest
from fuzz.corrupt import FIXTURES
from fuzz.harness import run_cases
from fuzz.images import make_image_corpus

pytestmark = pytest.mark.slow

MODEL = str(FIXTURES / "cnn_ingraph.tflite")
TIMEOUT_S = 10.0  # a 12x12 image decodes in milliseconds and every bomb is refused in about a second; 10 s is a hang


@pytest.fixture(scope="module")
def corpus():
    return make_image_corpus(0)


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


def test_valid_images_run(outcomes):
    pairs = _select(outcomes, "png-valid", "other-valid")
    assert len(pairs) == 8
    assert all(r["status"] == "ran" and r["finite"] for _, r in pairs), [(c.name, r) for c, r in pairs]


def test_truncated_flipped_and_non_images_fail_cleanly(outcomes):
    pairs = _select(outcomes, "png-truncate", "png-flip", "other-damaged", "not-image")
    assert len(pairs) >= 200
    assert not _broken(pairs)
    for case, r in _select(outcomes, "not-image"):
        assert r["status"] == "error" and "Expected" in r["message"] and "Received" in r["message"], (case.name, r)


def test_malformed_headers_and_palettes_fail_cleanly(outcomes):
    pairs = _select(outcomes, "png-header", "png-palette")
    assert len(pairs) == 12
    assert not _broken(pairs)


def test_bombs_are_refused_or_cost_nothing(outcomes):
    pairs = _select(outcomes, "bomb")
    assert len(pairs) == 7
    assert not _broken(pairs)
    # What Pillow would walk in Python, or decode pass after pass, is refused before it starts.
    for name, why in (("png:chunk-flood", "at most 262144 chunks"), ("jpeg:comment-flood-4MiB", "image data to start"),
                      ("jpeg:scan-flood-1000", "at most 100 scans"), ("bmp:rle4-4096x4096", "uncompressed BMP")):
        _, r = outcomes[name]
        assert r["status"] == "error" and why in r["message"], (name, r)


def test_zlib_bomb_is_not_inflated(corpus, tmp_path):
    # A 1x1 PNG (510 KB) whose IDAT inflates to 512 MiB: Pillow must inflate only the 2 bytes the
    # header needs. Pillow inflates in C (tracemalloc cannot see it), so a child process reports its
    # peak RSS, against a child that decodes a small valid PNG; 64 MB is far below 512 MiB.
    bomb = next(c.data for c in corpus if c.name == "png:zlib-bomb-512MiB")
    small = next(c.data for c in corpus if c.name == "png:gray12")
    code = (
        "import json, resource, sys\n"
        "from edgekit.runtime.images import decode_image\n"
        "x = decode_image(open(sys.argv[1], 'rb').read(), channels=1)\n"
        "print(json.dumps({'shape': list(x.shape), 'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
    )
    peaks = {}
    for name, data in (("small", small), ("bomb", bomb)):
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        peaks[name] = json.loads(proc.stdout)
    assert peaks["bomb"]["shape"] == [1, 1, 1]
    assert peaks["bomb"]["rss"] - peaks["small"]["rss"] < 64 * 1024, peaks  # ru_maxrss is in KiB on Linux


def test_decoding_time_bomb_fails_fast(outcomes):
    # A 3000x3000 PNG whose rows all use the Paeth filter (13 KB file): Pillow unfilters it in C.
    _, r = outcomes["png:paeth-3000x3000"]
    assert r["status"] in ("error", "ran"), r


def test_every_changed_byte_of_a_png_is_detected(outcomes):
    # A PNG carries a CRC per chunk: a damaged PNG must never be used silently (Pillow's decoding
    # alone accepts some of these 80 flips: it skips the CRC of the image data).
    ran = [case.name for case, r in _select(outcomes, "png-flip") if r["status"] == "ran"]
    assert not ran, f"{len(ran)} PNGs with a changed byte were used silently: {ran[:5]}"


def test_decoder_itself_refuses_every_changed_png_byte(corpus):
    from edgekit.runtime.images import ImageError, decode_image

    flips = [c for c in corpus if c.kind == "png-flip"]
    accepted = []
    for case in flips:
        try:
            decode_image(case.data, channels=1)
            accepted.append(case.name)
        except ImageError:
            pass
    assert len(flips) == 80 and not accepted, accepted


def test_corpus_is_varied(corpus):
    kinds = collections.Counter(case.kind for case in corpus)
    assert set(kinds) == {"png-valid", "png-truncate", "png-flip", "png-header", "png-palette", "other-valid",
                          "other-damaged", "bomb", "not-image"}
    assert {case.suffix for case in corpus} == {".png", ".jpg", ".webp", ".bmp"}
    assert len(corpus) >= 200
