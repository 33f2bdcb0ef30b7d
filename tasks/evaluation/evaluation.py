"""The interface every task's evaluator implements, and what it returns.

``reset`` starts a validation, ``update(outputs, targets)`` takes a batch's model outputs and its
targets (each target carries its ``image_id``), and ``compute`` returns an ``Evaluation``, the
same on every DDP process. The module logs its scalars; ``tasks/train.py`` and
``tasks/evaluate.py`` write them, the per-class table and the files into the run directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Evaluation:
    scalars: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # class name -> metric -> value
    files: dict[str, Any] = field(default_factory=dict)  # run-directory file -> JSON content (rank 0 only)
    # what the plots draw (tasks.evaluation.plots): detection's confusion_matrix and pr_curves
    analysis: dict[str, Any] = field(default_factory=dict)


class Evaluator(Protocol):
    def reset(self) -> None: ...

    def update(self, outputs: Sequence[Any], targets: Sequence[Mapping[str, Any]]) -> None: ...

    def compute(self) -> Evaluation: ...
