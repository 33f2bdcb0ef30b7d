"""Loading weight files safely, and fetching torchvision's published weights.

Files are always read with ``torch.load(weights_only=True)``: tensors and plain
containers load, anything that would execute code while unpickling is refused.
"""

from __future__ import annotations

import logging
import pickle
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor
from torchvision.models import WeightsEnum

log = logging.getLogger(__name__)

# Where the tensors of a backbone kept as ``self.body`` sit in files: its own state dict, or a
# detector (FPN wraps it as ``body``), segmenter or classifier (whose state dict holds the
# backbone's keys unnested) in a LightningModule (``model.``) of this project.
BODY_PREFIXES = (
    "body.",
    "backbone.body.body.",
    "model.backbone.body.body.",
    "backbone.body.",
    "model.backbone.body.",
    "model.body.",
)

# Keys under which common training frameworks nest the model's state dict.
_NESTED_STATE_KEYS = ("state_dict", "model", "model_state_dict", "module")


class WeightsError(RuntimeError):
    """A weights file or published checkpoint could not be loaded."""


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``path`` (raw, or nested under a framework's usual key)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist: pass the path of a .pth/.pt/.ckpt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path} was refused: it contains pickled objects other than tensors and plain containers, "
            f"which could run code when loaded ({first_line(err)}). "
            "Re-save it as a plain state dict: torch.save(model.state_dict(), path)"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, OSError ... by fault
        raise WeightsError(
            f"weights file {path} cannot be read ({first_line(err)}): the file is truncated or not a torch "
            "weights file. Copy it again, or pass another file"
        ) from err
    return _unwrap_state_dict(obj, path)


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (torch's run on for paragraphs), or its type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    while isinstance(obj, Mapping):
        nested = next((obj[k] for k in _NESTED_STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def hub_cache_path(weights: WeightsEnum) -> Path:
    """Where torchvision looks for (and downloads) the file of ``weights``."""
    filename = Path(urlparse(weights.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def torchvision_state_dict(
    weights: WeightsEnum, *, instead: str = "set backbone.weights=none to train the backbone from scratch"
) -> dict[str, Tensor]:
    """Fetch ``weights`` through torchvision's own API; offline, the error names the file, where
    to put it, and ``instead``: how to run without it."""
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (URLError, OSError) as err:
        cached = hub_cache_path(weights)
        raise WeightsError(
            f"could not download {weights} from {weights.url} ({err}). Without network access, "
            f"copy that file to {cached} (torch hub cache; TORCH_HOME moves it), "
            f"pass the local file path instead of the weights name, or {instead}."
        ) from err


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keep the entries under ``prefix`` with the prefix removed; all entries when none match."""
    if not prefix or not any(k.startswith(prefix) for k in state_dict):
        return dict(state_dict)
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


@dataclass
class StateDictMatch:
    """How a file's tensors fit a module under the best prefix."""

    loadable: dict[str, Tensor]  # shape-checked entries to load
    missing: list[str]  # module keys left at their initial values
    unused: list[str]  # file keys that found no place (or a wrong shape)
    reshaped: list[tuple[str, tuple, tuple]]  # (key, file shape, module shape) for same-named tensors


def match_state_dict(
    module: torch.nn.Module, state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...]
) -> StateDictMatch:
    """Pick the prefix under which ``state_dict`` best fits ``module``."""
    own = module.state_dict()
    best = StateDictMatch({}, [], [], [])
    for prefix in ("", *prefixes):
        candidate = strip_prefix(state_dict, prefix) if prefix else dict(state_dict)
        fits = {k: v for k, v in candidate.items() if k in own and own[k].shape == v.shape}
        if len(fits) > len(best.loadable):
            reshaped = [
                (k, tuple(v.shape), tuple(own[k].shape)) for k, v in candidate.items() if k in own and k not in fits
            ]
            best = StateDictMatch(fits, [], [k for k in candidate if k not in fits], reshaped)
    best.missing = [k for k in own if k not in best.loadable and not k.endswith("num_batches_tracked")]
    return best


def apply_weights(
    module: torch.nn.Module,
    weights: str,
    *,
    name: str,
    imagenet: Callable[[], Mapping[str, Tensor]],
    prefixes: tuple[str, ...],
    ignore_unused: tuple[str, ...] = (),
) -> None:
    """Load ``weights`` (``"none"``, ``"imagenet"`` through ``imagenet()``, or a file path) into ``module``.

    Keys are matched under whichever of ``prefixes`` fits best; the log says what loaded and
    what stayed at initialisation. ``ignore_unused`` lists key prefixes (a classifier) that a
    file may hold without a warning.
    """
    if weights == "none":
        return
    if weights == "imagenet":
        state, source = imagenet(), f"{name} ImageNet weights"
    elif Path(weights).expanduser().suffix or "/" in weights:
        state, source = load_state_dict_file(weights), weights
    else:
        raise WeightsError(f"weights={weights!r} is not 'none', 'imagenet' or a file path")
    match = match_state_dict(module, state, prefixes)
    loadable, missing, unused = match.loadable, match.missing, match.unused
    if not loadable:
        raise WeightsError(f"no tensor of {source} fits {name}: is it a {name} checkpoint?")
    # same names, other shapes: another member of the family (a resnet50 file, a resnet18); a
    # classifier trained for another class count is no such sign
    reshaped = [entry for entry in match.reshaped if not entry[0].startswith(ignore_unused)]
    if reshaped:
        key, file_shape, own_shape = reshaped[0]
        raise WeightsError(
            f"{source} does not fit {name}: {len(reshaped)} of its tensors have the model's names but other "
            f"shapes (e.g. {key}: file {file_shape}, model {own_shape}), so it was saved from another "
            "architecture; choose the backbone it was trained with (backbone=NAME)"
        )
    module.load_state_dict(loadable, strict=False)
    groups = Counter(key.split(".")[0] for key in loadable)
    listed = ", ".join(f"{group} {count}" for group, count in sorted(groups.items()))
    log.info("%s: loaded %d tensors (%s) from %s", name, len(loadable), listed, source)
    log.debug("%s: tensors loaded from %s: %s", name, source, list(loadable))
    if missing:
        log.warning("%s: %d tensors left at initialisation: %s", name, len(missing), missing[:8])
    else:
        log.info("%s: no tensor left at initialisation", name)
    unused = [k for k in unused if not k.startswith(ignore_unused)] if ignore_unused else unused
    if unused:
        log.warning("%s: %d tensors of %s not used: %s", name, len(unused), source, unused[:8])
