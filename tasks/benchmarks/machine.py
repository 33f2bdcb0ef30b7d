"""What a benchmark prints first: the CPU model and the instruction sets its figures depend on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16")


def cpu_description() -> str:
    """e.g. ``Intel(R) Xeon(R) Processor, 2 CPUs, avx2 avx512f avx512_vnni amx_int8 amx_bf16``."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    present = " ".join(flag for flag in FLAGS if flag in flags) or "none of " + "/".join(FLAGS)
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs, {present}"
