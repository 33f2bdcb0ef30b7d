"""How many intra-op threads torch uses in each process.

torch starts one thread per core of the machine in every process, whatever the process may run on:
two training processes on two cores, a container limited to a few cores of a large machine, or loader
workers beside the main process all oversubscribe the CPUs, and on a shared machine a step can take
many times longer than with one thread (``docs/training.md``, "Threads", has measurements).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
THREADS_VARIABLE = "OMP_NUM_THREADS"


# where the kernel says what CPU time this process's control group may use (tests point it elsewhere)
CGROUP_FILES = (Path("/sys/fs/cgroup"), Path("/proc/self/cgroup"))


def affinity_cpus() -> int:
    """The CPUs this process may run on (its affinity: taskset, SLURM's binding, cpusets)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, bounded by its cgroup's CPU quota (a pod limited to 4
    CPUs on a 64-core node may run on all 64, for 4 CPUs' worth of time)."""
    limit = cgroup_cpu_limit(*CGROUP_FILES)
    return affinity_cpus() if limit is None else min(affinity_cpus(), limit)


def cgroup_cpu_limit(cgroup_root: Path, proc_cgroup: Path) -> int | None:
    """Whole CPUs of the tightest CPU quota on this process's cgroup path (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded down, at least 1; None: no quota found. Rounded
    down because threads beyond the quota are throttled, not run."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            quotas += [_v2_quota(folder) for folder in _ancestors(cgroup_root, path)]
        elif "cpu" in controllers.split(","):
            mount = cgroup_root / controllers
            quotas += [_v1_quota(folder) for folder in _ancestors(mount, path)]
    quotas = [quota for quota in quotas if quota is not None]
    return max(1, math.floor(min(quotas))) if quotas else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder and its parents up to the mount (a container sees its own cgroup as the root)."""
    parts = [part for part in path.split("/") if part]
    return [mount.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


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
    when it is set, else the usable CPUs (``usable_cpus``: affinity and cgroup quota) shared among the
    ``processes`` on this machine, at least one.

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
    quota = ""
    if cpus is None:
        cpus = usable_cpus()
        if cpus < affinity_cpus():
            quota = f" (the cgroup's CPU quota, of {affinity_cpus()} CPUs it may run on)"
    count = max(1, cpus // max(processes, 1))
    return count, f"runtime.threads=auto: {cpus} usable CPUs{quota} / {processes} process(es) on this machine"


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
