"""Robustness figures for docs/reliability.md, from one real run (JSON out).

    .venv/bin/python bench/robustness.py --out bench/robustness.json

1. Fuzz: the corpus of ``tests/fuzz/corrupt.py`` (seed 0) through the stock LiteRT interpreter (the
   baseline: how many files crash it, hang it or run without any error), through
   ``edgekit.runtime.MCModel`` and through ``edgekit predict``, each in batched worker processes.
   For the stock interpreter, files made from the deterministic mask-input fixture are also compared
   with the clean file's output, to count runs that were silently *wrong*.
2. Concurrency: 8 threads x 1,000 ``predict`` calls on one ``MCModel``; every result checked
   (finite, sums to 1, nearest to its own input's reference mean: see ``tests/fuzz/stress.py``),
   RSS sampled every 500 calls; the drift is the peak RSS at the end minus the peak after the first
   2,000 calls.

3. Images: the image corpus of ``tests/fuzz/images.py`` (PNG, JPEG, WebP, BMP; damaged files and
   bombs) through ``edgekit predict`` on the CNN fixture (10 s per file before it counts as a hang).

Sections can be skipped (``--skip-fuzz``, ``--skip-images``, ``--skip-concurrency``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fuzz.checks import violation
from fuzz.corrupt import FIXTURES, Case, make_corpus
from fuzz.harness import run_cases, summarize
from fuzz.images import make_image_corpus

__all__ = ["main"]

DETERMINISTIC_SOURCE = "mlp_mask.tflite"


def fuzz(seed: int, timeout: float) -> dict:
    corpus = make_corpus(seed)
    out: dict = {"seed": seed, "files": len(corpus), "kinds": dict(collections.Counter(c.kind for c in corpus))}
    with tempfile.TemporaryDirectory(prefix="edgekit-robust-") as tmp:
        env = {"XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        # Stock interpreter: the clean deterministic file first, as the reference output.
        clean = Case("clean", "clean", DETERMINISTIC_SOURCE, "no-crash", (FIXTURES / DETERMINISTIC_SOURCE).read_bytes())
        t0 = time.perf_counter()
        stock = run_cases("stock", [clean, *corpus], timeout=timeout, env=env)
        reference, stock = stock[0], stock[1:]
        counts = collections.Counter(r["status"] for r in stock)
        wrong = 0
        compared = 0
        for case, r in zip(corpus, stock, strict=True):
            if case.source == DETERMINISTIC_SOURCE and r["status"] == "ran" and not case.kind.startswith("resigned"):
                compared += 1
                got, want = np.asarray(r["output"]), np.asarray(reference["output"])
                if not r["finite"] or got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-6):
                    wrong += 1
        out["stock"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "crash": counts["crash"],
            "hang": counts["hang"],
            "error": counts["error"],
            "ran_without_error": counts["ran"],
            "deterministic_files_that_ran": compared,
            "of_which_silently_wrong": wrong,
            "crashes": [{"case": r["case"], "signal": r.get("signal_name")} for r in stock if r["status"] == "crash"],
            "summary": summarize(corpus, stock),
        }
        for mode in ("mcmodel", "predict"):
            t0 = time.perf_counter()
            results = run_cases(mode, corpus, timeout=timeout, env=env)
            counts = collections.Counter(r["status"] for r in results)
            bad = [{"case": c.name, "why": why} for c, r in zip(corpus, results, strict=True) if (why := violation(c, r, mode))]
            types = collections.Counter(r.get("type") for r in results if r["status"] == "error")
            out[mode] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "crash": counts["crash"],
                "hang": counts["hang"],
                "uncaught": counts["uncaught"],
                "error": counts["error"],
                "ran": counts["ran"],
                "violations": len(bad),
                "violation_examples": bad[:20],
                "error_types": dict(types),
                "worker_processes": results[-1]["spawns"] if results else 0,
                "summary": summarize(corpus, results),
            }
    return out


def images(seed: int, timeout: float) -> dict:
    corpus = make_image_corpus(seed)
    t0 = time.perf_counter()
    results = run_cases("predict", corpus, timeout=timeout, model=str(FIXTURES / "cnn_ingraph.tflite"),
                        env={"FUZZ_AS_LIMIT": str(3 << 30)})
    counts = collections.Counter(r["status"] for r in results)
    return {
        "files": len(corpus),
        "seconds": round(time.perf_counter() - t0, 1),
        "timeout_s": timeout,
        **{status: counts[status] for status in ("ran", "error", "uncaught", "crash", "hang")},
        "damaged_but_ran": sum(1 for c, r in zip(corpus, results, strict=True)
                               if c.expect != "valid" and r["status"] == "ran"),
        "slowest_s": max(r.get("seconds", 0.0) for r in results),
        "problems": [
            {"case": c.name, "status": r["status"], "type": r.get("type"), "message": (r.get("message") or "")[:160]}
            for c, r in zip(corpus, results, strict=True)
            if r["status"] in ("uncaught", "crash", "hang")
        ],
        "summary": summarize(corpus, results),
    }


def concurrency(threads: int, calls: int, samples: int) -> dict:
    from fuzz.stress import distinct_inputs, hammer, rss_mb

    from edgekit.runtime import MCModel

    model = MCModel(str(FIXTURES / "mlp_ingraph.tflite"))
    inputs, refs = distinct_inputs(model, (20,))
    before = rss_mb()
    result = hammer(model, inputs, refs, threads=threads, calls=calls, samples=samples)
    return {
        "model": "tests/fixtures/mlp_ingraph.tflite",
        "threads": result.threads,
        "calls_per_thread": result.calls_per_thread,
        "samples_per_call": result.samples_per_call,
        "total_calls": result.total_calls,
        "distinct_inputs": len(inputs),
        "wrong_results": len(result.wrong),
        "wrong_examples": list(result.wrong[:5]),
        "seconds": result.seconds,
        "rss_mb_before": round(before, 1),
        "rss_drift_mb": result.rss_drift_mb,
        "rss_trace_mb": [[n, round(r, 1)] for n, r in result.rss_trace_mb],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "robustness.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--skip-fuzz", action="store_true")
    parser.add_argument("--skip-concurrency", action="store_true")
    parser.add_argument("--skip-images", action="store_true")
    args = parser.parse_args(argv)
    report: dict = {
        "command": "python bench/robustness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not args.skip_fuzz:
        report["fuzz"] = fuzz(args.seed, args.timeout)
    if not args.skip_images:
        report["images"] = images(args.seed, min(args.timeout, 10.0))
    if not args.skip_concurrency:
        report["concurrency"] = concurrency(args.threads, args.calls, args.samples)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from edgekit.runtime.fileio import atomic_write_bytes

    atomic_write_bytes(out, json.dumps(report, indent=2).encode())
    print(json.dumps({k: v for k, v in report.items()}, indent=2)[:4000])
    return report


if __name__ == "__main__":
    main()
