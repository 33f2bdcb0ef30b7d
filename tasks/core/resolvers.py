"""OmegaConf resolvers the configs use; registered when ``tasks`` is imported."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tasks import PROJECT_ROOT
from tasks.common.threads import processes_per_node, usable_cpus
from tasks.core import launch


def _starts_from_weights(backbone: DictConfig, root: DictConfig) -> bool:
    detector = OmegaConf.select(root, "task.model.weights", default="none")
    return (
        backbone.get("weights", "none") not in ("none", None)
        or bool(backbone.get("init"))
        or (detector not in ("none", None))
    )


def if_pretrained(when_pretrained: object, from_scratch: object, *, _parent_: DictConfig, _root_: DictConfig):
    """``${if_pretrained:A,B}``: A when the run starts from weights (``backbone.weights``,
    ``backbone.init`` or detector weights ``task.model.weights``), else B."""
    backbone = _root_.backbone if "backbone" in _root_ else _parent_
    return when_pretrained if _starts_from_weights(backbone, _root_) else from_scratch


def on_cpu(accelerator: object, when_cpu: object, otherwise: object) -> object:
    """``${on_cpu:${trainer.accelerator},A,B}``: A when the run is on the CPU (GPU trainer configs
    run there as gloo processes: no SyncBatchNorm, no float16 autocast), else B."""
    return when_cpu if str(accelerator) == "cpu" else otherwise


def workers_per_device(devices: object) -> int:
    """Data-loading workers for each training process: this machine's CPUs shared among the
    devices, one left to each training process itself."""
    return max(1, min(16, usable_cpus() // processes_per_node(devices) - 1))


def register_resolvers() -> None:
    """Make the resolvers the configs use known to OmegaConf (before Hydra composes a config)."""
    resolvers = {
        # config paths are anchored on the project root, never on the working directory
        "project_root": lambda: str(PROJECT_ROOT),
        "if_pretrained": if_pretrained,
        "run_dir": launch.run_dir,
        "rank_zero_only": lambda value: value if launch.is_global_rank_zero() else None,
        "rank_suffix": launch.rank_suffix,
        "workers_per_device": workers_per_device,
        "on_cpu": on_cpu,
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)
