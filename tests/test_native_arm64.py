"""``edgekit-run`` for arm64 (``make native-arm64``), run here under user-mode emulation.

The tool is cross-compiled with Debian's gcc-aarch64-linux-gnu against the libLiteRt.so of the
aarch64 wheel of the pinned version, and run with qemu-user-static. LiteRT reads /proc/cpuinfo to
pick its kernels and segfaults on the host's x86 one under emulation, so each run happens in its
own mount namespace (``unshare -m``) with a Cortex-A72's cpuinfo (runtime/c/arm64/) bind-mounted
over /proc/cpuinfo, and qemu emulates that same CPU (``-cpu cortex-a72``): with qemu's default
``-cpu max`` the kernel's HWCAP advertises int8 extensions the cpuinfo does not, XNNPACK picks other
int8 kernels, and their results under emulation were wrong (an int8 MC mean of 0.34 where x86 and
float32 give 0.24; float32 files were right either way). Emulated timings mean nothing (hundreds of times slower): few samples, few
calls, no timing asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from test_native import ALL_FIXTURES, FIXTURES, ROOT, TOOL, ensure_built, inputs_for
from test_native import pytestmark as _native_mark

ARM64_TOOL = ROOT / "build" / "native-arm64" / "edgekit-run"
CPUINFO = ROOT / "runtime" / "c" / "arm64" / "cpuinfo-cortex-a72.txt"
SYSROOT = "/usr/aarch64-linux-gnu"

pytestmark = [pytest.mark.slow, _native_mark]


def _why_not() -> str | None:
    if shutil.which("qemu-aarch64-static") is None or not ARM64_TOOL.exists():
        p = subprocess.run(["make", "-s", "native-arm64"], check=False, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            return f"make native-arm64 failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}"
    if os.geteuid() != 0:
        return "unshare -m and the bind mount over /proc/cpuinfo need root (CAP_SYS_ADMIN)"
    return None


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    why = _why_not()
    if why:
        pytest.skip(why)
    cache = tmp_path_factory.mktemp("arm64-cache")

    def run(*args):
        cmd = " ".join(["exec", "qemu-aarch64-static", "-cpu", "cortex-a72", "-L", SYSROOT, str(ARM64_TOOL),
                        *map(str, args)])
        script = f"mount --bind {CPUINFO} /proc/cpuinfo && {cmd}"
        return subprocess.run(["unshare", "-m", "sh", "-c", script], check=False, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "XDG_CACHE_HOME": str(cache)})

    return run


def test_the_arm64_binary_is_arm64():
    if _why_not():
        pytest.skip(_why_not())
    head = ARM64_TOOL.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_emulated_mc_means_agree_with_the_x86_python_runtime(emulated, name, tmp_path):
    from edgekit.runtime import MCModel

    x = inputs_for(name, n=1, seed=6)
    np.save(tmp_path / "x.npy", x)
    T = 300
    p = emulated(FIXTURES / f"{name}.tflite", tmp_path / "x.npy", "-T", T, "--seed", 2, "--json")
    assert p.returncode == 0, p.stderr
    pred = json.loads(p.stdout)["predictions"][0]
    ref = MCModel(FIXTURES / f"{name}.tflite", seed=1, probe=False).predict(x, samples=T)
    se = np.sqrt(np.array(pred["std"]) ** 2 / pred["samples"] + ref.std[0].astype(np.float64) ** 2 / T)
    # 4 standard errors of the difference per class (as the x86 comparison in test_native.py)
    assert np.all(np.abs(np.array(pred["mean"]) - ref.mean[0]) <= 4 * se + 1e-7), (name, pred["mean"], ref.mean[0])


@pytest.mark.parametrize("name", ["mlp_twin", "cnn_mask", "input_mc_twin", "mlp_int8", "mlp_int8io", "mlp_int8mask"])
def test_emulated_arm64_gives_x86s_samples_for_the_same_masks(emulated, name, tmp_path):
    # Same file, same seed, so the same masks: the per-sample probabilities differ only by how
    # XNNPACK's NEON and AVX float32 kernels round (3e-8 seen; int8 files were identical); 1e-5
    # leaves room for a longer accumulation, far below the spread of the samples (~1e-2).
    ensure_built()
    x = inputs_for(name, n=2, seed=7)
    np.save(tmp_path / "x.npy", x)
    p = emulated(FIXTURES / f"{name}.tflite", tmp_path / "x.npy", "-T", 30, "--seed", 5, "--samples-out", tmp_path / "a.npy")
    assert p.returncode == 0, p.stderr
    subprocess.run([str(TOOL), FIXTURES / f"{name}.tflite", tmp_path / "x.npy", "-T", "30", "--seed", "5",
                    "--samples-out", tmp_path / "b.npy", "--no-probe"], check=True, capture_output=True)
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == b.shape == (2, 30, b.shape[-1])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_without_an_arm64_cpuinfo_litert_crashes_and_the_probe_says_so(emulated, tmp_path):
    # The reason for the bind mount, and the probe at work: on the host's x86 /proc/cpuinfo,
    # LiteRT segfaults under emulation; edgekit-run's probe child dies, the tool reports it.
    np.save(tmp_path / "x.npy", inputs_for("mlp_twin", 1))
    p = subprocess.run(["qemu-aarch64-static", "-cpu", "cortex-a72", "-L", SYSROOT, str(ARM64_TOOL),
                        FIXTURES / "mlp_twin.tflite",
                        tmp_path / "x.npy", "-T", "4"], check=False, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert p.returncode == 1 and "LiteRT crashed (SIGSEGV)" in p.stderr
