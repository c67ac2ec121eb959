"""Run many model files through child processes, cheaply, and survive whatever they do.

:func:`run_cases` starts long-lived ``worker.py`` children (two, on interleaved shards), sends each
one request at a time and waits for its answer with a per-case timeout. Only when a case kills the child (a native crash:
EOF on its stdout) or hangs (no answer in time: the child is SIGKILLed) is a fresh child started,
for the next case. So 500 files cost a handful of process starts, not 500.

Each result is the worker's JSON plus ``case`` (the case name) and ``seconds`` (from the request to
the answer, or to the child's death or the timeout); a dead child gives
``{"status": "crash", "signal": N, "stderr": "..."}`` and a timeout ``{"status": "hang"}``.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .corrupt import Case, materialize

__all__ = ["WORKER", "input_shape_for", "run_cases", "summarize"]

WORKER = Path(__file__).resolve().parent / "worker.py"
_INPUT_SHAPES = {"mlp": [20], "cnn": [12, 12, 1], "book": [28, 28]}


def input_shape_for(case: Case) -> list[int]:
    """The clean model's input shape (without batch), so a corrupted copy gets a sensible input."""
    for prefix, shape in _INPUT_SHAPES.items():
        if case.source.startswith(prefix):
            return shape
    return _INPUT_SHAPES["mlp"]  # foreign.tflite is mlp_ingraph without metadata; random files: any


class _Child:
    def __init__(self, mode: str, env: dict, stderr_path: Path, startup_timeout: float):
        self.stderr_file = open(stderr_path, "w+b")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            env=env,
            text=True,
            bufsize=1,
        )
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = self.read(startup_timeout)
        if not ready or json.loads(ready).get("status") != "ready":
            self.kill()
            raise RuntimeError(f"fuzz worker did not start: {self.stderr_tail()}")

    def read(self, timeout: float) -> str | None:
        """One line from the child, '' on EOF (it died), None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.sel.select(left):
                return self.proc.stdout.readline()

    def stderr_tail(self, limit: int = 600) -> str:
        self.stderr_file.flush()
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode("utf-8", "replace")[-limit:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.sel.close()
        self.stderr_file.close()


def run_cases(
    mode: str,
    cases: Sequence[Case],
    *,
    timeout: float = 30.0,
    folder: str | os.PathLike | None = None,
    env: dict | None = None,
    jobs: int | None = None,
    model: str | None = None,
) -> list[dict]:
    """Load every case in ``mode`` ("stock", "mcmodel" or "predict") in worker children.

    ``jobs`` workers run side by side on interleaved shards of the cases (default: 2, or 1 on a
    single core); results come back in the order of ``cases``. With ``model`` (mode "predict"),
    each case is an input file for that model instead of a model.
    """
    jobs = jobs or min(2, os.cpu_count() or 1)
    own = None
    if folder is None:
        own = tempfile.TemporaryDirectory(prefix="edgekit-fuzz-")
        folder = own.name
    folder = Path(folder)
    child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "FUZZ_SCRATCH": str(folder), **(env or {})}
    try:
        shards = [list(range(j, len(cases), jobs)) for j in range(jobs)]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            parts = list(pool.map(lambda j: _run_shard(mode, [cases[i] for i in shards[j]], timeout, folder, child_env, j, model), range(jobs)))
    finally:
        if own is not None:
            own.cleanup()
    results: list[dict] = [{}] * len(cases)
    spawns = sum(n for _, n in parts)
    for shard, (part, _) in zip(shards, parts, strict=True):
        for i, result in zip(shard, part, strict=True):
            result["spawns"] = spawns
            results[i] = result
    return results


def _run_shard(
    mode: str, cases: Sequence[Case], timeout: float, folder: Path, env: dict, shard: int, model: str | None
) -> tuple[list[dict], int]:
    results: list[dict] = []
    child: _Child | None = None
    spawns = 0
    scratch = folder / f"shard-{shard}"
    scratch.mkdir(exist_ok=True)
    try:
        for case in cases:
            if child is None:
                child = _Child(mode, env, folder / f"stderr-{mode}-{shard}-{spawns}.txt", startup_timeout=120)
                spawns += 1
            path = materialize(case, scratch)
            request = {"path": path, "input_shape": input_shape_for(case)}
            if model is not None:
                request["model"] = model
            started = time.monotonic()
            child.proc.stdin.write(json.dumps(request) + "\n")
            child.proc.stdin.flush()
            line = child.read(timeout)
            elapsed = time.monotonic() - started
            if line:
                result = json.loads(line)
            elif line is None:
                result = {"status": "hang", "timeout_s": timeout}
                child.kill()
                child = None
            else:
                code = child.proc.wait()
                result = {
                    "status": "crash",
                    "signal": -code if code < 0 else None,
                    "exit_code": code,
                    "signal_name": signal.Signals(-code).name if code < 0 else None,
                    "stderr": child.stderr_tail(),
                }
                child.kill()
                child = None
            result["case"] = case.name
            result["seconds"] = round(elapsed, 3)
            results.append(result)
            if case.special is None and case.data is not None:
                os.unlink(path)  # keep the scratch folder small; the corpus is regenerated from its seed
    finally:
        if child is not None:
            child.proc.stdin.close()
            child.kill()
    return results, spawns


def summarize(cases: Iterable[Case], results: Iterable[dict]) -> dict:
    """Counts by status, overall and by kind."""
    by_status: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for case, result in zip(cases, results, strict=True):
        status = result["status"]
        by_status[status] = by_status.get(status, 0) + 1
        kind = by_kind.setdefault(case.kind, {})
        kind[status] = kind.get(status, 0) + 1
    return {"by_status": by_status, "by_kind": by_kind}
