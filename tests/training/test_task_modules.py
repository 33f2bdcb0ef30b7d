"""What every task module shares: one training and one validation step (each module gives its losses and
predictions), one place that says whether tiles can be merged (the task's kind), and per-image files only
where the task writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor, nn

from tasks.common.errors import UserError
from tasks.evaluation.slicing import Slicing
from tasks.kinds import KINDS, task_kind
from tasks.training.classification import ClassificationModule
from tasks.training.detection import DetectionModule
from tasks.training.module import TaskModule
from tasks.training.segmentation import SegmentationModule
from tests.support import CONF_DIR

# each task file names its module's class (what it builds on gives the options)
MODULES = {p.stem: get_class(OmegaConf.load(p).module._target_) for p in sorted((CONF_DIR / "task").glob("*.yaml"))}
DETECTOR_TASKS = [task for task, module_class in MODULES.items() if issubclass(module_class, DetectionModule)]


@pytest.mark.parametrize("task", sorted(MODULES))
def test_every_task_trains_and_validates_through_the_shared_steps(task: str) -> None:
    module_class = MODULES[task]
    assert issubclass(module_class, TaskModule)
    for step in ("training_step", "validation_step"):
        assert getattr(module_class, step) is getattr(TaskModule, step), f"{module_class.__name__} has its own {step}"
    for part in ("losses", "losses_and_predictions"):
        assert getattr(module_class, part) is not getattr(TaskModule, part), f"{module_class.__name__} lacks {part}"


def test_the_task_files_name_the_tasks_the_kinds_know() -> None:
    assert set(MODULES) == set(KINDS)


@pytest.mark.parametrize("task", DETECTOR_TASKS)
def test_validation_on_tiles_is_refused_where_the_kind_cannot_merge_them(task: str) -> None:
    slicing = Slicing(size=64)
    if task_kind(task).sliceable:
        with pytest.raises(TypeError):  # past the slicing check: the model (None) is what fails
            DetectionModule(None, task=task, slicing=slicing, optimizer=None)
    else:
        with pytest.raises(UserError, match=f"not {task} predictions: pass slicing.size=0"):
            DetectionModule(None, task=task, slicing=slicing, optimizer=None)


class _Classifier(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(3, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(images.mean((2, 3)))


def _batch(size: int = 4) -> tuple[Tensor, list[dict]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (size, 3, 8, 8), dtype=torch.uint8, generator=generator)
    return images, [{"label": i % 3, "image_id": i} for i in range(size)]


def test_per_image_files_are_refused_by_a_task_that_writes_none(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ClassificationModule writes no per-image prediction files"):
        ClassificationModule(_Classifier(), optimizer=None, prediction_dir=tmp_path)


def test_classification_trains_on_the_mixed_batch_and_validates_on_the_loader_s(tmp_path: Path) -> None:
    module = ClassificationModule(_Classifier(), optimizer=None, mixup_alpha=0.4, label_smoothing=0.1)
    images, targets = _batch()
    torch.manual_seed(3)
    mixed, mixed_targets = module.training_batch((images, targets))
    probabilities = torch.stack([t["label"] for t in mixed_targets])
    assert torch.allclose(probabilities.sum(1), torch.ones(4))
    assert not torch.equal(mixed, images.float() / 255)
    _, total = module.losses((mixed, mixed_targets))
    expected = F.cross_entropy(module.model(mixed), probabilities, label_smoothing=0.1)
    assert torch.allclose(total, expected)
    (_, validation_loss), logits = module.losses_and_predictions((images, targets), 0)
    plain = module.model(images.float() / 255)
    assert torch.allclose(logits, plain)
    assert torch.allclose(validation_loss, F.cross_entropy(plain, torch.tensor([0, 1, 2, 0]), label_smoothing=0.1))


class _Recorder:
    def __init__(self) -> None:
        self.updates: list = []

    def update(self, predictions, targets) -> None:
        self.updates.append((predictions, targets))

    def compute(self) -> None:  # an evaluator built already (not a factory awaiting the data)
        return None


class _Segmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 3, 1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"out": self.backbone(images)}


def test_the_shared_validation_step_scores_and_writes_what_the_module_predicts(tmp_path: Path) -> None:
    recorder = _Recorder()
    module = SegmentationModule(_Segmenter(), optimizer=None, evaluator=recorder, prediction_dir=tmp_path / "masks")
    module.log_validation_loss = lambda *args, **kwargs: None  # no trainer to log to
    images, _ = _batch(2)
    masks = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    targets = [{"mask": masks[i], "size": (8, 8), "image_id": 10 + i} for i in range(2)]
    module.validation_step((images, targets), 0)
    ((predictions, scored_targets),) = recorder.updates
    assert scored_targets is targets
    for image, prediction, target in zip(images, predictions, targets, strict=True):
        written = np.asarray(Image.open(tmp_path / "masks" / f"{target['image_id']}.png"))
        assert np.array_equal(written, prediction.numpy())
        assert torch.equal(prediction, module(image[None])["out"][0].argmax(0))
