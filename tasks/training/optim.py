"""Optimizers by name, so a config can switch SGD and AdamW with one key."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(
    params: Iterable[nn.Parameter],
    *,
    name: str = "sgd",
    lr: float,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: Sequence[float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """``sgd``: torch's SGD with ``momentum`` (and ``nesterov``); ``adamw``: torch's AdamW with ``betas``.

    Settings that do not apply to the chosen optimizer are ignored.
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"optimizer name={name!r} must be one of {OPTIMIZERS}")
