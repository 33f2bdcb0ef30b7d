"""The benchmarks' own checks: what they measure is what they name, and their verdicts can be false."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from tasks.benchmarks.eval_and_data_speed import STATS_TOLERANCE, largest_difference
from tasks.benchmarks.inference_speed import detections_equal, headline
from tasks.benchmarks.throughput import Throughput
from tasks.data.loader import training_loader
from tasks.evaluation.coco_eval import COCO_STAT_NAMES


class _SlowData(Dataset):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> torch.Tensor:
        time.sleep(self.seconds)
        return torch.full((4,), float(index))


def _images_and_targets(items: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[None]]:
    return items, [None] * len(items)


class _Tiny(L.LightningModule):
    def __init__(self, data_seconds: float) -> None:
        super().__init__()
        self.layer, self.data_seconds = torch.nn.Linear(4, 1), data_seconds

    def training_step(self, batch: tuple[list[torch.Tensor], list], batch_idx: int) -> torch.Tensor:
        return self.layer(torch.stack(batch[0])).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return training_loader(
            _SlowData(self.data_seconds), 2, seed=0, trainer=self.trainer, collate_fn=_images_and_targets
        )


class _SlowHook(L.Callback):
    """Another callback's work between steps: not the data loader's."""

    def on_train_batch_start(self, *args) -> None:
        time.sleep(0.02)


def _throughput(tmp_path: Path, data_seconds: float) -> dict[str, float]:
    meter = Throughput(warmup=2)
    trainer = L.Trainer(
        max_steps=10, callbacks=[_SlowHook(), meter], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    module = _Tiny(data_seconds)
    trainer.fit(module)
    return meter.results(module)


@pytest.mark.slow
def test_throughput_counts_the_data_loader_wait_alone(tmp_path: Path) -> None:
    slow_data = _throughput(tmp_path / "a", data_seconds=0.02)  # 40 ms of loading a step, 20 of a hook
    assert slow_data["measured_images"] == 16  # steps 2-9, 2 images each
    assert 0.45 < slow_data["data_wait_fraction"] < 0.8
    fast_data = _throughput(tmp_path / "b", data_seconds=0.0)  # the hook's 20 ms a step is not waiting for data
    assert fast_data["data_wait_fraction"] < 0.1


def test_evaluation_backends_must_agree_within_the_tolerance() -> None:
    stats = {name: 0.25 for name in COCO_STAT_NAMES}
    assert largest_difference(stats, dict(stats)) == 0.0
    assert largest_difference(stats, {**stats, "mar_100": 0.25 + 3e-9}) > STATS_TOLERANCE


def _detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


def test_detections_are_equal_only_with_their_scores() -> None:
    reference = [_detections([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.06], [1, 2])]
    reordered = [_detections([[5, 5, 20, 20], [0, 0, 10, 10.005]], [0.06, 0.9], [2, 1])]
    assert detections_equal(reference, reordered)[0]  # order and 0.005 px do not matter
    rescored = [_detections([[0, 0, 10, 10], [5, 5, 20, 20]], [0.06, 0.9], [1, 2])]
    assert not detections_equal(reference, rescored)[0]  # the same boxes with other scores differ
    relabelled = [_detections([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.06], [2, 1])]
    assert not detections_equal(reference, relabelled)[0]
    moved = [_detections([[0, 0, 10, 10], [5, 5, 20, 20.5]], [0.9, 0.06], [1, 2])]
    assert not detections_equal(reference, moved)[0]


def test_the_headline_is_the_fastest_engine_whether_or_not_it_is_equal() -> None:
    seconds = {"torchvision eager": 4.0, "a": 2.0, "b": 1.0}
    equality = {"torchvision eager": (True, ""), "a": (True, ""), "b": (False, "3 detections instead of 4")}
    assert headline(seconds, equality) == ("b", 4.0, False)
    nothing_equal = {name: (False, "") for name in seconds}
    assert headline(seconds, nothing_equal) == ("b", 4.0, False)
    with pytest.raises(ValueError, match="no engine"):
        headline({"torchvision eager": 4.0}, {"torchvision eager": (True, "")})


def test_gmacs_count_convolutions_and_matrix_products_by_hand() -> None:
    import torch

    from tasks.benchmarks.machine import gemm_peak_gmacs, gmacs_of

    conv, linear = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(800, 10)
    macs = 8 * 3 * 9 * 10 * 10 + 800 * 10  # per output: 3x3x3 products; then 800 per output of the linear layer
    assert gmacs_of(lambda x: linear(conv(x).flatten(1)), torch.rand(1, 3, 10, 10)) * 1e9 == macs
    assert gemm_peak_gmacs(size=256, warm_up_seconds=0.1) > 0


INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
cpu MHz\t\t: 2600.000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu avx2 avx512f avx512_vnni

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu avx2 avx512f avx512_vnni

processor\t: 2
physical id\t: 0
core id\t\t: 1
"""


