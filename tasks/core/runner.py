"""Builds the run from a composed config: datamodule, task module, trainer; fits and evaluates.

Nothing here touches the data before the Trainer runs: the model is sized from the dataset's
metadata (class names), and Lightning prepares the data on one process (generation, indexes,
start-up checks) while the others wait, then sets it up on every process.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import get_method, instantiate
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, open_dict

from tasks.common.checkpoints import check_checkpoint_fits, checkpoint_path, read_checkpoint
from tasks.common.errors import UserError
from tasks.common.metadata import inference_metadata
from tasks.common.threads import configure_threads
from tasks.core.recipes import apply_command_line_limits, command_line_keys, command_line_overrides, log_recipe
from tasks.data.object_sizes import fit_anchor_base, fit_min_size, input_sizes
from tasks.training.checkpointing import AtomicCheckpointIO
from tasks.training.loggers import build_loggers, close_loggers, flat_config, log_image

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The dataset config's datamodule, with what the task asks of any dataset (``task.dataset_options``,
    e.g. instance masks); no file is read or written yet. The training order and augmentation
    derive from the run's seed."""
    return instantiate(cfg.dataset, sampling_seed=cfg.seed, **cfg.task.get("dataset_options", {}))


def restore_data_state(datamodule: L.LightningDataModule, checkpoint: dict) -> None:
    """The data module's state in a checkpoint (Lightning saves it under the class's qualified name), before
    the data is read: a drawn validation split is then the training run's, for evaluation, calibration and
    resumes alike."""
    state = checkpoint.get(type(datamodule).__qualname__)
    if state:
        datamodule.load_state_dict(state)


def resolve_num_classes(configured: int | None, datamodule: L.LightningDataModule) -> int:
    found = datamodule.num_classes
    if configured is not None and configured != found:
        raise UserError(
            f"task.model.num_classes={configured} but the dataset declares {found} classes "
            f"({datamodule.class_names}). Set task.model.num_classes={found} or null (taken from the dataset)."
        )
    return found


