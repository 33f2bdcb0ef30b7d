"""Launches users run on clusters, simulated on this CPU with gloo: torchrun, several nodes by
environment variables, SLURM's srun. Every process of a job writes into one run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks import PROJECT_ROOT
from tests.support import (
    CPU_DDP,
    TINY_DETECTION,
    TINY_SEGMENTATION,
    free_port,
    run_script,
    shapes_overrides,
    shapes_seg_overrides,
    start_script,
)


def _outputs(tmp_path: Path) -> list[str]:
    return [f"paths.log_dir={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}"]


def _only_run_dir(tmp_path: Path, task: str) -> Path:
    runs = sorted((tmp_path / "outputs" / task).iterdir())
    assert len(runs) == 1, f"one run directory expected, found {[r.name for r in runs]}"
    return runs[0]


def _wait(processes: list[subprocess.Popen], logs: list[Path]) -> None:
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(timeout=600) == 0, log.read_text()[-3000:]


@pytest.mark.distributed
def test_segmentation_under_torchrun_on_two_nodes_shares_one_run_directory(
    shapes_voc_root: Path, tmp_path: Path
) -> None:
    args = [
        *TINY_SEGMENTATION,
        *shapes_seg_overrides(shapes_voc_root),
        *CPU_DDP,
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.max_steps=2",  # one epoch: 16 images, 2 processes, batches of 4
        "trainer.enable_progress_bar=false",
        *_outputs(tmp_path),
    ]
    port = free_port()
    logs = [tmp_path / f"torchrun{rank}.log" for rank in range(2)]
    processes = []
    for rank, log in enumerate(logs):  # torchrun on each of two nodes, as README shows
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}", "--nproc-per-node=1",
            "--master-addr=127.0.0.1", f"--master-port={port}", "--rdzv-id=job7", "tasks/train.py", *args,
        ]  # fmt: skip
        with log.open("w") as out:
            processes.append(subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=out, stderr=out))
    _wait(processes, logs)
    run = _only_run_dir(tmp_path, "segmentation")
    assert run.name == "train_torchrunjob7"  # torchrun's run id, which every process reads
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train_rank1.log").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= 1
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2
    # the start-up check ran once, on global rank 0, and was remembered for the others
    assert "checked" in " ".join(p.name for p in (tmp_path / "cache").iterdir())


def _tiny_detection(shapes_root: Path) -> list[str]:
    return ["backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root), "trainer.enable_progress_bar=false"]


def _two_nodes(env_of_rank, args: list[str], tmp_path: Path) -> None:
    logs = [tmp_path / f"node{rank}.log" for rank in range(2)]
    processes = [start_script("train.py", args, env=env_of_rank(rank), log=logs[rank]) for rank in range(2)]
    _wait(processes, logs)


@pytest.mark.distributed
def test_two_nodes_share_a_run_directory_and_match_one_process(shapes_root: Path, tmp_path: Path) -> None:
    ddp = [*CPU_DDP, "trainer.devices=1", "trainer.num_nodes=2"]
    args = [*_tiny_detection(shapes_root), *ddp, "trainer.max_steps=2", *_outputs(tmp_path)]
    port = free_port()
    cluster = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    _two_nodes(lambda rank: {**cluster, "NODE_RANK": str(rank)}, args, tmp_path)
    run = _only_run_dir(tmp_path, "detection")  # rank 0 told the other node its directory
    assert (run / "train_node1_local0.log").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    # the data was indexed once, by global rank 0; the other node read the cache
    assert "indexed" in (run / "train.log").read_text()
    assert "indexed" not in (run / "train_node1_local0.log").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert Path(metrics["checkpoint"]).parent == run / "checkpoints"

    alone = run_script(
        "evaluate.py",
        [*_tiny_detection(shapes_root), f"ckpt_path={metrics['checkpoint']}", f"hydra.run.dir={tmp_path / 'eval'}"],
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    single = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for name in ("map", "map_50", "mar_100", "mar_small"):
        assert metrics[name] == pytest.approx(single[name], abs=1e-9), name
    # (the validation loss is left out: it samples proposals per batch, and the batches differ)


@pytest.mark.distributed
def test_slurm_tasks_on_two_nodes_write_into_the_job_directory(shapes_root: Path, tmp_path: Path) -> None:
    ddp = [*CPU_DDP, "trainer.devices=1", "trainer.num_nodes=2"]
    args = [*_tiny_detection(shapes_root), *ddp, "trainer.max_steps=1", "trainer.limit_val_batches=1"]
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "train",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }

    def env_of_rank(rank: int) -> dict[str, str]:  # what srun sets for each task
        return {**slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": "0", "SLURM_NODEID": str(rank)}

    _two_nodes(env_of_rank, [*args, *_outputs(tmp_path)], tmp_path)
    run = _only_run_dir(tmp_path, "detection")
    assert run.name == "train_slurm4242"
    assert (run / "metrics.json").is_file() and (run / "train_rank1.log").is_file()
