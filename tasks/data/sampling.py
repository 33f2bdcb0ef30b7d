"""The training order of an epoch: shuffled, sharded over DDP ranks, batched (optionally by
aspect ratio), each sample with its own augmentation seed; all a function of (seed, epoch).

Because nothing depends on state carried from batch to batch, a run resumed in the middle of
an epoch continues from the exact next batch with the same augmentations, for any number of
loader workers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import DistributedSampler

SampleKey = tuple[int, int]  # (dataset index, augmentation seed)


def aspect_ratio_groups(aspect_ratios: Sequence[float], bins_per_side: int = 3) -> list[int]:
    """Group index per image from width/height, on log-spaced bins between 1/2 and 2."""
    bins = 2 ** np.linspace(-1, 1, 2 * bins_per_side + 1)
    return np.digitize(np.asarray(aspect_ratios, dtype=float), bins).tolist()


def group_batches(order: Sequence[int], group_ids: Sequence[int], batch_size: int, drop_last: bool) -> list[list[int]]:
    """Fill one batch per group in ``order``; leftovers are batched together at the end.

    There are as many batches as plain batching of ``order`` gives, so every DDP rank runs the
    same number of steps.
    """
    batches, pending = [], defaultdict(list)
    for index in order:
        group = pending[group_ids[index]]
        group.append(index)
        if len(group) == batch_size:
            batches.append(group.copy())
            group.clear()
    leftovers = [index for group in pending.values() for index in group]
    return batches + plain_batches(leftovers, batch_size, drop_last)


def plain_batches(order: Sequence[int], batch_size: int, drop_last: bool) -> list[list[int]]:
    batches = [list(order[start : start + batch_size]) for start in range(0, len(order), batch_size)]
    return batches[:-1] if batches and drop_last and len(batches[-1]) < batch_size else batches


def repeat_factors(classes_per_image: Sequence[Sequence[int]], threshold: float) -> np.ndarray:
    """LVIS's repeat-factor sampling (Gupta et al., 2019): a class in a fraction ``f`` of the images
    gets ``r = max(1, sqrt(threshold / f))``; an image repeats by the largest ``r`` of its classes
    (1 without objects), so images of rare classes are seen more often each epoch."""
    if not threshold > 0:
        raise ValueError(f"repeat_threshold={threshold} must be a positive fraction of the images, e.g. 0.001")
    images = len(classes_per_image)
    present = [set(map(int, classes)) for classes in classes_per_image]
    counts: dict[int, int] = defaultdict(int)
    for classes in present:
        for c in classes:
            counts[c] += 1
    per_class = {c: max(1.0, math.sqrt(threshold / (n / images))) for c, n in counts.items()}
    return np.asarray([max((per_class[c] for c in classes), default=1.0) for classes in present])


def repeated_order(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image ``floor(r)`` times, and once more for a seeded draw of ``round(sum(r)) - sum(floor(r))``
    images in which each is drawn with probability its fractional part (``systematic_sample``): every
    epoch has the same length ``round(sum(r))`` (Lightning counts an epoch's batches once), and each image
    appears ``r`` times on average, as detectron2's per-image draw gives."""
    whole = np.floor(factors).astype(np.int64)
    extra = int(round(factors.sum())) - int(whole.sum())
    chosen = systematic_sample(factors - whole, extra, rng)
    return np.concatenate([np.repeat(np.arange(len(factors)), whole), chosen])


def inclusion_probabilities(weights: np.ndarray, count: int) -> np.ndarray:
    """``weights`` scaled to sum to ``count``, none above 1 (the excess of a capped one goes to the others)."""
    weights = np.asarray(weights, np.float64)
    probabilities = np.zeros_like(weights)
    capped = np.zeros(len(weights), bool)
    while count - capped.sum() > 0 and weights[~capped].sum() > 0:
        free = ~capped
        probabilities[free] = weights[free] * (count - capped.sum()) / weights[free].sum()
        over = free & (probabilities >= 1)
        if not over.any():
            break
        probabilities[over], capped = 1.0, capped | over
    return probabilities


