"""What a benchmark prints first: the CPU model and the instruction sets its figures depend on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16")


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags (``/proc/cpuinfo``; no flags where it is absent)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return model, flags


def has_any_flag(*names: str) -> bool:
    """Whether the CPU has one of the instruction sets ``names`` (e.g. ``amx_bf16``)."""
    return bool(cpu_model_and_flags()[1] & set(names))


def cpu_description() -> str:
    """e.g. ``Intel(R) Xeon(R) Processor, 2 CPUs, avx2 avx512f avx512_vnni amx_int8 amx_bf16``."""
    model, flags = cpu_model_and_flags()
    present = " ".join(flag for flag in FLAGS if flag in flags) or "none of " + "/".join(FLAGS)
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs, {present}"


def gemm_peak_gmacs(size: int = 2048, repeats: int = 5, warm_up_seconds: float = 2.0) -> float:
    """This machine's float32 matrix-product throughput with torch's current threads, in GMAC/s: the best
    of ``repeats`` products of two ``size`` x ``size`` matrices, after ``warm_up_seconds`` of products
    (measured: the first seconds of a process ran at under half the speed, clocks and thread pool cold).
    It is the most a convolution, a matrix product underneath, can reach here."""
    import time

    import torch

    a, b = torch.rand(size, size), torch.rand(size, size)
    start = time.perf_counter()
    while time.perf_counter() - start < warm_up_seconds:
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return size**3 / best / 1e9


def gmacs_of(run, *args) -> float:
    """Billions of multiply-accumulates of the convolutions and matrix products in ``run(*args)``
    (torch's FLOP counter, halved; RoIAlign, NMS and other element-wise work not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run(*args)
    return counter.get_total_flops() / 2 / 1e9
