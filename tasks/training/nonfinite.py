"""Stop (or skip) a training batch whose loss is NaN or infinite, before it reaches the weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from tasks.common.errors import UserError


class NonFiniteLossError(UserError):
    """Training stopped on a NaN/inf loss or weight; the message names the batch and the last good checkpoint."""


def has_nonfinite(losses: Mapping[str, Tensor]) -> bool:
    """One device sync for every component together."""
    values = torch.stack([value.detach().float().reshape(()) for value in losses.values()])
    return not bool(torch.isfinite(values).all())


def describe_batch(losses: Mapping[str, Tensor], targets: Sequence[Mapping]) -> str:
    """The non-finite components with their values, and the batch's image files."""
    bad = {name: float(value.detach().float()) for name, value in losses.items() if not torch.isfinite(value).all()}
    components = ", ".join(f"{name}={value}" for name, value in bad.items())
    files = ", ".join(str(t.get("file", f"image_id {t.get('image_id')}")) for t in targets)
    return f"{components}; batch images: {files}"


def nonfinite_tensors(state_dict: Mapping[str, Tensor]) -> list[str]:
    return [
        name
        for name, tensor in state_dict.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
