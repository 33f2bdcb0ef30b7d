"""Export a checkpoint: ``python tasks/export.py task=detection ckpt_path=CKPT format=onnx|openvino|torchscript``.

Writes ``model.onnx`` (dynamic image size), ``model.xml`` + ``model.bin`` (OpenVINO) or ``model.pt``
(TorchScript), and ``model.json`` with the class names, input normalisation and sizes, into the run
directory. ``format=openvino quantize=int8 calibration_images=300``: int8, calibrated on training
images, with the validation metrics of the float32 and the int8 model printed and recorded.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any directory

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tasks.common.errors import exit_on_user_error  # noqa: E402
from tasks.core.resolvers import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> Path:
    from tasks.common.threads import configure_threads  # here: showing the config (--cfg job) imports no torch
    from tasks.core.deploy import export_model

    configure_threads(cfg)
    return export_model(cfg)


if __name__ == "__main__":
    main()