def systematic_sample(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct positions, position ``i`` drawn with probability ``weights[i]`` scaled to sum to
    ``count`` (``inclusion_probabilities``): systematic sampling (Madow, 1949) over a random order. Points
    ``u, u + 1, ...`` fall on the positions' stacked probabilities; none is longer than 1, so none is hit
    twice. (``rng.choice(replace=False, p=...)`` draws one at a time and does not keep these probabilities.)"""
    if count <= 0:
        return np.zeros(0, np.int64)
    probabilities = inclusion_probabilities(weights, count)
    order = rng.permutation(len(probabilities))
    edges = np.cumsum(probabilities[order])
    edges *= count / edges[-1]  # exactly count: the last point lands inside
    points = rng.random() + np.arange(count)
    return order[np.searchsorted(edges, points, side="right")]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (a run's seed, an epoch, a step, a rank ...)."""
    state = np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpochBatchSampler(DistributedSampler):
    """Batches of ``SampleKey`` for one rank: the same batches for the same (seed, epoch).

    It is a ``DistributedSampler`` so that Lightning keeps it instead of wrapping it; it shards
    itself like one (the order padded to a multiple of the ranks, then every ``num_replicas``-th
    sample). ``start(epoch, samples_done=...)`` resumes after the first ``samples_done`` samples of
    the epoch's order, whatever batch size and number of ranks consumed them: the rest of the order
    is sharded and batched anew. Grouped batches (``group_ids``) take samples out of order, so they
    resume by ``batches_done`` in an unchanged layout instead.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        group_ids: Sequence[int] | None = None,
        repeat: Sequence[float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.repeat = None if repeat is None else np.asarray(repeat, float)
        self.images = size
        if self.repeat is not None:  # an epoch's order holds each image its repeat factor times
            size = int(round(self.repeat.sum()))
        self.size, self.batch_size, self.drop_last_batch = size, batch_size, drop_last
        self.group_ids = list(group_ids) if group_ids is not None else None
        self.samples_done, self.skip = 0, 0

    @property
    def grouped(self) -> bool:
        return self.group_ids is not None

    def batch_count(self, samples_done: int = 0) -> int:
        """Batches per rank for the rest of an epoch after ``samples_done`` samples (all: a fresh epoch)."""
        per_rank = math.ceil(max(self.size - samples_done, 0) / self.num_replicas)
        return per_rank // self.batch_size if self.drop_last_batch else math.ceil(per_rank / self.batch_size)

    def __len__(self) -> int:
        return self.batch_count()

    def samples_after(self, batches: int, samples_done: int = 0) -> int:
        """Samples of the epoch's order consumed once every rank has run ``batches`` batches of the
        rest that followed ``samples_done`` (a prefix of the order: see ``epoch_batches``)."""
        return min(self.size, samples_done + batches * self.batch_size * self.num_replicas)

    def start(self, epoch: int, *, samples_done: int = 0, batches_done: int = 0) -> None:
        """Where the next iteration begins: after ``samples_done`` samples of the order, then
        ``batches_done`` batches of what is left; an epoch with nothing left rolls over to the next."""
        if batches_done >= self.batch_count(samples_done):
            epoch, samples_done, batches_done = epoch + 1, 0, 0
        self.set_epoch(epoch)
        self.samples_done, self.skip = samples_done, batches_done

    def epoch_batches(self, epoch: int, samples_done: int = 0) -> list[list[SampleKey]]:
        """This rank's batches of the epoch's order after its first ``samples_done`` samples.

        Rank r takes positions r, r + R, ... of the (padded) rest, in batches of B: after k batches
        on every rank, exactly the first k x B x R positions are consumed, a prefix of the order.
        """
        rng = np.random.default_rng([self.seed, epoch])
        if self.repeat is not None:  # a repeated image is augmented anew each time: a seed per position
            order = repeated_order(self.repeat, rng)
            order = rng.permutation(order) if self.shuffle else order
            seeds = rng.integers(0, 2**63 - 1, size=self.size)
            positions = np.arange(self.size)
        else:
            order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
            seeds = rng.integers(0, 2**63 - 1, size=self.size)
            positions = order
        length = self.num_replicas * math.ceil((self.size - samples_done) / self.num_replicas)
        shard = slice(self.rank, None, self.num_replicas)
        indices = np.resize(order[samples_done:], length)[shard].tolist()
        slot_seeds = seeds[np.resize(positions[samples_done:], length)[shard]].tolist()
        slots = list(range(len(indices)))  # batched by slot in the shard: a repeated image keeps its own seed
        if self.group_ids is None:
            batches = plain_batches(slots, self.batch_size, self.drop_last_batch)
        else:
            slot_groups = [self.group_ids[index] for index in indices]
            batches = group_batches(slots, slot_groups, self.batch_size, self.drop_last_batch)
        return [[(indices[slot], int(slot_seeds[slot])) for slot in batch] for batch in batches]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        yield from self.epoch_batches(self.epoch, self.samples_done)[self.skip :]
