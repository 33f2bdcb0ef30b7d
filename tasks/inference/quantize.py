"""int8 post-training quantization of an exported OpenVINO model with NNCF, OpenVINO's own tool.

NNCF runs the float32 model on calibration images, records the range of every convolution's and
matrix product's input, and inserts quantize/dequantize pairs there; OpenVINO then runs those
layers with int8 kernels (VNNI / AMX where the CPU has them). Everything else (NMS, RoIAlign, the
resize inside the detector) stays float32. The calibration images are drawn from the training
split and prepared as ``tasks/predict.py`` prepares an image, so the recorded ranges are those the
deployed model sees.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from tasks.common.errors import UserError
from tasks.evaluation.drawing import spread
from tasks.inference.inputs import resizer
from tasks.kinds import TaskKind

log = logging.getLogger(__name__)


def calibration_positions(available: int, count: int) -> list[int]:
    """``count`` positions spread evenly over ``available`` items (the same ones every export)."""
    if count < 1:
        raise UserError(f"calibration_images={count} must be at least 1")
    if available < 1:
        raise UserError("the training split has no image to calibrate int8 quantization with")
    return spread(available, min(count, available))


def calibration_inputs(dataset: Dataset, preprocessing: dict, count: int, kind: TaskKind) -> list[np.ndarray]:
    """The exported model's inputs for ``count`` training images, decoded as the files hold them and
    sized as prediction sizes an image (``preprocessing``: the checkpoint's data-side resize)."""
    resize = resizer(preprocessing)
    inputs = []
    for position in calibration_positions(len(dataset), count):
        image = dataset[position][0].permute(1, 2, 0).numpy()  # uint8 HxWx3, no augmentation
        if resize is not None:
            image = resize(image)
        array = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255
        inputs.append(kind.calibration_input(array))
    return inputs


def quantize_int8(model: Any, inputs: Sequence[np.ndarray]) -> Any:
    """``model`` (an ``openvino.Model`` read from its file, see ``tasks.core.deploy.float32_openvino``) with
    int8 convolutions and matrix products, calibrated on ``inputs``: NNCF's default preset (symmetric,
    the fastest on CPUs) with each activation's range the minimum and maximum over the calibration
    images. NNCF's default range (an average over the images) clips the rare large activations: on the
    built-in shapes it cost 0.33 map_50 where the min/max range costs none (docs/predict_export.md)."""
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    except ImportError as err:
        raise UserError('quantize=int8 needs the deploy extras: pip install -e ".[deploy]"') from err
    ranges = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    return nncf.quantize(model, nncf.Dataset(list(inputs)), subset_size=len(inputs), advanced_parameters=ranges)


def quantization_record(calibrated: int, available: int, source: str, metrics: dict[str, dict[str, float]]) -> dict:
    """What ``model.json`` says of an int8 model: the tool, the calibration set and the measured cost."""
    import nncf

    return {
        "precision": "int8",
        "tool": f"nncf {nncf.__version__}",
        "calibration": {
            "split": "train",
            "images": calibrated,
            "of": available,
            "selection": "spread evenly over the split, unaugmented, prepared as predict prepares an image",
            "dataset": source,
        },
        "validation": metrics,  # fp32 and int8 figures on the validation split, measured at export
    }
