"""What every task kind provides: the graph an engine runs and export writes, how a batch of prepared
images enters it and leaves it, what prediction writes for an image and what it draws."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tasks.common.errors import UserError
from tasks.data.collate import collate_segmentation
from tasks.evaluation import drawing
from tasks.evaluation.predictions import count_capped
from tasks.kinds.files import PredictionFiles

EXAMPLE_SIDE = 256  # size of the image an exported graph is traced with; every size runs afterwards


@dataclass(frozen=True)
class PredictOptions:
    """``tasks/predict.py``'s options that shape what is written of an image."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    top_k: int = 5


@dataclass(frozen=True)
class PictureOptions:
    """How a validation picture is drawn: the classes (and panoptic stuff) named, the detection score
    threshold, the longer side in pixels; ``truth`` names the true class of a classified image."""

    class_names: list[str]
    score_threshold: float
    size: int
    stuff_names: list[str] = field(default_factory=list)
    truth: int | None = None


@dataclass
class PredictedImage:
    """One input file: its path relative to ``input``, the decoded upright image (HxWx3 uint8), the
    model's input made from it (3 x h x w float) and the engine's output for it."""

    relative: Path
    image: np.ndarray
    model_input: Tensor
    found: dict[str, Tensor]


class TaskKind:
    """The task-specific parts of inference and export. ``batched`` kinds run a padded batch tensor
    (B x 3 x H x W) through their graph; the others a list of images, one image per exported call."""

    name: str
    batched: bool = False
    sliceable: bool = False  # predictions of image tiles can be merged (slicing.size > 0)
    capped: bool = False  # the model keeps at most a fixed count of detections an image
    export_refusal: str | None = None  # why this task cannot be exported (None: it can)

    def check_slicing(self, slicing: object | None) -> None:
        """Refuse a configured sliced inference where tiles' predictions cannot be merged: training's
        validation and predict.py ask here."""
        if slicing is not None and not self.sliceable:
            raise UserError(
                f"sliced inference merges boxes only, not {self.name} predictions: pass slicing.size=0 "
                "(validation and prediction on whole images; training may still use dataset.tile.size)"
            )

    # -- the graph --------------------------------------------------------------------------------------
    def graph(self, model: nn.Module) -> nn.Module:
        """``model`` as a fixed-signature graph (``input_name``, ``output_names``): float RGB in [0, 1] in."""
        raise UserError(
            f"a {self.name} model cannot be exported: {self.export_refusal}; predict with engine=torch, "
            "or score the checkpoint with tasks/evaluate.py"
        )

    def example_input(self) -> Tensor:
        image = torch.rand(3, EXAMPLE_SIDE, EXAMPLE_SIDE, generator=torch.Generator().manual_seed(0))
        return image[None] if self.batched else image

    def dynamic_axes(self, graph: nn.Module) -> dict[str, dict[int, str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def input_normalisation(self, model: nn.Module) -> tuple[list[float], list[float], dict | None]:
        """The mean and std the model normalises its input with, and the resize it does inside (None)."""
        return model.image_mean.flatten().tolist(), model.image_std.flatten().tolist(), None

    def calibration_input(self, array: np.ndarray) -> np.ndarray:
        """One prepared image (3 x H x W float32) as the exported graph takes it."""
        return array[None] if self.batched else array

    # -- running ----------------------------------------------------------------------------------------
    def run_model(self, model: nn.Module, images: Sequence[Tensor], device: torch.device) -> list[dict[str, Tensor]]:
        """The PyTorch model (on ``device``) on prepared images: CPU outputs per image."""
        if self.batched:
            batch, sizes = padded(images)
            outputs = self.graph_outputs(model, batch.to(device))
            return self.split({name: value.float().cpu() for name, value in outputs.items()}, sizes)
        found = model([image.to(device) for image in images])
        return [{name: value.cpu() for name, value in detections.items()} for detections in found]

    def run_exported(self, run: Callable[[Tensor], dict[str, Tensor]], images: Sequence[Tensor]) -> list[dict]:
        """An exported graph (``run``: input tensor -> named outputs) on prepared images."""
        if self.batched:
            batch, sizes = padded(images)
            return self.split(run(batch.float()), sizes)
        return [run(image.float().contiguous()) for image in images]

    def graph_outputs(self, model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
        """Batched kinds: the model's outputs on a batch, named as the graph's."""
        raise NotImplementedError  # pragma: no cover - abstract

    def split(self, outputs: dict[str, Tensor], sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Batched kinds: a batch's outputs as one dict per image (``sizes``: each image's before padding)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def module_output(self, run: Callable[[Tensor], dict[str, Tensor]], images) -> object:
        """An exported graph answering as the task module's model does (validation of exported models)."""
        return self.run_exported(run, list(images))

    # -- prediction files -------------------------------------------------------------------------------
    def write(
        self, files: PredictionFiles, item: PredictedImage, metadata: dict, options: PredictOptions
    ) -> list[dict]:
        """``predictions.json`` rows for one image, after writing its overlay (and any other file)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def draw_prediction(self, module: nn.Module, image: Tensor, picture: PictureOptions) -> np.ndarray:
        """The task module's output for one validation image (CHW, on the module's device) drawn on it,
        ``picture.size`` pixels along its longer side (the run's validation pictures)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def count_capped(self, found: list[dict[str, Tensor]], cap: int | None) -> int:
        """Images whose detections reached ``cap`` (kinds without a cap: none)."""
        return count_capped(found, cap) if self.capped else 0


def padded(images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
    """Images of a call stacked, padded bottom/right with zeros where sizes differ, and their sizes."""
    batch, targets = collate_segmentation([(image, {}) for image in images])
    return batch, [target["size"] for target in targets]


def fitted_picture(image: Tensor, size: int) -> np.ndarray:
    """A dataset image (CHW) as an HxWx3 uint8 picture, its longer side ``size`` pixels."""
    chw = drawing.as_uint8_chw(image)
    return drawing.as_uint8(drawing.fit_item(chw, {}, size)[0])
