"""What a process knows about its launch before Lightning starts: its rank, the launcher's job
id, and the run directory every node of the job shares.

Lightning's own cluster environments (SLURM, torchelastic/torchrun, plain environment
variables) decide the ranks; this module only reads the same variables earlier, because the
run directory is resolved by Hydra before the Trainer exists.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

# Rank 0 of a multi-node job without a launcher job id serves its run name on MASTER_PORT + 1.
RUN_NAME_PORT_OFFSET = 1
RUN_NAME_TIMEOUT = timedelta(minutes=15)  # nodes of one job may start minutes apart
_RUN_NAME_KEY = "run_name"
_served: list = []  # rank 0 keeps its store alive while the other nodes may still ask


def _env_int(*names: str) -> int | None:
    for name in names:
        if os.environ.get(name, "").strip().lstrip("-").isdigit():
            return int(os.environ[name])
    return None


def node_rank() -> int:
    return _env_int("NODE_RANK", "GROUP_RANK", "SLURM_NODEID") or 0


def is_global_rank_zero() -> bool:
    """From the launcher's variables: RANK (torchrun), SLURM_PROCID, or node and local rank."""
    rank = _env_int("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    if rank is not None:
        return rank == 0
    return node_rank() == 0 and (_env_int("LOCAL_RANK") or 0) == 0


def rank_suffix() -> str:
    """'' for global rank 0, else a suffix naming this process (for per-process log files)."""
    if is_global_rank_zero():
        return ""
    rank = _env_int("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    return f"_rank{rank}" if rank is not None else f"_node{node_rank()}_local{_env_int('LOCAL_RANK') or 0}"


def launcher_job_id() -> str | None:
    """The job id of SLURM (srun) or torchrun (``--rdzv-id``), which every process of the job shares."""
    # imported here: composing a config (--cfg job, check_dataset.py) then costs no Lightning import
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect() and SLURMEnvironment.job_id() is not None:
        array_task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm{SLURMEnvironment.job_id()}" + (f"_{array_task}" if array_task else "")
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if TorchElasticEnvironment.detect() and run_id not in ("", "none"):
        return f"torchrun{run_id}"
    return None


def _timestamp() -> str:
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _name_from_rank_zero() -> str:
    """Rank 0's timestamp, sent to the other nodes over a TCP store (torch's rendezvous primitive)."""
    from torch.distributed import TCPStore

    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + RUN_NAME_PORT_OFFSET
    serving = is_global_rank_zero()
    try:
        store = TCPStore(host, port, is_master=serving, timeout=RUN_NAME_TIMEOUT, wait_for_workers=False)
        if serving:
            store.set(_RUN_NAME_KEY, _timestamp())
            _served.append(store)
        return store.get(_RUN_NAME_KEY).decode()
    except (RuntimeError, OSError) as err:
        raise RuntimeError(
            f"could not agree on a run directory with the first node over {host}:{port} (MASTER_PORT + "
            f"{RUN_NAME_PORT_OFFSET}): {err}. Free that port on the first node, or pass the same "
            "hydra.run.dir=DIR to every node"
        ) from err


@cache
def run_name(num_nodes: int = 1) -> str:
    """The last part of the run directory: the launcher's job id, else the start time (rank 0's on
    a multi-node job launched without a job id, so that every node writes to one directory).
    Fixed once a process has asked: resolving the config again gives the same directory."""
    job_id = launcher_job_id()
    if job_id:
        return job_id
    if int(num_nodes or 1) > 1 and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        return _name_from_rank_zero()
    return _timestamp()


def run_dir(base: str, job_name: str, ckpt_path: str | None = None, num_nodes: int = 1) -> str:
    """``base/<job>_<run name>``; a training run resumed from ``<run>/checkpoints/*.ckpt`` goes back to
    ``<run>``, so the checkpoint callback keeps its best model and the logs stay in one place."""
    if ckpt_path and job_name == "train":
        checkpoint = Path(ckpt_path).expanduser().resolve()
        if checkpoint.parent.name == "checkpoints" and checkpoint.is_file():
            return str(checkpoint.parent.parent)
    return f"{base}/{job_name}_{run_name(num_nodes)}"
