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


def _cgroup(tmp_path: Path, lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup tree and /proc/self/cgroup."""
    root = tmp_path / "cgroup"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    (tmp_path / "proc_cgroup").write_text(lines)
    return root, tmp_path / "proc_cgroup"


@pytest.mark.parametrize(
    ("lines", "files", "expected"),
    [
        # cgroup v2, a pod limited to 4 CPUs; its parent slice unlimited
        ("0::/kubepods/pod1\n", {"kubepods/pod1/cpu.max": "400000 100000\n", "kubepods/cpu.max": "max 100000\n"}, 4),
        # v2 inside a container: the process's own cgroup is the mount's root
        ("0::/\n", {"cpu.max": "250000 100000\n"}, 2),  # 2.5 CPUs: 2 threads never throttled
        # a parent's quota is tighter than the process's own
        ("0::/a/b\n", {"a/b/cpu.max": "800000 100000\n", "a/cpu.max": "300000 100000\n"}, 3),
        # v1: cpu.cfs_quota_us / cpu.cfs_period_us
        ("4:cpu,cpuacct:/docker/x\n", {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "600000\n",
                                       "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}, 6),
        ("4:cpu,cpuacct:/docker/x\n", {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "-1\n",
                                       "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}, None),
        ("0::/user.slice\n", {"user.slice/cpu.max": "max 100000\n"}, None),  # no quota
        ("0::/gone\n", {}, None),  # no files: nothing known
    ],
)  # fmt: skip
def test_a_cgroup_cpu_quota_bounds_the_usable_cpus(tmp_path: Path, lines: str, files: dict, expected) -> None:
    root, proc = _cgroup(tmp_path, lines, files)
    assert threads.cgroup_cpu_limit(root, proc) == expected


def test_auto_on_a_64_core_node_limited_to_4_cpus_takes_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, proc = _cgroup(tmp_path, "0::/pod\n", {"pod/cpu.max": "400000 100000\n"})
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 64)
    monkeypatch.setattr(threads, "CGROUP_FILES", (root, proc))
    count, why = intra_op_threads("auto", processes=1, environment={})
    assert count == 4 and "4 usable CPUs" in why and "CPU quota" in why
