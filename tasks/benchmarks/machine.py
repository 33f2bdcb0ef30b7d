"""What a benchmark prints first: the CPU model and the instruction sets its figures depend on."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16")


def cpuinfo_text() -> str:
    """``/proc/cpuinfo`` (empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text() if cpuinfo.is_file() else ""


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags (``/proc/cpuinfo``; no flags where it is absent)."""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo_text().splitlines():
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


def best_seconds(run, repeats: int = 5, warm_up_seconds: float = 2.0) -> float:
    """The best of ``repeats`` calls of ``run`` after ``warm_up_seconds`` of calls (measured: the first
    seconds of a process ran at under half the speed, clocks and thread pool cold)."""
    start = time.perf_counter()
    while time.perf_counter() - start < warm_up_seconds:
        run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def torch_matmul(size: int = 2048) -> Callable[[], object]:
    """One float32 product of two ``size`` x ``size`` matrices by torch (its current threads)."""
    import torch

    a, b = torch.rand(size, size), torch.rand(size, size)
    return lambda: a @ b


def openvino_matmul(precision: str, size: int = 2048) -> Callable[[], object]:
    """One product of two ``size`` x ``size`` matrices by OpenVINO's CPU MatMul (oneDNN's kernels, those the
    OpenVINO engines run) with torch's thread count: ``f32``, or ``int8`` (quantized by NNCF as
    ``tasks/export.py quantize=int8`` does: u8 activations, i8 weights)."""
    import numpy as np
    import openvino
    import openvino.opset13 as ops
    import torch

    from tasks.inference.openvino_core import openvino_core

    rng = np.random.default_rng(0)
    a = ops.parameter([size, size], openvino.Type.f32, name="a")
    b = ops.constant(rng.standard_normal((size, size)).astype(np.float32))
    model = openvino.Model([ops.matmul(a, b, False, False)], [a], "matmul")
    x = rng.random((size, size), dtype=np.float32)
    if precision == "int8":
        import nncf

        model = nncf.quantize(model, nncf.Dataset([x]), subset_size=1)
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    request = openvino_core().compile_model(model, "CPU", config).create_infer_request()
    return lambda: request.infer([x])


def gemm_peak_gmacs(size: int = 2048, warm_up_seconds: float = 2.0) -> float:
    """torch's float32 matrix-product throughput, in GMAC/s (``best_seconds`` of ``torch_matmul``)."""
    return size**3 / best_seconds(torch_matmul(size), warm_up_seconds=warm_up_seconds) / 1e9


def openvino_matmul_gmacs(precision: str, size: int = 2048, warm_up_seconds: float = 2.0) -> float:
    """OpenVINO's matrix-product throughput at ``precision``, in GMAC/s (``best_seconds`` of ``openvino_matmul``)."""
    return size**3 / best_seconds(openvino_matmul(precision, size), warm_up_seconds=warm_up_seconds) / 1e9


# Multiply-accumulates a core issues per cycle, by vendor and instruction set (the most its units allow:
# two FMA units of the vector width; AMD's Zen 4 runs AVX-512 on 256-bit units; AMX's tile unit)
MACS_PER_CYCLE = {
    "f32": (("GenuineIntel", "avx512f", 32), ("AuthenticAMD", "avx512f", 16), (None, "avx2", 16)),
    "int8": (
        ("GenuineIntel", "amx_int8", 1024),
        ("GenuineIntel", "avx512_vnni", 128),
        ("AuthenticAMD", "avx512_vnni", 64),
        (None, "avx_vnni", 64),
    ),
}


def cpu_facts() -> dict[str, str]:
    """The first CPU's ``/proc/cpuinfo`` entries (vendor, model name, cpu MHz ...)."""
    facts: dict[str, str] = {}
    for line in cpuinfo_text().splitlines():
        key, _, value = line.partition(":")
        if not key.strip():
            break
        facts.setdefault(key.strip(), value.strip())
    return facts


def physical_cores() -> int:
    """Cores (not hardware threads) among the CPUs this process may use: distinct (physical id, core id)."""
    usable = os.sched_getaffinity(0)
    cores, processor, package = set(), None, "0"
    for line in cpuinfo_text().splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            processor = int(value)
        elif key == "physical id":
            package = value
        elif key == "core id" and processor in usable:
            cores.add((package, value))
    return len(cores) or len(usable)


def clock_ghz() -> tuple[float, str]:
    """The cores' clock and where it was read: the model name's rated clock, cpufreq's maximum, or the
    clock /proc/cpuinfo reports (a virtual machine's is often the nominal one)."""
    facts = cpu_facts()
    rated = re.search(r"@\s*([\d.]+)\s*GHz", facts.get("model name", ""))
    if rated:
        return float(rated.group(1)), "the model name's rated clock"
    cpufreq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if cpufreq.is_file():
        return int(cpufreq.read_text()) / 1e6, "cpufreq's maximum"
    return float(facts.get("cpu MHz", "nan")) / 1000, "/proc/cpuinfo's cpu MHz"


def macs_per_cycle(precision: str) -> tuple[str, int] | None:
    """The instruction set and multiply-accumulates a core issues per cycle for ``precision`` here
    (``MACS_PER_CYCLE``), or None where the CPU has no unit for it (int8 without VNNI or AMX)."""
    _, flags = cpu_model_and_flags()
    vendor = cpu_facts().get("vendor_id")
    rows = MACS_PER_CYCLE[precision]
    return next(((flag, macs) for maker, flag, macs in rows if flag in flags and maker in (None, vendor)), None)


def theoretical_peak(precision: str, clock: tuple[float, str] | None = None) -> tuple[float | None, str]:
    """Cores x clock x multiply-accumulates per cycle (``macs_per_cycle``) in GMAC/s, and how it was
    computed; None where the CPU has no unit for ``precision``. ``clock``: GHz and where it comes from
    (default ``clock_ghz``)."""
    per_cycle = macs_per_cycle(precision)
    if per_cycle is None:
        return None, f"no {precision} unit known on this CPU"
    cores, (ghz, source) = physical_cores(), clock or clock_ghz()
    flag, macs = per_cycle
    how = f"{cores} cores x {ghz:.2f} GHz ({source}) x {macs} {precision} MAC a cycle ({flag})"
    return cores * ghz * macs, how


def implied_clock(measured_f32: float) -> float | None:
    """The clock the cores must run at for ``measured_f32`` GMAC/s of float32 products: a lower bound of
    their real clock (a virtual machine's /proc/cpuinfo gives the nominal one, below the turbo clock)."""
    per_cycle = macs_per_cycle("f32")
    return None if per_cycle is None else measured_f32 / (physical_cores() * per_cycle[1])


def gmacs_of(run, *args) -> float:
    """Billions of multiply-accumulates of the convolutions and matrix products in ``run(*args)``
    (torch's FLOP counter, halved; RoIAlign, NMS and other element-wise work not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run(*args)
    return counter.get_total_flops() / 2 / 1e9
