"""Semantic segmentation: per-class logits at the input's size, a class map per image."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor, nn

from tasks.data.formats.palette import save_palette_png
from tasks.evaluation import drawing
from tasks.kinds.base import PictureOptions, PredictedImage, PredictOptions, TaskKind, fitted_picture
from tasks.kinds.files import PredictionFiles


class SegmenterGraph(nn.Module):
    """Images (B x 3 x H x W) in; per-class logits at the input's size (B x C x H x W) out."""

    input_name, output_names = "images", ["logits"]

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images: Tensor) -> Tensor:
        return self.segmenter(images)["out"]


class SemanticKind(TaskKind):
    """A segmenter takes a padded batch; each image's logits are cropped back out of it. Prediction
    writes a palette PNG of class indices per image (``masks/``) beside its overlay."""

    name, batched = "segmentation", True

    def graph(self, model: nn.Module) -> nn.Module:
        return SegmenterGraph(model).eval()

    def dynamic_axes(self, graph: nn.Module) -> dict[str, dict[int, str]]:
        axes = {0: "batch", 2: "height", 3: "width"}
        return {graph.input_name: axes, "logits": axes}

    def graph_outputs(self, model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
        return {"logits": model(batch)["out"]}

    def split(self, outputs: dict[str, Tensor], sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        return [{"logits": scores[:, :h, :w]} for scores, (h, w) in zip(outputs["logits"], sizes, strict=True)]

    def module_output(self, run: Callable[[Tensor], dict[str, Tensor]], images: Tensor) -> dict[str, Tensor]:
        return {"out": run(images.float().contiguous())["logits"]}

    def draw_prediction(self, module: nn.Module, image: Tensor, picture: PictureOptions) -> np.ndarray:
        canvas = fitted_picture(image, picture.size)
        logits = module(image[None])["out"][0].cpu()
        return drawing.draw_semantic(canvas, drawing.semantic_mask(logits, canvas), len(picture.class_names))

    def write(
        self, files: PredictionFiles, item: PredictedImage, metadata: dict, options: PredictOptions
    ) -> list[dict]:
        names = metadata["class_names"]
        mask = drawing.semantic_mask(item.found["logits"], item.image)
        mask_file = files.name("masks", item.relative, ".png")
        save_palette_png(mask, files.output_dir / mask_file)
        files.save_overlay(drawing.draw_semantic(item.image, mask, len(names)), item.relative)
        return [semantic_row(mask, item.relative.as_posix(), mask_file.as_posix(), names)]


def semantic_row(mask: np.ndarray, file_name: str, mask_file: str, class_names: Sequence[str]) -> dict:
    """Per image: the palette PNG written and the fraction of pixels of each class present."""
    counts = np.bincount(mask.ravel(), minlength=len(class_names))
    fractions = {class_names[k]: round(float(c) / mask.size, 6) for k, c in enumerate(counts) if c}
    return {"file_name": file_name, "mask_file": mask_file, "class_fractions": fractions}
