"""Learning-rate schedules built from torch's own schedulers, stepped every optimizer step."""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    PolynomialLR,
    SequentialLR,
)

DECAYS = ("cosine", "step", "poly")


def warmup_then_decay(
    optimizer: Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 100,
    warmup_fraction: float | None = None,
    warmup_factor: float = 0.001,
    decay: str = "cosine",
    milestones: Sequence[float] = (0.67, 0.89),
    gamma: float = 0.1,
    min_lr_ratio: float = 0.0,
    power: float = 0.9,
) -> LRScheduler:
    """Linear warm-up from ``warmup_factor * lr`` over ``warmup_steps``, then cosine, step, or
    poly decay (``lr * (1 - t / T) ** power``, DeepLab's schedule).

    Step ``milestones`` are fractions of ``total_steps``, so the same config fits any
    training length; so does ``warmup_fraction`` (e.g. 5 of 600 epochs), which replaces
    ``warmup_steps`` when set.
    """
    if warmup_fraction is not None:
        warmup_steps = round(warmup_fraction * total_steps)
    if decay not in DECAYS:
        raise ValueError(f"decay={decay!r} must be one of {DECAYS}")
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    remaining = max(1, total_steps - warmup_steps)
    if decay == "cosine":
        base_lr = min(group["lr"] for group in optimizer.param_groups)
        main: LRScheduler = CosineAnnealingLR(optimizer, T_max=remaining, eta_min=base_lr * min_lr_ratio)
    elif decay == "poly":
        main = PolynomialLR(optimizer, total_iters=remaining, power=power)
    else:
        steps = sorted({max(1, round(m * total_steps) - warmup_steps) for m in milestones})
        main = MultiStepLR(optimizer, milestones=steps, gamma=gamma)
    if warmup_steps == 0:
        return main
    warmup = LinearLR(optimizer, start_factor=warmup_factor, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, main], milestones=[warmup_steps])
