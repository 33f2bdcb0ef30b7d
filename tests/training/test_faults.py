"""Faults met during a run: non-finite losses, killed writers, unusable checkpoints, clean errors."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torchvision.models.detection.roi_heads as roi_heads

from tasks.common.errors import UserError, exit_on_user_error, user_error
from tasks.core.runner import evaluate, train
from tasks.training.checkpointing import AtomicCheckpointIO
from tasks.training.nonfinite import NonFiniteLossError
from tests.support import (
    CPU_DDP,
    TINY_DETECTION,
    TINY_SEGMENTATION,
    compose_config,
    run_script,
    shapes_overrides,
    shapes_seg_overrides,
)


def _tiny_detection(shapes_root: Path, *extra: str) -> list[str]:
    return ["backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root), "dataset.num_workers=0", *extra]


@pytest.fixture
def nan_box_loss_at_call(monkeypatch: pytest.MonkeyPatch):
    """Make torchvision's box regression loss NaN on the given training calls (1-based; validation,
    which runs without gradients, is not counted)."""

    def arm(*calls: int) -> None:
        original, count = roi_heads.fastrcnn_loss, [0]

        def loss(*args, **kwargs):
            classifier, box = original(*args, **kwargs)
            if not torch.is_grad_enabled():
                return classifier, box
            count[0] += 1
            return classifier, box * float("nan") if count[0] in calls else box

        monkeypatch.setattr(roi_heads, "fastrcnn_loss", loss)

    return arm


@pytest.mark.slow
def test_nonfinite_loss_stops_the_run_naming_step_component_images_and_last_checkpoint(
    shapes_root: Path, tmp_path: Path, nan_box_loss_at_call
) -> None:
    nan_box_loss_at_call(4)
    record = ["+callbacks.record._target_=tests.support.ParametersAtStop"]
    overrides = _tiny_detection(shapes_root, "trainer.max_steps=6", "checkpoint_every_n_steps=2", *record)
    with pytest.raises(NonFiniteLossError) as stopped:
        train(compose_config(overrides, tmp_path))
    message = str(stopped.value)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert "step 3" in message and "loss_box_reg=nan" in message and "loss=nan" in message
    assert "loss_classifier" not in message  # only the components that went wrong
    assert message.count(str(shapes_root / "train2017")) == 4  # every image of the batch of 4
    assert f"last good checkpoint: {last}" in message
    # no checkpoint after the bad step, and the bad batch changed no weight: no backward, no step
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    stop = torch.load(tmp_path / "parameters_at_stop.pt", weights_only=True)
    assert sorted(stop["before"]) == sorted(stop["at_stop"])
    assert all(torch.equal(stop["before"][name], stop["at_stop"][name]) for name in stop["before"])


def _unchanged_around_the_bad_batch(run: Path) -> None:
    around = torch.load(run / "around_bad_batch.pt", weights_only=True)
    before, after = around["before"], around["after"]
    assert any(name.endswith("running_var") for name in before)  # BatchNorm statistics are among them
    assert sorted(before) == sorted(after)
    assert [name for name in before if not torch.equal(before[name], after[name])] == []


@pytest.mark.slow
def test_skip_nonfinite_batches_tolerates_that_many(shapes_root: Path, tmp_path: Path, nan_box_loss_at_call) -> None:
    nan_box_loss_at_call(2)
    record = ["+callbacks.record._target_=tests.support.StateAroundBatch", "+callbacks.record.batch=1"]
    overrides = _tiny_detection(shapes_root, "trainer.max_steps=3", "skip_nonfinite_batches=1", *record)
    with pytest.warns(
        UserWarning, match=r"non-finite loss at step 1 .*batch skipped \(1 of skip_nonfinite_batches=1\)"
    ):
        metrics = train(compose_config(overrides, tmp_path / "one"))
    _unchanged_around_the_bad_batch(tmp_path / "one")
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values() if isinstance(v, float))
    nan_box_loss_at_call(2, 3)  # a second one is over the limit
    with pytest.raises(
        NonFiniteLossError, match=r"step 2 \(epoch 0, batch 2\)"
    ):  # a skipped batch still counts as a step
        train(compose_config(overrides, tmp_path / "two"))


@pytest.mark.slow
def test_a_skipped_batch_leaves_every_parameter_and_buffer_as_it_was(shapes_root: Path, tmp_path: Path) -> None:
    """An inf activation reaches BatchNorm's running statistics in the forward pass, before the loss
    is known to be inf: the skip must undo that too, or training goes on with inf statistics."""
    bad = [
        "+callbacks.bad._target_=tests.support.StateAroundBatch",
        "+callbacks.bad.batch=1",
        "+callbacks.bad.inf_activation=true",
    ]
    overrides = _tiny_detection(shapes_root, "trainer.max_steps=3", "skip_nonfinite_batches=1", *bad)
    with pytest.warns(UserWarning, match=r"non-finite loss at step 1 .*batch skipped"):
        metrics = train(compose_config(overrides, tmp_path))
    _unchanged_around_the_bad_batch(tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3 and math.isfinite(metrics["loss"])


@pytest.mark.distributed
def test_nonfinite_loss_on_one_ddp_process_stops_every_process(shapes_root: Path, tmp_path: Path) -> None:
    nan = ["+callbacks.nan._target_=tests.support.NanBoxLossOnRank", "+callbacks.nan.rank=1", "+callbacks.nan.call=3"]
    steps = ["trainer.max_steps=6", "checkpoint_every_n_steps=2", "trainer.enable_progress_bar=false"]
    args = [*_tiny_detection(shapes_root), *CPU_DDP, *steps, *nan, f"paths.log_dir={tmp_path}"]
    result = run_script("train.py", args)  # returns: neither process waits forever for the other
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    (run,) = (tmp_path / "detection").iterdir()
    rank0, rank1 = (run / "train.log").read_text(), (run / "train_ddp_process_1_node0_local1.log").read_text()
    assert "non-finite loss at step 2 (epoch 1, batch 0): on another process" in rank0
    assert "non-finite loss at step 2 (epoch 1, batch 0): loss_box_reg=nan" in rank1
    assert str(shapes_root / "train2017") in rank1 and "Traceback" not in output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # one last
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2  # nothing written after the bad step


@pytest.mark.slow
def test_segmentation_stops_on_a_nonfinite_loss(
    shapes_voc_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.training.segmentation import SegmentationModule

    monkeypatch.setattr(SegmentationModule, "_loss", lambda self, logits, masks: logits.sum() * float("nan"))
    overrides = [*TINY_SEGMENTATION, *shapes_seg_overrides(shapes_voc_root), "trainer.max_steps=2"]
    with pytest.raises(NonFiniteLossError, match=r"step 0 .*loss_out=nan.*JPEGImages.*none written yet"):
        train(compose_config(overrides, tmp_path))
    assert not list(tmp_path.rglob("*.ckpt"))


def _write_checkpoints_forever(path: Path, weights: torch.Tensor) -> None:
    io, step = AtomicCheckpointIO(), 0
    while True:  # serialising only: no torch kernels, which could deadlock in a forked child
        step += 1
        io.save_checkpoint({"step": step, "weights": weights}, path)


def test_a_writer_killed_at_any_moment_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    path, weights = tmp_path / "last.ckpt", torch.arange(3_000_000, dtype=torch.float32)
    fork = multiprocessing.get_context("fork")  # the child starts at once, with torch already imported
    for delay in (0.0, 0.03, 0.07, 0.11, 0.17):
        writer = fork.Process(target=_write_checkpoints_forever, args=(path, weights), daemon=True)
        writer.start()
        deadline = time.time() + 60
        while not path.is_file() and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(delay)  # then killed mid-way through a later write, most likely
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        content = torch.load(path, weights_only=True)  # reads every byte: a torn file fails here
        assert content["step"] >= 1 and torch.equal(content["weights"], weights)


def test_checkpoint_write_replaces_the_file_in_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["missing", "truncated", "foreign", "other model"])
def test_unusable_ckpt_path_is_refused_naming_the_file(
    fault: str, shapes_root: Path, tmp_path: Path, nan_box_loss_at_call
) -> None:
    path = tmp_path / "given.ckpt"
    if fault == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(100_000)}, "global_step": 1}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif fault == "foreign":  # a plain weight file, e.g. torchvision's
        torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7)}, path)
    elif fault == "other model":
        torch.save({"state_dict": {"model.head.weight": torch.zeros(3)}, "global_step": 5}, path)
    expected = {
        "missing": "does not exist",
        "truncated": "cannot be read .*truncated",
        "foreign": "is not a training checkpoint .*backbone.init",
        "other model": r"does not fit .*missing \(\d+\).*unexpected \(1\): model.head.weight",
    }[fault]
    overrides = _tiny_detection(shapes_root, "trainer.max_steps=1", f"ckpt_path={path}")
    with pytest.raises(UserError, match=f"ckpt_path={path} {expected}"):
        train(compose_config(overrides, tmp_path / "run"))


@pytest.mark.parametrize("key", ["backbone.weights", "backbone.init", "task.model.weights"])
def test_a_truncated_weight_file_is_one_message_naming_it(
    key: str, shapes_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    config = compose_config(_tiny_detection(shapes_root, f"{key}={path}"), tmp_path / "run")
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(train)(config)
    assert exited.value.code == 2
    assert f"{path} cannot be read" in caplog.text and "truncated" in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.slow
def test_a_checkpoint_path_may_start_with_the_home_folder(
    shapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(compose_config(_tiny_detection(shapes_root, "trainer.max_steps=1"), tmp_path / "first"))
    monkeypatch.setenv("HOME", str(tmp_path / "first"))
    resumed = _tiny_detection(shapes_root, "trainer.max_steps=2", "ckpt_path='~/checkpoints/last.ckpt'")
    train(compose_config(resumed, tmp_path / "second"))
    saved = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2  # resumed from step 1, not started afresh
    evaluated = evaluate(
        compose_config(_tiny_detection(shapes_root, "ckpt_path='~/checkpoints/last.ckpt'"), tmp_path / "e")
    )
    assert "map_50" in evaluated


@pytest.mark.slow
def test_user_errors_print_one_message_and_exit_2_unless_full_error(tmp_path: Path) -> None:
    args = ["ckpt_path=/no/such/run/last.ckpt", f"hydra.run.dir={tmp_path}"]
    result = run_script("train.py", args)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "ckpt_path=/no/such/run/last.ckpt does not exist" in output and "Traceback" not in output
    full = run_script("train.py", args, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr and "UserError" in full.stderr


def test_a_config_value_checked_by_the_project_is_the_users_error(
    shapes_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = compose_config(_tiny_detection(shapes_root, "backbone.trainable_stages=9"), tmp_path)
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(train)(config)
    assert exited.value.code == 2
    assert "trainable_stages=9 must be between 0 and 5" in caplog.text and "Traceback" not in caplog.text
    # an error raised inside a library is not the user's: it keeps its traceback
    with pytest.raises(ZeroDivisionError):
        exit_on_user_error(lambda: 1 / 0)()
    assert user_error(ValueError("raised by a library")) is None


def _generate_then_read(root: Path, barrier, results) -> None:
    from tasks.data.shapes import ShapesSpec, ensure_shapes

    barrier.wait()  # every run starts at the same moment
    ensure_shapes(root, ShapesSpec(num_train=24, num_val=8, image_size=64, max_objects=2))
    files = sorted(p.name for p in (root / "train2017").iterdir())
    folder = (root / "train2017").stat().st_ino
    end = time.time() + 1.5
    while time.time() < end:  # keep reading, as a training run would, while the others finish
        if (root / "train2017").stat().st_ino != folder:
            results.put("the folder was replaced under a reader")
            return
    results.put(len(files))


def test_runs_started_together_on_empty_data_all_succeed(tmp_path: Path) -> None:
    root = tmp_path / "data" / "shapes"
    fork = multiprocessing.get_context("fork")
    barrier, results = fork.Barrier(3), fork.Queue()
    runs = [fork.Process(target=_generate_then_read, args=(root, barrier, results)) for _ in range(3)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
        if run.is_alive():
            run.kill()
    assert [run.exitcode for run in runs] == [0, 0, 0]
    assert sorted(results.get(timeout=5) for _ in runs) == [24, 24, 24]
    assert [p.name for p in root.parent.iterdir()] == ["shapes"]  # no temporary folder left behind