def drop_foreign_model_options(cfg: DictConfig, overrides: list[str]) -> None:
    """Leave out the ``task.model`` options the model's builder does not take, with a warning: a recipe
    is written per task and dataset (``detection_shapes`` tunes Faster R-CNN's RPN), and another model
    of the task (``model=retinanet``) keeps the options it shares. Given on the command line, such an
    option is a mistake and stops the run."""
    accepted = inspect.signature(get_method(cfg.task.model._target_)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return  # the builder passes options on (Mask R-CNN to Faster R-CNN's): it is the judge of them
    foreign = [key for key in cfg.task.model if key not in accepted and key != "_target_"]
    if not foreign:
        return
    typed = sorted(command_line_keys(overrides) & {f"task.model.{key}" for key in foreign})
    if typed:
        raise UserError(f"{', '.join(typed)}: not options of {cfg.task.model._target_} (its options: {list(accepted)})")
    log.warning(
        "task.model options %s are not options of %s (set by a recipe written for another model of this task): left "
        "out",
        foreign,
        cfg.task.model._target_,
    )
    with open_dict(cfg):
        for key in foreign:
            del cfg.task.model[key]


def model_arguments(model_cfg: DictConfig, datamodule: L.LightningDataModule) -> dict:
    """What the dataset knows (``datamodule.model_metadata()``: class count and names, whether its
    augmentation already sizes the images ...) for every argument the model builder takes and
    the config leaves null; the runner needs to know nothing of any task."""
    resolve_num_classes(model_cfg.get("num_classes"), datamodule)
    accepted = inspect.signature(get_method(model_cfg._target_)).parameters
    arguments = {
        name: value
        for name, value in datamodule.model_metadata().items()
        if name in accepted and model_cfg.get(name) is None
    }
    if model_cfg.get("min_size") == "auto":
        arguments["min_size"] = fitted_min_size(model_cfg, datamodule)
    if model_cfg.get("anchor_sizes") == "auto" and model_cfg.get("anchor_base") is None:
        arguments["anchor_base"] = fitted_anchor_base(model_cfg, datamodule, arguments.get("min_size"))
    return arguments


def _view(datamodule: L.LightningDataModule) -> dict:
    """How the data pipeline sizes training images before the detector: its shrink, or its tiles."""
    tile = getattr(datamodule, "tile", None)
    return {"resize_longest": getattr(datamodule, "resize_longest", None), "tile_size": tile.size if tile else None}


def fitted_min_size(model_cfg: DictConfig, datamodule: L.LightningDataModule) -> int:
    """``min_size=auto``: the training images' median shorter side, at most ``max_size``
    (``tasks.data.object_sizes.fit_min_size``). Reads the training split's index (every process alike)."""
    size = fit_min_size(datamodule.training_index(), model_cfg.max_size, **_view(datamodule))
    log.info(
        "min_size=auto: %d px (the training images' median shorter side as the detector receives them, at most "
        "max_size=%d)", size, model_cfg.max_size,
    )  # fmt: skip
    return size


def fitted_anchor_base(model_cfg: DictConfig, datamodule: L.LightningDataModule, min_size: int | None = None) -> int:
    """``anchor_sizes=auto``: the smallest anchor fitted to the training boxes as the detector sees
    them (``tasks.data.object_sizes``). Reads the training split's index (every process alike)."""
    sizes = input_sizes(
        datamodule.training_index(),
        min_size=min_size or model_cfg.min_size,
        max_size=model_cfg.max_size,
        **_view(datamodule),
    )
    base = fit_anchor_base(sizes)
    log.info(
        "anchor_sizes=auto: %d px on the finest pyramid level, doubling on each level above (the 10th percentile "
        "of %d training boxes' sqrt(w*h) after the resize; median %.1f px)",
        base, len(sizes), float(np.median(sizes)),
    )  # fmt: skip
    return base


def build_module(
    cfg: DictConfig, datamodule: L.LightningDataModule, prediction_dir: Path | None = None
) -> L.LightningModule:
    """The task module with its model and evaluator; ``prediction_dir``: validation writes each image's
    prediction there (``save_masks``)."""
    arguments = model_arguments(cfg.task.model, datamodule)
    model = instantiate(cfg.task.model, **arguments)
    # a partial: the module completes it with its data module's evaluation inputs once the data is set up
    evaluator = instantiate(cfg.task.evaluator) if cfg.task.get("evaluator") else None
    # a partial, then called: Hydra would instantiate the model config that the inference metadata holds
    module_factory = instantiate(cfg.task.module, _partial_=True)
    return module_factory(
        model=model,
        evaluator=evaluator,
        channels_last=bool(cfg.get("runtime", {}).get("channels_last", False)),
        skip_nonfinite_batches=int(cfg.get("skip_nonfinite_batches", 0)),
        inference=inference_metadata(cfg, datamodule, arguments),
        prediction_dir=prediction_dir,
    )


def build_trainer(cfg: DictConfig) -> L.Trainer:
    built = (instantiate(c) for c in cfg.get("callbacks", {}).values() if c)
    callbacks = [callback for callback in built if callback is not None]  # a factory may leave its callback out
    loggers = build_loggers(cfg.get("logger"))
    plugins = [AtomicCheckpointIO()]  # every checkpoint file is replaced atomically
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    hyperparameters = flat_config(cfg) if trainer.loggers else {}  # the composed config, for every logger
    for logger in trainer.loggers:
        logger.log_hyperparams(hyperparameters)
    return trainer


def configure_torch(cfg: DictConfig) -> None:
    """Process-wide settings: seeds (also of loader workers), matrix-product precision and threads."""
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("runtime", {}).get("float32_matmul_precision", "highest"))
    configure_threads(cfg)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    return callback.best_model_path or callback.last_model_path or None


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score ``cfg.ckpt_path`` on the validation split; write metrics and COCO-format predictions."""
    if not cfg.ckpt_path:
        raise UserError("evaluation needs a checkpoint: pass ckpt_path=PATH/TO/best.ckpt")
    checkpoint = checkpoint_path(cfg.ckpt_path)
    content = read_checkpoint(checkpoint)
    drop_foreign_model_options(cfg, command_line_overrides())
    configure_torch(cfg)
    datamodule = build_datamodule(cfg)
    restore_data_state(datamodule, content)
    output_dir = Path(cfg.paths.output_dir)
    module = build_module(cfg, datamodule, output_dir / "masks" if cfg.get("save_masks") else None)
    check_checkpoint_fits(content, module, checkpoint)
    module.load_state_dict(content["state_dict"])  # model weights only
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    metrics = validation_metrics(trainer, module, datamodule)
    write_outputs(module, metrics, output_dir, checkpoint, bool(cfg.get("plots", True)))
    return metrics


def write_outputs(
    module: L.LightningModule,
    metrics: dict[str, float],
    output_dir: Path,
    checkpoint: str | None,
    plots: bool,
    loggers: Sequence[Logger] = (),
) -> None:
    """``metrics.json`` with the per-class table, the evaluator's files (``predictions.json`` ...), and
    with ``plots`` the charts of the evaluation (``plots/``), also to the ``loggers`` that take images."""
    evaluation = module.last_evaluation
    report(metrics, output_dir, checkpoint, evaluation.per_class if evaluation else None)
    files = dict(evaluation.files) if evaluation else {}
    if plots and evaluation is not None and is_global_zero(module):
        from tasks.evaluation.plots import evaluation_plots  # matplotlib is imported where charts are drawn

        files.update(evaluation_plots(evaluation))
    for name, content in files.items():
        write_file(content, output_dir / name)
        if name.endswith(".png"):
            log_image(list(loggers), name.removesuffix(".png"), np.asarray(content), module.global_step)


def is_global_zero(module: L.LightningModule) -> bool:
    return module._trainer is None or module.trainer.is_global_zero


@rank_zero_only
def write_file(content: object, path: Path) -> None:
    """A picture (PIL image: ``save``) or JSON content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(content, "save"):
        content.save(path)
        log.info("written to %s", path)
        return
    path.write_text(json.dumps(content))
    count = f"{len(content)} rows " if isinstance(content, list) else ""
    log.info("%swritten to %s", count, path)


