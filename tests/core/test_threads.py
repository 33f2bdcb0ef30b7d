"""torch's intra-op threads: the CPUs a process may use, shared among the training processes of the
machine (not the loader workers: exact resume with another worker count); OMP_NUM_THREADS or a number win."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.common import threads
from tasks.common.threads import configure_threads, intra_op_threads
from tests.support import compose_config


@pytest.mark.parametrize(
    ("cpus", "processes", "expected"),
    [
        (2, 1, 2),  # this machine, one process
        (2, 2, 1),  # two gloo processes on two cores
        (16, 8, 2),  # 8 GPUs
        (4, 8, 1),  # never under one
    ],
)
def test_auto_shares_the_usable_cpus(cpus: int, processes: int, expected: int) -> None:
    count, why = intra_op_threads("auto", processes=processes, cpus=cpus, environment={})
    assert count == expected
    assert f"{cpus} usable CPUs / {processes} process(es)" in why


def test_omp_num_threads_and_a_number_win() -> None:
    assert intra_op_threads("auto", cpus=16, environment={"OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS=3")
    assert intra_op_threads(4, cpus=16, environment={"OMP_NUM_THREADS": "3"}) == (4, "runtime.threads=4")
    with pytest.raises(ValueError, match="runtime.threads=0 must be a positive count or auto"):
        intra_op_threads(0)


def test_a_run_sets_torchs_threads_from_its_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 12)
    before = torch.get_num_threads()
    try:
        ddp = compose_config(
            ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=3", "dataset.num_workers=2"], tmp_path
        )
        assert configure_threads(ddp) == torch.get_num_threads() == 12 // 3  # workers change no rounding
        alone = compose_config(["runtime.threads=1"], tmp_path)
        assert configure_threads(alone) == torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
