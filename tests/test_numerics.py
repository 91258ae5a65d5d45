"""Runs use the same CPU kernels on every x86 machine (expost.numerics): a post rebuilt on an
AVX-512 machine matches one built on an AVX2 machine, bit for bit."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_workspace

PROBE = '''
import os
PARAMS = {"a": 1}
OUTPUTS = {"avx2": "scalar: 1 when torch runs its AVX2 kernels", "mkl": "scalar: 1 when MKL_CBWR is AVX2"}
SEEDS = 3
CLAIMS = [{"claim": "torch runs its AVX2 kernels.", "check": lambda r: r.scalar("avx2") == 1},
          {"claim": "MKL runs its AVX2 code path.", "check": lambda r: r.scalar("mkl") == 1}]


def run(cfg, seed):
    import torch
    return {"avx2": float(torch.backends.cpu.get_cpu_capability() == "AVX2"),
            "mkl": float(os.environ.get("MKL_CBWR") == "AVX2")}
'''

AVX2 = platform.machine() in ("x86_64", "AMD64") and " avx2" in Path("/proc/cpuinfo").read_text(errors="ignore") \
    if Path("/proc/cpuinfo").exists() else False


def check(root, cache, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env = {**base, "EXPOST_CACHE_DIR": str(cache), **env}
    subprocess.run([sys.executable, "-m", "expost", "run", "-q", "probe"], cwd=root, env=env, check=True,
                   capture_output=True)
    return subprocess.run([sys.executable, "-m", "expost", "check", "probe"], cwd=root, env=env,
                          capture_output=True, text=True)


@pytest.mark.skipif(not AVX2, reason="needs an x86 CPU with AVX2")
def test_runs_use_the_pinned_kernels_unless_the_user_says_otherwise(tmp_path):
    root = make_workspace(tmp_path / "ws")
    (root / "experiments" / "probe.py").write_text(PROBE)
    pinned = check(root, tmp_path / "c1")
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr  # both claims hold in every seed
    mine = check(root, tmp_path / "c2", MKL_CBWR="COMPATIBLE")  # a variable the user set is kept
    assert mine.returncode == 1 and "does not hold" not in mine.stdout.split("MKL")[0]
    native = check(root, tmp_path / "c3", EXPOST_NATIVE_CPU="1")
    assert native.returncode == 1 and "fails" in native.stdout
