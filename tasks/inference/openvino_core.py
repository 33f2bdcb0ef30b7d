"""One OpenVINO ``Core`` per process, shared by export, the engine and quantization.

Every ``openvino.Core()`` loads the device plugins anew; creating and dropping many of them in one
process made a later ``fork`` (a subprocess, loader workers) crash with a segmentation fault in
this test suite (openvino 2026.4). A single, never-dropped Core avoids it and reads each model once.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def openvino_core() -> Any:
    """The process's ``openvino.Core`` (the caller has checked that OpenVINO is installed)."""
    import openvino

    return openvino.Core()
