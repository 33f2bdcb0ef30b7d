"""Image classification: class scores per image, the top ``k`` written with their probabilities."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tasks.evaluation import drawing
from tasks.kinds.base import PictureOptions, PredictedImage, PredictOptions, TaskKind, fitted_picture
from tasks.kinds.files import PredictionFiles


class ClassifierGraph(nn.Module):
    """Images (B x 3 x H x W, one size) in; class logits (B x K) out."""

    input_name, output_names = "images", ["logits"]

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(images)


class ClassificationKind(TaskKind):
    """A classifier takes a batch of images of one size (``tasks/predict.py`` batches only images of
    one size; prediction brings each to the evaluation crop, so all have it)."""

    name, batched = "classification", True

    def graph(self, model: nn.Module) -> nn.Module:
        return ClassifierGraph(model).eval()

    def dynamic_axes(self, graph: nn.Module) -> dict[str, dict[int, str]]:
        return {graph.input_name: {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}

    def graph_outputs(self, model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
        return {"logits": model(batch)}

    def split(self, outputs: dict[str, Tensor], sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        return [{"logits": logits} for logits in outputs["logits"]]

    def module_output(self, run: Callable[[Tensor], dict[str, Tensor]], images: Tensor) -> Tensor:
        return run(images.float().contiguous())["logits"]

    def draw_prediction(self, module: nn.Module, image: Tensor, picture: PictureOptions) -> np.ndarray:
        names = picture.class_names
        predicted = int(module(image[None])[0].argmax())
        truth = "" if picture.truth is None else f" (true: {names[int(picture.truth)]})"
        return drawing.caption(fitted_picture(image, picture.size), f"{names[predicted]}{truth}")

    def write(
        self, files: PredictionFiles, item: PredictedImage, metadata: dict, options: PredictOptions
    ) -> list[dict]:
        names = metadata["class_names"]
        top = top_classes(item.found["logits"], names, options.top_k)
        label = f"{top[0]['class_name']} {top[0]['score']:.2f}"
        files.save_overlay(drawing.caption(item.image, label), item.relative)
        return [{"file_name": item.relative.as_posix(), "top_k": top}]


def top_classes(logits: Tensor, class_names: Sequence[str], k: int) -> list[dict]:
    """The ``k`` most probable classes (softmax of ``logits``), most probable first: index, name, probability."""
    probabilities = torch.softmax(logits.float(), dim=0)
    scores, indices = probabilities.topk(min(k, len(class_names)))
    return [
        {"class_id": int(i), "class_name": class_names[int(i)], "score": round(float(s), 6)}
        for s, i in zip(scores, indices, strict=True)
    ]
