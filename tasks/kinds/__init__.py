"""Task kinds: one object per task (``task.name``) owning everything task-specific that inference,
export, drawing and calibration need. Nothing outside this package (and the heads' protocol) branches
on a task's name: it asks the task's kind.

Adding a task (docs/extending.md): a kind file here, registered below, its training module, its
evaluator and its yamls.
"""

from __future__ import annotations

from tasks.common.errors import UserError
from tasks.kinds.base import TaskKind
from tasks.kinds.classification import ClassificationKind
from tasks.kinds.detection import DetectionKind
from tasks.kinds.panoptic import PanopticKind
from tasks.kinds.semantic import SemanticKind

KINDS: dict[str, TaskKind] = {
    kind.name: kind
    for kind in (
        DetectionKind("detection", sliceable=True),
        DetectionKind("instance_segmentation"),
        PanopticKind(),
        SemanticKind(),
        ClassificationKind(),
    )
}


def task_kind(name: str) -> TaskKind:
    """The kind of task ``name`` (a checkpoint's or ``task.name``)."""
    if name not in KINDS:
        raise UserError(f"task={name} is not one of {sorted(KINDS)}")
    return KINDS[name]


__all__ = ["KINDS", "TaskKind", "task_kind"]
