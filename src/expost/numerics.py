"""CPU numerics that do not depend on the machine: the same run gives the same bits on any x86 CPU
with AVX2, so a post rebuilt elsewhere (CI, a reader's laptop, next year's machine) matches.

torch picks its CPU kernels by the instruction set it finds (ATen's own, oneDNN's, and MKL's BLAS
and LAPACK), so an AVX-512 machine and an AVX2 one differ in the last float32 digits, which changes
every per-seed number and figure a post publishes. Pinning all three to their AVX2 code paths
before torch is imported removes that (measured: no slower for the example experiments). A
variable the user has set is left alone; `EXPOST_NATIVE_CPU=1` leaves all three alone.
"""

from __future__ import annotations

import os

PINNED = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin() -> None:
    """Set the pinned code paths in this process's environment (inherited by every run's process),
    unless the user chose otherwise. Only effective for torch imported after this."""
    if os.environ.get("EXPOST_NATIVE_CPU", "") not in ("", "0"):
        return
    for name, value in PINNED.items():
        os.environ.setdefault(name, value)


def describe() -> dict:
    """What the manifest records: each variable as the runs saw it ("" where unset)."""
    return {name: os.environ.get(name, "") for name in PINNED}
