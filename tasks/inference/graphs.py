"""The trained models as fixed-signature graphs: what is exported and what every engine runs.

Images enter as float RGB in [0, 1]; normalisation and (for detection) the resize to the model's
``min_size``/``max_size`` happen inside, so an exported file needs only the data-side
preprocessing that ``model.json`` describes.
"""

from __future__ import annotations

from torch import Tensor, nn

from tasks.common.errors import UserError

SEGMENTATION_TASKS = ("segmentation",)
INFERENCE_TASKS = ("detection", "instance_segmentation", *SEGMENTATION_TASKS)  # exported and predicted
PREDICT_TASKS = (*INFERENCE_TASKS, "panoptic_segmentation")  # predicted by the PyTorch engine only


def is_semantic(task: str) -> bool:
    return task in SEGMENTATION_TASKS


class DetectorGraph(nn.Module):
    """One image (3 x H x W) in; boxes (xyxy, the input's pixels), labels (1..K), scores and, for
    Mask R-CNN, mask probabilities (N x 1 x H x W) out."""

    input_name = "image"

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.output_names = ["boxes", "labels", "scores"] + (["masks"] if _has_masks(detector) else [])

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        detections = self.detector([image])[0]
        return tuple(detections[name] for name in self.output_names)


class SegmenterGraph(nn.Module):
    """Images (B x 3 x H x W) in; per-class logits at the input's size (B x C x H x W) out."""

    input_name, output_names = "images", ["logits"]

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images: Tensor) -> Tensor:
        return self.segmenter(images)["out"]


def _has_masks(detector: nn.Module) -> bool:
    return getattr(getattr(detector, "roi_heads", None), "mask_predictor", None) is not None


def check_inference_task(task: str, tasks: tuple[str, ...] = INFERENCE_TASKS) -> None:
    """Stop unless ``tasks`` (export's by default; predict's PyTorch engine: ``PREDICT_TASKS``) hold ``task``."""
    if task not in tasks:
        raise UserError(
            f"this takes {', '.join(tasks)} models, not {task}: score a {task} checkpoint with tasks/evaluate.py"
            + (", predict with engine=torch" if task in PREDICT_TASKS else "")
            + ", or start another task's backbone from it (backbone.init=CKPT)"
        )


def inference_graph(model: nn.Module, task: str) -> nn.Module:
    check_inference_task(task)
    return (SegmenterGraph if is_semantic(task) else DetectorGraph)(model).eval()
