"""Engines run a trained model on prepared images (float RGB in [0, 1], 3 x H x W, already sized by
the data-side preprocessing) and return, per image, CPU tensors in that image's pixels:
``boxes``/``labels``/``scores`` (``masks``) for detectors, ``logits`` (C x H x W) for segmenters,
``logits`` (K) for classifiers.

How a call's images enter the model is the task kind's (``tasks.kinds``): detectors take a list
(an exported detector one image per call); segmenters and classifiers a batch tensor, padded
bottom/right with zeros where sizes differ, each image's outputs cropped back out.
``tasks/predict.py`` calls them with images of one size only, so no image is padded to another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from heads.protocol import detection_cap
from tasks.common.errors import UserError
from tasks.inference.cpu_optimisation import compile_trunk, optimise_for_cpu
from tasks.inference.openvino_core import openvino_core
from tasks.kinds import task_kind

ENGINES = ("torch", "onnxruntime", "openvino")


class TorchEngine:
    """The PyTorch model on ``device`` ("auto": the GPU when there is one). On the CPU with folded
    BatchNorm and channels-last weights (``optimise_for_cpu``: the same outputs, faster); ``compile``
    also compiles the convolutional trunk (worth it for many images of few sizes)."""

    def __init__(self, model: nn.Module, task: str, device: str = "auto", compile: bool = False) -> None:
        self.kind = task_kind(task)
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
        )
        model = model.eval().to(self.device)
        self.detection_cap = detection_cap(model)  # read before the CPU optimisation wraps the model
        if self.device.type == "cpu":
            model = optimise_for_cpu(model, compile=compile)
        elif compile:
            model = compile_trunk(model)
        self.model = model

    @torch.inference_mode()
    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        return self.kind.run_model(self.model, images, self.device)


class ExportedEngine:
    """What the engines of exported models share: the task kind feeds the graph (``_run``: one input
    tensor in, the named outputs out)."""

    kind: object

    def _run(self, array: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        return self.kind.run_exported(self._run, images)


def _exported_file(path: str | Path, option: str, fmt: str) -> Path:
    if not Path(path).is_file():
        raise UserError(f"{option}={path} does not exist: write one with python tasks/export.py format={fmt}")
    return Path(path)


class OnnxRuntimeEngine(ExportedEngine):
    """An exported ``model.onnx`` (``tasks/export.py format=onnx``) in ONNX Runtime."""

    def __init__(self, path: str | Path, task: str, detection_cap: int | None = None) -> None:
        self.detection_cap = detection_cap  # fixed when the model was exported
        try:
            import onnxruntime
        except ImportError as err:
            raise UserError('engine=onnxruntime needs the deploy extras: pip install -e ".[deploy]"') from err
        path = _exported_file(path, "onnx_path", "onnx")
        providers = [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()
        ]
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.kind = task_kind(task)

    def _run(self, array: Tensor) -> dict[str, Tensor]:
        outputs = self.session.run(None, {self.input_name: array.numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs, strict=True)}


OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # precision= -> OpenVINO's inference precision hint


def openvino_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can compute natively on this machine (``BF16``, ``INT8``, ...)."""

    return list(openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVinoEngine(ExportedEngine):
    """An exported ``model.xml`` (``tasks/export.py format=openvino``; or an ``openvino.Model`` in memory)
    in OpenVINO on the CPU with torch's thread count. ``precision``: fp32 (OpenVINO would otherwise
    compute in bfloat16 on CPUs that have it) or bf16, refused where the CPU has no native bf16. An int8
    model (``quantize=int8``) runs its quantized layers in int8 either way."""

    def __init__(
        self, path: str | Path | object, task: str, detection_cap: int | None = None, precision: str = "fp32"
    ) -> None:
        self.detection_cap = detection_cap
        try:
            import openvino  # noqa: F401 - installed, or the message below
        except ImportError as err:
            raise UserError('engine=openvino needs the deploy extras: pip install -e ".[deploy]"') from err
        if precision not in OPENVINO_PRECISIONS:
            raise UserError(f"precision={precision} is not one of {sorted(OPENVINO_PRECISIONS)}")
        if precision == "bf16" and "BF16" not in openvino_capabilities():
            raise UserError("precision=bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); use precision=fp32")
        model = str(_exported_file(path, "openvino_path", "openvino")) if isinstance(path, str | Path) else path
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision]}
        config["INFERENCE_NUM_THREADS"] = torch.get_num_threads()
        self.compiled = openvino_core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.kind = task_kind(task)

    def _run(self, array: Tensor) -> dict[str, Tensor]:
        results = self.request.infer({0: array.numpy()})
        return {output.get_any_name(): torch.from_numpy(results[output].copy()) for output in self.compiled.outputs}


class EngineAsModel(nn.Module):
    """An engine in the place of a task module's model, so that validation scores an exported model
    exactly as it scores a checkpoint: it answers as the task's model does (the task kind's
    ``module_output``)."""

    def __init__(self, engine: ExportedEngine, num_classes: int | None = None) -> None:
        super().__init__()
        self.engine, self.num_classes = engine, num_classes
        self.detections_per_img = engine.detection_cap  # read by the validation's capped-images warning

    predicts_masks = False  # heads.protocol.Detector: the masks an exported detector returns are passed on as they are

    def forward(self, images: Tensor | list[Tensor]) -> object:
        return self.engine.kind.module_output(self.engine._run, images)

    def losses_and_detections(self, images: list[Tensor], targets: list[dict]) -> tuple[None, object]:
        return None, self(images)  # an exported model computes no losses

    def trunk(self) -> dict[str, nn.Module]:
        return {}
