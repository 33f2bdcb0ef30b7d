"""What training and inference may ask of a detector: the one contract every detection head of this
package implements (Faster R-CNN, Mask R-CNN, Panoptic FPN, RetinaNet, FCOS) and an exported model
standing in for one. Nothing outside the heads reaches into torchvision's attributes (``roi_heads``,
``rpn``, ``anchor_generator``): it asks through these members.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

DETECTOR_MEMBERS = ("losses_and_detections", "detections_per_img", "predicts_masks", "trunk")


@runtime_checkable
class Detector(Protocol):
    """``forward(images)`` in eval mode: detections per image (``boxes``, ``labels``, ``scores``,
    ``masks`` when ``predicts_masks``); in training ``forward(images, targets)``: the losses."""

    detections_per_img: int  # the most detections kept an image; settable (predict box_detections_per_img=)
    predicts_masks: bool

    def losses_and_detections(
        self, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[dict[str, Tensor] | None, list[dict[str, Tensor]]]:
        """Validation in one pass: the training losses (None: the model has none, e.g. an exported one)
        and the detections."""

    def trunk(self) -> dict[str, nn.Module]:
        """The convolutional parts worth compiling (attribute path -> module); post-processing stays eager."""


def check_detector(model: object, role: str = "task.model") -> Detector:
    """``model`` when it implements :class:`Detector`; otherwise a message naming what it lacks."""
    missing = [name for name in DETECTOR_MEMBERS if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{role} ({type(model).__name__}) is not a detector of this project: it lacks {', '.join(missing)} "
            "(heads/protocol.py lists what a detection head implements)"
        )
    return model


def detection_cap(model: object) -> int | None:
    """The detection cap of a detector; None for models that keep no cap (segmenters, classifiers)."""
    return model.detections_per_img if isinstance(model, Detector) else None
