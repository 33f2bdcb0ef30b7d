"""How many intra-op threads torch uses in each process.

torch starts one thread per core of the machine in every process, whatever the process may run on:
two training processes on two cores, a container limited to a few cores of a large machine, or loader
workers beside the main process all oversubscribe the CPUs, and on a shared machine a step can take
many times longer than with one thread (``docs/training.md``, "Threads", has measurements).
"""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
THREADS_VARIABLE = "OMP_NUM_THREADS"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: cgroups, taskset, SLURM's binding), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def processes_per_node(devices: object) -> int:
    """The training processes on each machine for ``trainer.devices`` (a count, a list of indices, or
    -1 / "auto": every visible GPU)."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if hasattr(devices, "__len__") and not isinstance(devices, str):  # a list of device indices
        return len(devices)
    return max(1, torch.cuda.device_count())


def intra_op_threads(
    setting: int | str | None,
    *,
    processes: int = 1,
    cpus: int | None = None,
    environment: dict[str, str] | None = None,
) -> tuple[int, str]:
    """The thread count for ``setting`` and why: a number as given; ``auto`` (or None): ``OMP_NUM_THREADS``
    when it is set, else the usable CPUs shared among the ``processes`` on this machine, at least one.

    Loader workers are not counted: the thread count changes a CPU run's rounding, and a run resumed
    with another ``dataset.num_workers`` must continue exactly. Where workers compete for the cores,
    give ``runtime.threads`` (the log line names the workers)."""
    environment = os.environ if environment is None else environment
    if setting not in (None, "auto"):
        count = int(setting)
        if count < 1:
            raise ValueError(f"runtime.threads={setting} must be a positive count or auto")
        return count, f"runtime.threads={count}"
    if environment.get(THREADS_VARIABLE, "").isdigit() and int(environment[THREADS_VARIABLE]) > 0:
        count = int(environment[THREADS_VARIABLE])
        return count, f"{THREADS_VARIABLE}={count}"
    cpus = usable_cpus() if cpus is None else cpus
    count = max(1, cpus // max(processes, 1))
    return count, f"runtime.threads=auto: {cpus} usable CPUs / {processes} process(es) on this machine"


def configure_threads(cfg: DictConfig) -> int:
    """Set torch's intra-op threads from a run config's ``runtime.threads`` and ``trainer.devices``, and
    log them with the loader workers beside them."""
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    workers = int(OmegaConf.select(cfg, "dataset.num_workers", default=0) or 0)
    setting = OmegaConf.select(cfg, "runtime.threads", default="auto")
    count, why = intra_op_threads(setting, processes=processes_per_node(devices))
    torch.set_num_threads(count)
    log.info("intra-op threads: %d (%s; beside %d loader worker(s) a process)", count, why, workers)
    return count
