"""What every task's data module shares: loaders, preparation on one process, the bad-image policy.

Lightning calls ``prepare_data`` on global rank 0 only (``prepare_per_node=true``: on each node's
first process, for data on node-local disks) while the others wait, then ``setup`` on every
process: files are written and checked once, and read everywhere. Subclasses implement
``_prepare`` and ``_setup`` (filling ``train_set`` and ``val_set``), name their classes, and say
what an evaluator needs of their validation split (``evaluation_inputs``).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.data.bad_images import ImageItem, keep_good_images
from tasks.data.images import MAX_PIXELS
from tasks.data.loader import ResumableLoader, training_loader


class TaskDataModule(L.LightningDataModule):
    """``skip_bad_images``: leave out (with a warning) image files that the start-up check finds
    unusable, instead of stopping; ``max_pixels``: larger images are refused from their header.
    ``sampling_seed`` (the run's seed) fixes the epoch order and the augmentations."""

    collate_fn: Callable  # a staticmethod: batches the dataset's items
    drop_last_batch = False  # training: whether a last, smaller batch is left out

    def __init__(
        self,
        *,
        batch_size: int,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        prepare_per_node: bool = False,
        cache_dir: str | Path | None = None,
        skip_bad_images: bool = False,
        max_pixels: int = MAX_PIXELS,
        sampling_seed: int = 0,
    ) -> None:
        super().__init__()
        self.prepare_data_per_node = prepare_per_node
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.skip_bad_images, self.max_pixels = skip_bad_images, max_pixels
        self.sampling_seed = sampling_seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._prepared = False  # fit, then validate, would prepare twice
        self._good: dict[str, list[int]] = {}  # source -> usable positions, found once per process
        self._train_loader: ResumableLoader | None = None
        self._resume: dict | None = None  # the training position a checkpoint recorded

    # -- preparation ---------------------------------------------------------------------------
    def _prepare(self) -> None:  # pragma: no cover - abstract
        """Build derived files and run the start-up checks (one process)."""
        raise NotImplementedError

    def _setup(self) -> None:  # pragma: no cover - abstract
        """Fill ``train_set`` and ``val_set`` from what ``_prepare`` left (every process)."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        if not self._prepared:
            self._prepare()
            self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.trainer is None:  # used on its own: nobody prepared the data
            self.prepare_data()
        self._setup()

    def good_positions(self, items: Sequence[ImageItem], source: str, *, report: bool) -> list[int]:
        """Positions of ``items`` whose image file is usable, or a stop naming the bad ones
        (``keep_good_images``; decoded once in ``prepare_data``, remembered in ``cache_dir`` for the
        other processes' ``setup``, and in memory for this process's)."""
        if source not in self._good:
            key = hashlib.sha1(source.encode()).hexdigest()[:16]
            cache_file = self.cache_dir / f"image-checks-{key}.json" if self.cache_dir else None
            self._good[source] = keep_good_images(
                items,
                source=source,
                skip_bad_images=self.skip_bad_images,
                max_pixels=self.max_pixels,
                cache_file=cache_file,
                report=report,
            )
        return self._good[source]

    def file_dataset(self, split: str) -> Dataset:
        """The split's dataset of whole files (a data module that wraps it, e.g. in tiles, unwraps it)."""
        return self.train_set if split == "train" else self.val_set

    def unaugmented(self, split: str) -> Dataset:
        """The split's items as the files hold them: no augmentation, no resizing (a copy of the
        dataset; the loaders keep theirs)."""
        dataset = copy.copy(self.file_dataset(split))
        for name in ("transforms", "resize", "tensor_transforms"):
            if hasattr(dataset, name):
                setattr(dataset, name, None)
        return dataset

    # -- metadata --------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def model_metadata(self) -> dict:
        """What a model built for this data may take from it (read without loading the data)."""
        return {"num_classes": self.num_classes, "class_names": self.class_names}

    def inference_preprocessing(self) -> dict:
        """How evaluation images are sized before the model sees them, so that prediction on new
        images sizes them alike: the longer side brought to ``resize_longest`` (None: kept),
        enlarging smaller images only when ``upscale``."""
        return {"resize_longest": None, "upscale": False}

    # -- loaders -------------------------------------------------------------------------------
    def group_ids(self) -> Sequence[int] | None:
        """A group per training image; batches are filled within a group (None: no grouping)."""
        return None

    def repeat_factors(self) -> Sequence[float] | None:
        """How often each training item appears in an epoch (None: once each)."""
        return None

    def _loader_options(self) -> dict:
        return dict(
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.trainer is not None and self.trainer.overfit_batches:
            # the same first batches, in order, every epoch (Lightning's overfit mode); not resumable
            return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, **self._loader_options())
        self._train_loader = training_loader(
            self.train_set,
            self.batch_size,
            seed=self.sampling_seed,
            trainer=self.trainer,
            group_ids=self.group_ids(),
            repeat=self.repeat_factors(),
            drop_last=self.drop_last_batch,
            resume=self._resume,
            **self._loader_options(),
        )
        self._resume = None
        return self._train_loader

    # -- resuming ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Saved in every checkpoint: the training loader's position in its epoch."""
        return {"train_position": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restored before the training loader is built, which then continues from that position."""
        self._resume = state.get("train_position")

    def align_trainer(self) -> None:
        """Once the trainer restored its loops: its batch counter made to fit the resumed position."""
        if self._train_loader is not None:
            self._train_loader.align_trainer()

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, **self._loader_options())