def validation_metrics(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, checkpoint: str | None = None
) -> dict[str, float]:
    """Validate once; logged values (losses) plus the evaluator's metrics at full precision."""
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    logged = {name.removeprefix("val/"): float(value) for name, value in (results[0] if results else {}).items()}
    evaluation = getattr(module, "last_evaluation", None)
    return {**logged, **(evaluation.scalars if evaluation else {})}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then evaluate the best checkpoint on the validation split; write ``metrics.json`` (and
    ``predictions.json`` for detection).

    The best checkpoint is the best of every validation of the run, those before a resume
    included (the checkpoint callback's state travels in the checkpoint).
    """
    ckpt_path = checkpoint_path(cfg.ckpt_path)
    resume = read_checkpoint(ckpt_path) if ckpt_path else None  # before anything is built
    overrides = command_line_overrides()
    log_recipe(cfg, overrides)  # the recipe's values first; then which limit the command line lifts
    apply_command_line_limits(cfg, overrides)
    drop_foreign_model_options(cfg, overrides)
    configure_torch(cfg)
    datamodule = build_datamodule(cfg)
    if resume is not None:
        restore_data_state(datamodule, resume)
    module = build_module(cfg, datamodule)
    if resume is not None:
        check_checkpoint_fits(resume, module, ckpt_path)
        del resume  # Lightning reads the file again to restore every state
    trainer = build_trainer(cfg)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if never_validated(trainer):
            checkpoint, metrics = validate_final_weights_as_best(trainer, module, datamodule)
        else:
            checkpoint = best_checkpoint(trainer)
            metrics = validation_metrics(trainer, module, datamodule, checkpoint)
        output_dir, plots = Path(cfg.paths.output_dir), bool(cfg.get("plots", True))
        write_outputs(module, metrics, output_dir, checkpoint, plots, trainer.loggers)
    finally:
        close_loggers(trainer.loggers)
    return metrics


def optimized_value(metrics: dict[str, float], name: str) -> float:
    """The metric a sweeper optimises, named as logged (``val/map``) or as in metrics.json (``map``)."""
    key = name.removeprefix("val/")
    if key not in metrics:
        raise UserError(f"optimized_metric={name} is not among the run's metrics: choose one of {sorted(metrics)}")
    return float(metrics[key])


def never_validated(trainer: L.Trainer) -> bool:
    """True when the run's checkpoint callback saw no validation (e.g. validation every 6 epochs, a
    run of 4): there is no best checkpoint to score."""
    callback = trainer.checkpoint_callback
    validates = trainer.limit_val_batches != 0
    return validates and callback is not None and callback.monitor is not None and not callback.best_model_path


def validate_final_weights_as_best(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule
) -> tuple[str, dict[str, float]]:
    """Validate the weights training ended with and write them as the best checkpoint."""
    log.info(
        "no validation ran during training (trainer.check_val_every_n_epoch=%s, trainer.val_check_interval=%s): "
        "validating the final weights, written as the best checkpoint",
        trainer.check_val_every_n_epoch,
        trainer.val_check_interval,
    )
    metrics = validation_metrics(trainer, module, datamodule)
    callback = trainer.checkpoint_callback
    path = callback.save_as_best(trainer, metrics.get(callback.monitor.removeprefix("val/")))
    return path, metrics


@rank_zero_only
def report(
    metrics: dict[str, float],
    output_dir: Path,
    checkpoint: str | None,
    per_class: dict[str, dict[str, float]] | None = None,
) -> None:
    scalars = {name: value for name, value in metrics.items() if isinstance(value, float | int)}
    width = max(map(len, scalars), default=0)
    lines = [f"{name:<{width}}  {value:.4f}" for name, value in scalars.items()]
    print(f"\nValidation metrics ({checkpoint or 'final weights'}):\n" + "\n".join(lines))
    if per_class:
        print(per_class_table(per_class))
    content = {**metrics, "checkpoint": checkpoint}
    if per_class:
        content["per_class"] = per_class
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(content, indent=2))
    log.info("metrics written to %s", output_dir / "metrics.json")


def per_class_table(per_class: dict[str, dict[str, float]]) -> str:
    columns = list(dict.fromkeys(key for row in per_class.values() for key in row))
    width = max(len("class"), *map(len, per_class))
    header = f"{'class':<{width}}" + "".join(f"  {c:>8}" for c in columns)
    rows = [
        f"{name:<{width}}" + "".join(f"  {row.get(c, float('nan')):8.4f}" for c in columns)
        for name, row in per_class.items()
    ]
    return "\n".join(["", header, *rows])
