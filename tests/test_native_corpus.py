"""The robustness corpus (tests/fuzz/corrupt.py, seed 0) through ``edgekit-run``: clean errors only.

Each of the ~590 damaged files goes through the release build and through a second build under
AddressSanitizer + UBSan (``build/native/asan/edgekit-run``). The promise, per case:

- no crash and no hang of ``edgekit-run`` itself (a signal, or no answer in 120 s);
- an error is exit 1 (2 for usage) with exactly one line on stderr starting with "Error:";
- every edgekit export with a changed byte is refused, and when the file kept its length (a byte
  flip, a rewritten shape or index) the message is the digest's ("integrity", "digest" or
  "damaged"): it never reached LiteRT;
- files no digest can vouch for (re-signed after damage; foreign files with --allow-unverified)
  may run, and then print finite probabilities summing to 1; LiteRT crashes on some of them,
  which the tool's probe process must catch (and each such crash must be inside libLiteRt.so);
- under ASan/UBSan: no report at all.

ASan's own SIGSEGV handler is off (handle_segv=0): a segfault inside LiteRT on a re-signed file is
the probe's business, and it must see the signal. And malloc returns NULL for an absurd size, as
glibc's does (allocator_may_return_null=1: LiteRT asks for petabytes on some re-signed files, and
ASan would abort on the request instead). Every other check stays on, and every crash the probe
reports is re-run in-process with the handler on to show where it happened.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_native import ASAN_TOOL, ROOT, TOOL, ensure_built
from test_native import pytestmark as _native_mark

sys.path.insert(0, str(ROOT / "tests"))
from fuzz.corrupt import make_corpus, materialize
from fuzz.harness import input_shape_for

pytestmark = [pytest.mark.slow, _native_mark]

SAME_LENGTH = ("flip-header", "flip-opcode", "flip-shape", "flip-weights", "flip-metadata", "huge-tensor", "bad-index")
# A re-signed file LiteRT loops on for ~40 s (a bad reshape target) is killed by the probe after
# this long: a clean error, not a hang of the tool.
PROBE_TIMEOUT_S = 15


def _run_corpus(tool: Path, folder: Path, env: dict) -> list[tuple]:
    corpus = make_corpus(0)
    inputs = {}
    for shape in {tuple(input_shape_for(c)) for c in corpus}:
        path = folder / f"x{'x'.join(map(str, shape))}.npy"
        np.save(path, np.full(shape, 0.5, np.float32))
        inputs[shape] = path
    cases_dir = folder / "cases"
    cases_dir.mkdir()

    def one(item):
        i, case = item
        sub = cases_dir / str(i)
        sub.mkdir()
        path = materialize(case, sub)
        args = [str(tool), path, str(inputs[tuple(input_shape_for(case))]), "-T", "4", "--json",
                "--probe-timeout", str(PROBE_TIMEOUT_S)]
        if case.kind.startswith("foreign"):
            args.append("--allow-unverified")  # let them reach the probe and LiteRT
        try:
            p = subprocess.run(args, check=False, capture_output=True, text=True, timeout=120, env=env)
        except subprocess.TimeoutExpired:
            return case, {"status": "hang"}
        status = "crash" if p.returncode < 0 else "ran" if p.returncode == 0 else "error"
        return case, {"status": status, "code": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "path": path}

    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, enumerate(corpus)))


def _violation(case, r) -> str | None:
    if r["status"] in ("crash", "hang"):
        return r["status"]
    lines = [line for line in r["stderr"].splitlines() if line.strip()]
    if case.kind.startswith("foreign") and lines and "has no edgekit metadata" in lines[0]:
        lines = lines[1:]  # --allow-unverified's one warning, then the error if any
    if r["status"] == "error":
        if r["code"] not in (1, 2) or len(lines) != 1 or not lines[0].startswith("Error: "):
            return f"unclear error (exit {r['code']}): {r['stderr'][-300:]!r}"
        digest_words = ("integrity", "digest", "damaged")
        if case.expect == "integrity" and case.kind in SAME_LENGTH and not any(w in lines[0].lower() for w in digest_words):
            return f"changed byte not caught by the digest: {lines[0]!r}"
        return None
    if case.expect in ("integrity", "error"):
        return "ran a file that must be refused"
    out = json.loads(r["stdout"])
    for pred in out["predictions"]:
        mean = np.array(pred["mean"])
        if not (np.isfinite(mean).all() and abs(mean.sum() - 1) < 0.01):
            return "ran and printed garbage"
    return None


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory):
    ensure_built()
    done = {}

    def get(build: str):
        if build not in done:
            folder = tmp_path_factory.mktemp(f"corpus-{build}")
            env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache")}
            if build == "asan":
                (folder / "reports").mkdir()
                env["ASAN_OPTIONS"] = (f"log_path={folder}/reports/asan:handle_segv=0:handle_sigbus=0:handle_sigfpe=0:"
                                       "allocator_may_return_null=1:detect_leaks=1")
                env["UBSAN_OPTIONS"] = f"log_path={folder}/reports/ubsan:print_stacktrace=1:halt_on_error=1"
            done[build] = (folder, _run_corpus(TOOL if build == "release" else ASAN_TOOL, folder, env))
        return done[build]

    return get


@pytest.mark.parametrize("build", ["release", "asan"])
def test_the_corpus_gives_clean_errors_only(corpus_results, build):
    _, results = corpus_results(build)
    statuses = collections.Counter(r["status"] for _, r in results)
    assert statuses["crash"] == 0 and statuses["hang"] == 0, dict(statuses)
    bad = [(case.name, why) for case, r in results if (why := _violation(case, r))]
    assert not bad, f"{len(bad)} of {len(results)} cases broke the promise ({dict(statuses)}): {bad[:10]}"
    # the corpus exercised every path: digest refusals, probe-caught LiteRT crashes, runs
    refused = sum(1 for c, r in results if c.expect == "integrity" and r["status"] == "error")
    assert refused == sum(1 for c, _ in results if c.expect == "integrity")
    assert any("LiteRT crashed" in r["stderr"] for _, r in results)
    assert statuses["ran"] > 0


def test_the_sanitizer_build_runs_the_clean_sources(tmp_path):
    # (it also hashes with the portable SHA-256: a wrong digest would refuse every file)
    ensure_built()
    from fuzz.corrupt import EDGEKIT_SOURCES, FIXTURES

    for source in EDGEKIT_SOURCES:
        shape = tuple(input_shape_for(next(c for c in make_corpus(0) if c.source == source)))
        np.save(tmp_path / "x.npy", np.full(shape, 0.5, np.float32))
        p = subprocess.run([str(ASAN_TOOL), str(FIXTURES / source), str(tmp_path / "x.npy"), "-T", "8", "--json"],
                           check=False, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["verified"] is True


def test_no_sanitizer_report_on_the_corpus(corpus_results):
    folder, _ = corpus_results("asan")
    logs = {p.name: p.read_text(errors="replace") for p in sorted((folder / "reports").iterdir())}
    reports = {name: text for name, text in logs.items()
               if "ERROR: AddressSanitizer" in text or "ERROR: LeakSanitizer" in text or "runtime error:" in text}
    assert not reports, f"{len(reports)} ASan/UBSan reports, e.g.:\n" + "\n".join(list(reports.values())[:2])[:4000]
    # what else ASan may log: its warning that it refused an absurd allocation (then malloc
    # returned NULL to LiteRT, see allocator_may_return_null above)
    for name, text in logs.items():
        assert all("failed to allocate" in line for line in text.splitlines() if line.strip()), (name, text[:500])


def test_every_crash_the_probe_catches_is_inside_litert(corpus_results, tmp_path):
    # Re-run each probe-caught crash in-process (--no-probe) with ASan's SEGV handler on: the
    # faulting frame must be in libLiteRt.so, not in edgekit's code.
    _, results = corpus_results("asan")
    crashed = [(c, r) for c, r in results if "LiteRT crashed" in r["stderr"]]
    assert crashed
    for case, r in crashed:
        log = tmp_path / case.name.replace(":", "_")
        env = {**os.environ, "ASAN_OPTIONS": f"log_path={log}:handle_segv=1:allocator_may_return_null=1",
               "XDG_CACHE_HOME": str(tmp_path)}
        shape = tuple(input_shape_for(case))
        np.save(tmp_path / "x.npy", np.full(shape, 0.5, np.float32))
        p = subprocess.run([str(ASAN_TOOL), r["path"], str(tmp_path / "x.npy"), "-T", "4", "--no-probe"],
                           check=False, capture_output=True, text=True, timeout=120, env=env)
        assert p.returncode != 0
        report = "".join(f.read_text(errors="replace") for f in tmp_path.glob(f"{log.name}*"))
        # the innermost frame outside the sanitizer's own interceptors
        frames = [f for f in re.findall(r"#\d+ 0x[0-9a-f]+ .*", report) if "libsanitizer" not in f]
        assert "SEGV" in report and frames and "libLiteRt.so" in frames[0], (case.name, report[:1500])
