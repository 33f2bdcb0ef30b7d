"""What a process reads from its launcher before Lightning starts: rank and run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core import launch

LAUNCH_VARIABLES = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_NODEID",
                    "LOCAL_RANK", "SLURM_NTASKS", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    launch.run_name.cache_clear()


@pytest.mark.parametrize(
    ("variables", "zero", "suffix"),
    [
        ({}, True, ""),
        ({"RANK": "3", "LOCAL_RANK": "1"}, False, "_rank3"),  # torchrun
        ({"SLURM_PROCID": "0", "SLURM_NODEID": "0"}, True, ""),
        ({"NODE_RANK": "1"}, False, "_node1_local0"),  # by hand, second node
        ({"NODE_RANK": "0", "LOCAL_RANK": "2"}, False, "_node0_local2"),  # Lightning's own child process
    ],
)
def test_rank_from_the_launcher(variables: dict, zero: bool, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert launch.is_global_rank_zero() is zero and launch.rank_suffix() == suffix


def test_resumed_training_goes_back_to_its_run_directory(tmp_path: Path) -> None:
    checkpoint = tmp_path / "outputs" / "detection" / "train_old" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    base = str(tmp_path / "outputs" / "detection")
    assert launch.run_dir(base, "train", str(checkpoint)) == str(checkpoint.parent.parent)
    assert launch.run_dir(base, "evaluate", str(checkpoint)).startswith(f"{base}/evaluate_")  # evaluation: a new one
    elsewhere = tmp_path / "copied.ckpt"
    elsewhere.write_bytes(b"")
    assert launch.run_dir(base, "train", str(elsewhere)).startswith(f"{base}/train_")


def test_job_ids_name_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert launch.run_name(2) == "slurm777"
