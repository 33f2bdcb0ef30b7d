"""Reference recipes for real data: what they set, that they build, the linear learning-rate rule,
offline weights, and training COCO-layout data from scratch."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from torch import nn

from tasks.common.errors import UserError
from tasks.core.resolvers import workers_per_device
from tasks.core.runner import build_datamodule, build_module, build_trainer, drop_foreign_model_options, train
from tests.support import CONF_DIR, TINY_DETECTION, compose_config, run_script


def test_cfg_job_shows_the_coco_reference_recipe(shapes_root: Path, tmp_path: Path) -> None:
    overrides = ["dataset=coco", f"dataset.root={shapes_root}", "backbone=resnet18", "dataset.batch_size=3"]
    shown = OmegaConf.to_yaml(compose_config(overrides, tmp_path))  # what --cfg job prints
    for line in (
        "name: resnet18",  # overrides come on top
        "batch_size: 3",
        "weights: imagenet",
        "norm: ${if_pretrained:frozen_bn,gn}",  # frozen statistics with weights; GroupNorm from scratch
        "trainable_stages: ${if_pretrained:3,5}",
        "name: sgd",
        "lr: 0.02",
        "lr_reference_batch: 16",
        "group_aspect_ratio: true",
        "max_epochs: 26",
    ):
        assert line in shown, line


RECIPES = {  # fmt: skip
    # (task, dataset): (backbone norm, trainable stages, lr, reference batch, what else the reference sets)
    ("detection", "coco"): ("frozen_bn", 3, 0.02, 16, {"dataset.group_aspect_ratio": True,
                                                      "task.model.min_size": 800}),
    ("instance_segmentation", "coco"): ("frozen_bn", 3, 0.02, 16, {"trainer.max_epochs": 26,
                                                                  "task.model.mask_layers": [256] * 4,
                                                                  "task.monitor": "val/mask_map"}),
    ("detection", "voc"): ("frozen_bn", 3, 0.01, 16, {"task.monitor": "val/voc07_map", "task.model.min_size": 600}),
    ("segmentation", "voc_seg"): ("bn", 5, 0.01, 16, {"trainer.max_steps": 20000, "dataset.crop_size": 512,
                                                      "task.model.output_stride": 8}),
    ("segmentation", "coco_seg"): ("bn", 5, 0.02, 32, {"trainer.max_epochs": 30, "dataset.crop_size": 480,
                                                       "dataset.categories": "voc"}),
}  # fmt: skip


@pytest.mark.parametrize(("task", "dataset"), sorted(RECIPES))
def test_reference_recipes_compose_and_build(
    task: str, dataset: str, shapes_root: Path, shapes_voc_root: Path, tmp_path: Path
) -> None:
    norm, stages, lr, reference, extra = RECIPES[task, dataset]
    root = shapes_voc_root if dataset.startswith("voc") else shapes_root
    cfg = compose_config([f"task={task}", f"dataset={dataset}", f"dataset.root={root}"], tmp_path)
    assert (cfg.backbone.weights, cfg.backbone.norm, cfg.backbone.trainable_stages) == ("imagenet", norm, stages)
    module = cfg.task.module
    assert (module.optimizer.name, module.optimizer.lr, module.lr_reference_batch) == ("sgd", lr, reference)
    for key, value in extra.items():
        assert OmegaConf.select(cfg, key) == value, key
    # offline here: the same recipe from scratch builds (GroupNorm, nothing frozen), and so does its trainer
    scratch = compose_config(
        [f"task={task}", f"dataset={dataset}", f"dataset.root={root}", "backbone.weights=none"], tmp_path
    )
    assert (scratch.backbone.norm, scratch.backbone.trainable_stages) == ("gn", 5)
    built = build_module(scratch, build_datamodule(scratch))
    assert any(isinstance(m, nn.GroupNorm) for m in built.model.backbone.modules())
    assert build_trainer(scratch).max_steps == cfg.trainer.max_steps


@pytest.mark.slow
def test_recipe_null_leaves_it_out_and_the_log_lists_what_it_sets(tmp_path: Path) -> None:
    from tasks.core.recipes import recipe_settings

    tuned, plain = compose_config([], tmp_path), compose_config(["~recipe"], tmp_path)
    assert (tuned.trainer.max_epochs, tuned.task.model.min_size) == (4, 128)  # recipe/detection_shapes.yaml
    assert (plain.trainer.max_epochs, plain.task.model.min_size) != (4, 128)
    shown = run_script("train.py", ["--cfg", "job", "recipe=null"])  # the command line's spelling
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"max_epochs: {plain.trainer.max_epochs}" in shown.stdout and "min_size: 128" not in shown.stdout
    settings = recipe_settings(compose_config(["trainer.max_epochs=2"], tmp_path), "detection_shapes")
    assert settings["trainer.max_epochs"] == 2 and settings["task.module.optimizer.name"] == "adamw"
    assert "backbone.name" not in settings  # only what the recipe sets


def test_coco_detector_weights_freeze_batchnorm_by_themselves(tmp_path: Path) -> None:
    assert compose_config([], tmp_path).backbone.norm == "bn"  # from scratch
    assert compose_config(["task.model.weights=coco"], tmp_path).backbone.norm == "frozen_bn"
    assert compose_config(["backbone.init=some.ckpt"], tmp_path).backbone.norm == "frozen_bn"


def test_gpu_trainers_set_loader_and_torch_settings(tmp_path: Path) -> None:
    gpu = compose_config(["dataset=coco", "trainer=gpu"], tmp_path)
    assert (gpu.dataset.pin_memory, gpu.dataset.num_workers) == (True, workers_per_device(1))
    assert (gpu.runtime.float32_matmul_precision, gpu.trainer.precision) == ("high", "16-mixed")
    ddp = compose_config(["dataset=coco", "trainer=ddp", "trainer.devices=2"], tmp_path)
    assert (ddp.trainer.strategy, ddp.trainer.sync_batchnorm, ddp.dataset.num_workers) == (
        "ddp",
        True,
        workers_per_device(2),
    )
    on_cpu = compose_config(["dataset=coco", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], tmp_path)
    assert (on_cpu.trainer.sync_batchnorm, on_cpu.trainer.precision) == (False, "bf16-mixed")  # gloo processes
    per_node = build_datamodule(compose_config(["dataset=coco", "dataset.prepare_per_node=true"], tmp_path))
    assert per_node.prepare_data_per_node and not build_datamodule(ddp).prepare_data_per_node  # Lightning reads it
    cpu = compose_config(["dataset=coco"], tmp_path)
    assert (cpu.dataset.pin_memory, cpu.runtime.float32_matmul_precision) == (False, "highest")
    assert workers_per_device(2) <= workers_per_device(1)


@pytest.mark.slow
def test_offline_imagenet_recipe_stops_before_training_naming_the_file(
    shapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for proxy in ("https_proxy", "HTTPS_PROXY"):  # no network, whatever this machine has
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = compose_config(["dataset=coco", f"dataset.root={shapes_root}"], tmp_path)
    with pytest.raises(Exception) as info:  # Hydra wraps the loader's error; its text reaches the user
        train(cfg)
    expected_file = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert f"copy that file to {expected_file}" in str(info.value)
    assert "backbone.weights=none to train the backbone from scratch" in str(info.value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_coco_layout_from_scratch_trains_with_group_norm(
    shapes_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    overrides = [
        "task=detection",
        "backbone=resnet18",
        "backbone.weights=none",
        "dataset=coco",
        f"dataset.root={shapes_root}",
        "trainer.max_steps=60",
        *TINY_DETECTION,  # 64 px images: the recipe's schedule and normalisation, a test's cost
        "dataset.num_workers=0",
        "trainer.check_val_every_n_epoch=null",
        "trainer.val_check_interval=30",
        "trainer.log_every_n_steps=5",
        "trainer.enable_progress_bar=false",
    ]
    with caplog.at_level("INFO"):
        train(compose_config(overrides, run))
    assert "lr 0.0025 = 0.02 x 2 / 16" in caplog.text  # the linear scaling rule, logged
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    train_losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    validation = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(validation) >= 2 and all(v == v and v < 10 * max(train_losses) for v in validation)  # finite, same order
    predictions = json.loads((run / "predictions.json").read_text())
    assert len(predictions) > 0


def test_a_limit_given_on_the_command_line_lifts_the_one_the_configs_set(tmp_path: Path) -> None:
    from tasks.core.recipes import apply_command_line_limits

    def limits(*overrides: str) -> tuple[int, int]:
        cfg = compose_config(list(overrides), tmp_path)  # the shapes recipe sets trainer.max_epochs=4
        apply_command_line_limits(cfg, list(overrides))
        return cfg.trainer.max_steps, cfg.trainer.max_epochs

    assert limits() == (-1, 4)
    assert limits("trainer.max_steps=60") == (60, -1)
    assert limits("trainer.max_steps=60", "trainer.max_epochs=2") == (60, 2)  # both given: whichever first
    assert limits("trainer.max_epochs=9") == (-1, 9)  # nothing else to lift
    voc = ["task=segmentation", "dataset=voc_seg", "dataset.root=/data"]  # its recipe: 20k steps, no epoch limit
    assert limits(*voc) == (20000, -1)
    assert limits(*voc, "trainer.max_epochs=2") == (-1, 2)


DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("devices", [1, 2])
def test_loader_workers_fit_the_machine(dataset: str, devices: int, tmp_path: Path) -> None:
    """Real datasets default to this machine's CPUs shared among the training processes (one left to
    each process); the built-in shapes load in the training process on one CPU process (measured
    faster on 2 cores), and like the others under the GPU and DDP trainers."""
    trainer = ["trainer=ddp", "trainer.accelerator=cpu"] if devices > 1 else []
    cfg = compose_config([f"dataset={dataset}", *trainer, f"trainer.devices={devices}"], tmp_path)
    cpus = len(os.sched_getaffinity(0))
    expected = 0 if dataset.startswith("shapes") and devices == 1 else workers_per_device(devices)
    assert cfg.dataset.num_workers == expected and expected * devices <= max(cpus, devices)


@pytest.mark.parametrize(("recipe", "builder"), [("retinanet_coco", "build_retinanet"), ("fcos_coco", "build_fcos")])
def test_one_stage_reference_recipes_choose_their_model(
    recipe: str, builder: str, shapes_root: Path, tmp_path: Path
) -> None:
    """torchvision's references for RetinaNet and FCOS: Faster R-CNN's COCO schedule at lr 0.01."""
    base = ["task=detection", "dataset=coco", f"dataset.root={shapes_root}", f"recipe={recipe}"]
    cfg = compose_config(base, tmp_path)
    assert cfg.task.model._target_ == f"heads.one_stage.{builder}"
    module = cfg.task.module
    assert (module.optimizer.name, module.optimizer.lr, module.lr_reference_batch) == ("sgd", 0.01, 16)
    assert (cfg.trainer.max_epochs, cfg.dataset.group_aspect_ratio, cfg.backbone.norm) == (26, True, "frozen_bn")
    scratch = compose_config([*base, "backbone.weights=none"], tmp_path)
    built = build_module(scratch, build_datamodule(scratch))
    assert type(built.model).__name__ == {"build_retinanet": "RetinaNet", "build_fcos": "FCOS"}[builder]


def test_a_recipe_for_another_model_of_the_task_keeps_what_the_model_takes(
    shapes_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """detection_shapes tunes Faster R-CNN's RPN and box head; model=retinanet keeps its sizes, anchors and
    schedule and leaves the rest out with a warning; typed on the command line, such an option stops."""
    overrides = ["model=retinanet", f"dataset.root={shapes_root}"]
    cfg = compose_config(overrides, tmp_path)
    assert cfg.task.model.rpn_batch_size_per_image == 128  # from the recipe
    drop_foreign_model_options(cfg, overrides)
    assert "rpn_batch_size_per_image" not in cfg.task.model and "representation_size" not in cfg.task.model
    assert (cfg.task.model.min_size, list(cfg.task.model.anchor_sizes)) == (128, [16, 32, 64, 128, 256])
    assert "'representation_size'" in caplog.text and "build_retinanet" in caplog.text
    typed = [*overrides, "+task.model.rpn_nms_thresh=0.6"]
    with pytest.raises(UserError, match=r"task.model.rpn_nms_thresh: not options of heads.one_stage"):
        drop_foreign_model_options(compose_config(typed, tmp_path), typed)


def test_the_model_recipe_follows_the_task_recipe_and_null_leaves_it_out(tmp_path: Path) -> None:
    from tasks.core.recipes import MODEL_RECIPE_DIR, accept_recipe_null, recipe_settings

    tuned = compose_config(["model=retinanet"], tmp_path)
    assert (tuned.trainer.max_epochs, tuned.task.model.head_norm) == (10, "gn")  # model_recipe/retinanet_shapes
    assert tuned.task.model.min_size == 128  # recipe/detection_shapes, which it builds on
    plain = compose_config(["model=retinanet", *accept_recipe_null(["model_recipe=null"])], tmp_path)
    assert (plain.trainer.max_epochs, plain.task.model.head_norm) == (4, "none")
    assert compose_config([], tmp_path).trainer.max_epochs == 4  # Faster R-CNN has no model recipe on shapes
    settings = recipe_settings(tuned, "retinanet_shapes", MODEL_RECIPE_DIR)
    assert settings == {"task.model.head_norm": "gn", "trainer.max_epochs": 10}


def test_a_builder_that_passes_options_on_keeps_them_all(shapes_root: Path, tmp_path: Path) -> None:
    """Mask R-CNN's builder hands Faster R-CNN's options on (**options): none of them is foreign."""
    overrides = ["task=instance_segmentation", f"dataset.root={shapes_root}"]
    cfg = compose_config(overrides, tmp_path)
    before = dict(cfg.task.model)
    drop_foreign_model_options(cfg, overrides)
    assert dict(cfg.task.model) == before and cfg.task.model.min_size == 128