def test_the_theoretical_peak_is_cores_times_clock_times_the_units_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hardware threads of one core and a third CPU on another core: 2 cores at the rated 2.0 GHz."""
    from tasks.benchmarks import machine

    monkeypatch.setattr(machine, "cpuinfo_text", lambda: INTEL)
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda _: {0, 1, 2})
    assert machine.physical_cores() == 2 and machine.clock_ghz() == (2.0, "the model name's rated clock")
    f32, how = machine.theoretical_peak("f32")
    assert f32 == pytest.approx(2 * 2.0 * 32) and "32 f32 MAC a cycle (avx512f)" in how
    int8, how = machine.theoretical_peak("int8")
    assert int8 == pytest.approx(2 * 2.0 * 128) and "(avx512_vnni)" in how
    # 160 GMAC/s measured on 2 cores of 32 float32 MACs a cycle: they run at 2.5 GHz at least
    assert machine.implied_clock(160.0) == pytest.approx(2.5)
    assert machine.theoretical_peak("int8", (2.5, "implied"))[0] == pytest.approx(2 * 2.5 * 128)
    amd = INTEL.replace("GenuineIntel", "AuthenticAMD").replace(" avx512_vnni", "")
    monkeypatch.setattr(machine, "cpuinfo_text", lambda: amd)
    assert machine.theoretical_peak("f32")[0] == pytest.approx(2 * 2.0 * 16)  # Zen 4: AVX-512 on 256-bit units
    assert machine.theoretical_peak("int8") == (None, "no int8 unit known on this CPU")


def test_openvino_probes_its_float32_and_int8_matrix_products() -> None:
    from tasks.benchmarks.machine import openvino_matmul_gmacs

    assert openvino_matmul_gmacs("f32", size=64, warm_up_seconds=0.05) > 0
    assert openvino_matmul_gmacs("int8", size=64, warm_up_seconds=0.05) > 0


def test_a_setting_is_chosen_on_the_tuning_split_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tasks.benchmarks import runs

    seen = []

    def fake_run(overrides: list[str], output_dir: Path, command) -> tuple[dict, float]:
        seen.append(overrides)
        threshold = float(next(o for o in overrides if o.startswith("t=")).split("=")[1])
        return {"pq": 1 - abs(threshold - 0.4)}, 0.0  # the tuning split prefers 0.4

    monkeypatch.setattr(runs, "timed_run", fake_run)
    candidates = {str(t): [f"t={t}"] for t in (0.2, 0.3, 0.4, 0.5)}
    chosen, scores = runs.tune_on_held_out(Path("best.ckpt"), ["task=x"], ["dataset.root=held_out"], candidates, "pq",
                                           tmp_path)  # fmt: skip
    assert chosen == "0.4" and scores == pytest.approx({"0.2": 0.8, "0.3": 0.9, "0.4": 1.0, "0.5": 0.9})
    assert all("dataset.root=held_out" in run and "ckpt_path=best.ckpt" in run for run in seen) and len(seen) == 4


def test_peaks_come_from_the_probes_timed_beside_the_engines() -> None:
    from tasks.benchmarks.inference_speed import PROBE_SIZE, Peaks

    macs = PROBE_SIZE**3 / 1e9
    seconds = {"torch f32 GEMM": macs / 150, "OpenVINO f32 MatMul": macs / 120, "OpenVINO int8 MatMul": macs / 400}
    peaks = Peaks.from_seconds({**seconds, "an engine": 1.0})
    assert peaks.peak("f32") == pytest.approx(150) and peaks.peak("int8") == pytest.approx(400)
    assert peaks.distance("f32", 75.0).startswith("75.0 GMAC/s, 50% of the measured f32 peak")
