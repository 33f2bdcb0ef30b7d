"""Inference speed on the CPU: torchvision's eager model against this project's engines, with equal outputs.

``python -m tasks.benchmarks.inference_speed [--images 2] [--repeats 3] [--detection-size 800]``

One run times, on the same images and the same weights (torchvision's architecture with random
weights, seed 0, BatchNorm statistics measured on the images; for detection frozen BatchNorm, as
torchvision builds it for its COCO weights):

- Faster R-CNN R50-FPN: torchvision's eager ``fasterrcnn_resnet50_fpn``, this project's eager
  model (the same state dict, loaded key for key), then each candidate engine of this project;
- DeepLabV3 R50 (output stride 8): the same with ``deeplabv3_resnet50``.

Candidates: channels_last, folded BatchNorm, both (the CPU engine of ``tasks/predict.py``), both
with the convolutional trunk compiled by inductor (``tasks/predict.py compile=true``), ONNX Runtime,
OpenVINO at float32 (``tasks/export.py format=openvino``), bf16 autocast and OpenVINO at bf16 where the
CPU has native bf16 (not emulated: the rows are left out elsewhere), and OpenVINO int8 (quantized as
``tasks/export.py quantize=int8`` does; for speed, calibrated on 8 other generated images). Compilation
happens in the untimed first call.
Rounds alternate the engines and each figure is the median round, so drift of the machine
affects them alike. Each engine's outputs are compared with torchvision's and the verdict printed:
for detection equal means the same count per image and, one to one, each detection paired with one
of its label whose box is within 0.01 px and score within 0.001; for segmentation the same class at
99.9% of pixels. The bf16 and int8 engines compute in fewer bits: for detection their row says how
many of each image's 20 top detections come back and how far boxes and scores moved. The last two
lines name the fastest float32 detection engine, equal or not (compilation, tens of seconds per image
size, happens before the timed rounds), and the int8 engine's speedup with the map_50 it loses on a
trained model (``--checkpoint``: the built-in main run's, exported as ``tasks/export.py quantize=int8``
does; n/a without it): ``speedup_vs_torchvision=X equal=true|false engine=NAME`` and
``int8_speedup_vs_torchvision=Y map50_drop=Z``. Before them, for each model: its GMACs an
image (torch's FLOP counter over the convolutions and matrix products) and the GMAC/s the fastest float32
engine and the int8 engine reach, against the machine's peaks: measured in the same rounds as the
engines (float32: the faster of torch's GEMM and OpenVINO's MatMul, the oneDNN kernels the OpenVINO
engines run; int8: OpenVINO's MatMul quantized as the int8 engine is) and computed from the instruction
set, the cores and the clock (``tasks.benchmarks.machine.theoretical_peak``, its assumptions printed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.ops import FrozenBatchNorm2d, box_iou

from backbones import ResNetBackbone
from backbones.base import IMAGENET_MEAN, IMAGENET_STD
from heads.deeplab import build_deeplab
from heads.faster_rcnn import build_faster_rcnn
from tasks.benchmarks.machine import (
    clock_ghz,
    cpu_description,
    gmacs_of,
    has_any_flag,
    implied_clock,
    openvino_matmul,
    theoretical_peak,
    torch_matmul,
)
from tasks.benchmarks.runs import timed_run
from tasks.core.deploy import export_model
from tasks.inference.cpu_optimisation import optimise_for_cpu
from tasks.inference.engines import OnnxRuntimeEngine, OpenVinoEngine
from tasks.inference.export import write_onnx, write_openvino
from tasks.inference.model_card import MODEL_CARD
from tasks.inference.openvino_core import openvino_core
from tasks.inference.quantize import quantize_int8
from tasks.kinds import task_kind

BOX_TOLERANCE = 0.01  # px
# float32 engines differ from torchvision's only by rounding (folded BatchNorm, another memory layout
# or kernel order): class logits move by about 1e-5, softmax scores by less; a thousandth of the score
# range still tells apart any change of the model, e.g. 0.9 from 0.06
SCORE_TOLERANCE = 1e-3
PIXEL_AGREEMENT = 0.999  # random weights leave near-ties between class logits that rounding flips
Run = Callable[[list[Tensor]], list[Tensor | dict]]
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@torch.no_grad()
def calibrate_norms(model: nn.Module, run: Callable[[], object]) -> nn.Module:
    """Random weights made to behave like trained ones: every BatchNorm's statistics measured on the
    benchmark images, so features stay unit-scale through all 50 layers instead of growing layer
    by layer."""
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration pass
        norm.train()
    run()
    return model.eval()


@torch.no_grad()
def spread_scores(classifier: nn.Linear) -> None:
    """Class scores like a trained detector's: most proposals background, some tens of detections per
    image above the 0.05 threshold (random init scores every class about 1/91, so none would pass)."""
    classifier.weight.normal_(0, 0.075, generator=torch.Generator().manual_seed(0))
    classifier.bias.zero_()
    classifier.bias[0] = 12.0  # background logit


def images_of(count: int, height: int, width: int, seed: int = 1) -> list[Tensor]:
    """Textured images with a few flat shapes, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        image = torch.nn.functional.interpolate(
            torch.rand(1, 3, height // 16, width // 16, generator=generator),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )[0]
        for _ in range(6):
            y, x = (int(v) for v in torch.randint(0, min(height, width) // 2, (2,), generator=generator))
            size = int(torch.randint(32, min(height, width) // 2, (1,), generator=generator))
            image[:, y : y + size, x : x + size] = torch.rand(3, 1, 1, generator=generator)
        images.append(image)
    return images


# -- models ------------------------------------------------------------------------------------
def detection_models(size: int, images: list[Tensor]) -> tuple[nn.Module, nn.Module]:
    """torchvision's fasterrcnn_resnet50_fpn as built for its COCO weights (frozen BatchNorm), and
    ours with its state dict."""
    torch.manual_seed(0)
    sizes = dict(min_size=size, max_size=round(size * 1333 / 800))
    calibrated = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **sizes).eval()
    batch = calibrated.transform(images)[0].tensors
    calibrate_norms(calibrated, lambda: calibrated.backbone.body(batch))
    spread_scores(calibrated.roi_heads.box_predictor.cls_score)
    body = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
    theirs = TorchvisionFasterRCNN(body, num_classes=91, **sizes)
    theirs.load_state_dict(calibrated.state_dict())
    ours = build_faster_rcnn(ResNetBackbone("resnet50", norm="frozen_bn"), num_classes=90, **sizes)
    ours.load_state_dict(theirs.state_dict())
    return theirs.eval(), ours.eval()


def segmentation_models(images: list[Tensor]) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    theirs = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    batch = torch.stack(images)
    normalised = (torch.cat([batch, batch.flip(-1)]) - MEAN) / STD  # ASPP's pooled branch needs 2 images or more
    calibrate_norms(theirs, lambda: theirs(normalised))
    ours = build_deeplab(ResNetBackbone("resnet50", norm="bn"), num_classes=21, output_stride=8)
    ours.load_state_dict(theirs.state_dict())
    return theirs.eval(), ours.eval()


# -- engines -----------------------------------------------------------------------------------
def eager_detector(model: nn.Module) -> Run:
    return lambda images: model(images)


def eager_segmenter(model: nn.Module, normalise: bool) -> Run:
    def run(images: list[Tensor]) -> list[Tensor]:
        batch = torch.stack(images)
        return list(model((batch - MEAN) / STD if normalise else batch)["out"])  # torchvision's does not normalise

    return run


OPENVINO_BF16, OPENVINO_INT8 = "openvino bf16", "openvino int8"
# engines that compute in fewer bits: never the fp32 headline; compared with torchvision's outputs by agreement
REDUCED_PRECISION = ("bf16 autocast", OPENVINO_BF16, OPENVINO_INT8)
COMPILED = "folded_bn+channels_last+torch.compile"  # optimise_for_cpu(compile=True): predict compile=true
EAGER_ENGINE = "folded_bn+channels_last"  # optimise_for_cpu(): predict's CPU engine


def candidate_models(ours: nn.Module) -> dict[str, nn.Module]:
    variants = {
        "channels_last": dict(fold=False),
        "folded_bn": dict(channels_last=False),
        EAGER_ENGINE: {},
    }
    return {name: optimise_for_cpu(copy.deepcopy(ours), **options) for name, options in variants.items()}


def exported_engine(
    model: nn.Module, task: str, folder: Path, fmt: str, precision: str = "fp32", calibration: Sequence[Tensor] = ()
) -> Run:
    """The model exported as ``predict.py`` runs it: ONNX in ONNX Runtime, or OpenVINO's IR in OpenVINO at
    ``precision`` (fp32, bf16; int8: quantized as ``export.py quantize=int8`` does, calibrated on the
    ``calibration`` images: a speed figure, its accuracy is measured on a trained model, ``--checkpoint``)."""
    path = folder / f"{task}.{'onnx' if fmt == 'onnx' else 'xml'}"
    graph = task_kind(task).graph(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        (write_onnx if fmt == "onnx" else write_openvino)(graph, task, path, opset=17)
    if fmt == "onnx":
        engine = OnnxRuntimeEngine(path, task)
    elif precision == "int8":
        semantic = task == "segmentation"
        calibration = [image[None].numpy() if semantic else image.numpy() for image in calibration]
        engine = OpenVinoEngine(quantize_int8(openvino_core().read_model(str(path)), calibration), task)
    else:
        engine = OpenVinoEngine(path, task, precision=precision)
    if task == "segmentation":
        return lambda images: [found["logits"] for found in engine(images)]
    return lambda images: engine(images)


CALIBRATION_IMAGES = 8  # of the int8 engine: other generated images than the timed ones, of their size


def bf16_available() -> bool:
    return has_any_flag("avx512_bf16", "amx_bf16")


def int8_units() -> bool:
    """The int8 dot-product units the int8 target is set for: AVX-512 VNNI, AVX-VNNI or AMX int8."""
    return has_any_flag("avx512_vnni", "avx_vnni", "amx_int8")


def with_bf16(run: Run) -> Run:
    def autocast_run(images: list[Tensor]) -> list:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run(images)

    return autocast_run


# -- comparison --------------------------------------------------------------------------------
def match_detections(expected: dict, got: dict) -> tuple[float, float]:
    """Pair each expected detection with one detection of ``got`` of its label, one to one, nearest
    first (box distance in px, L-inf, and score difference, each in units of its tolerance); return
    the largest box distance and score difference over the pairs (inf when a detection finds none)."""
    if len(expected["boxes"]) != len(got["boxes"]):
        return float("inf"), float("inf")
    boxes = torch.cdist(expected["boxes"].double(), got["boxes"].double(), p=float("inf"))
    scores = (expected["scores"].double()[:, None] - got["scores"].double()[None, :]).abs()
    cost = torch.maximum(boxes / BOX_TOLERANCE, scores / SCORE_TOLERANCE)
    cost[expected["labels"][:, None] != got["labels"][None, :]] = float("inf")
    worst_box, worst_score = 0.0, 0.0
    taken_rows, taken_columns = set(), set()
    for flat in torch.argsort(cost.flatten()).tolist():
        i, j = divmod(flat, cost.shape[1])
        if i in taken_rows or j in taken_columns:
            continue
        taken_rows.add(i)
        taken_columns.add(j)
        if not torch.isfinite(cost[i, j]):
            return float("inf"), float("inf")
        worst_box, worst_score = max(worst_box, float(boxes[i, j])), max(worst_score, float(scores[i, j]))
    return worst_box, worst_score


def detections_equal(expected: list[dict], got: list[dict]) -> tuple[bool, str]:
    """Same count per image, and one to one, every detection with one of its label whose box is
    within BOX_TOLERANCE and score within SCORE_TOLERANCE."""
    counts = "+".join(str(len(e["boxes"])) for e in expected)
    got_counts = "+".join(str(len(g["boxes"])) for g in got)
    if counts != got_counts:
        return False, f"{got_counts} detections instead of {counts}"
    matches = [match_detections(e, g) for e, g in zip(expected, got, strict=True)]
    box, score = max(m[0] for m in matches), max(m[1] for m in matches)
    if box == float("inf"):
        return False, f"{counts} detections, some without a detection of their label to pair with"
    same = box <= BOX_TOLERANCE and score <= SCORE_TOLERANCE
    return same, f"{counts} detections, boxes within {box:.2g} px, scores within {score:.2g}"


def detections_agree(expected: list[dict], got: list[dict], top: int = 20) -> str:
    """For engines that compute in fewer bits: of each image's ``top`` detections by score, how many come
    back (a detection of the label at IoU >= 0.5), and how far their boxes and scores moved."""
    found, shifts, score_moves, total = 0, [], [], 0
    counts = "+".join(str(len(g["boxes"])) for g in got) + " detections (torchvision: "
    counts += "+".join(str(len(e["boxes"])) for e in expected) + "); "
    for e, g in zip(expected, got, strict=True):
        order = torch.argsort(e["scores"], descending=True)[:top]
        total += len(order)
        if not len(order) or not len(g["boxes"]):
            continue
        iou = box_iou(e["boxes"][order], g["boxes"])
        iou[e["labels"][order][:, None] != g["labels"][None, :]] = 0
        best, match = iou.max(1)
        kept = best >= 0.5
        found += int(kept.sum())
        shifts += (e["boxes"][order][kept] - g["boxes"][match[kept]]).abs().amax(1).tolist()
        score_moves += (e["scores"][order][kept] - g["scores"][match[kept]]).abs().tolist()
    if not shifts:
        return f"{counts}top detections found again: 0 of {total}"
    return (
        f"{counts}top detections found again: {found} of {total}, boxes within {max(shifts):.2g} px "
        f"(median {statistics.median(shifts):.2g}), scores within {max(score_moves):.2g}"
    )


def logits_agree(expected: list[Tensor], got: list[Tensor]) -> str:
    """For engines that compute in fewer bits: how far the class logits moved against their spread (the
    argmax of random weights flips at near-ties, so the class agreement alone says little)."""
    moved = max(float((e - g).abs().max()) for e, g in zip(expected, got, strict=True))
    spread = statistics.fmean(float(e.std()) for e in expected)
    agreement = masks_equal(expected, got)[1]
    return f"logits within {moved:.2g} (their std {spread:.2g}); {agreement}"


def masks_equal(expected: list[Tensor], got: list[Tensor]) -> tuple[bool, str]:
    agreement = min(float((e.argmax(0) == g.argmax(0)).float().mean()) for e, g in zip(expected, got, strict=True))
    return agreement >= PIXEL_AGREEMENT, f"same class at {100 * agreement:.3f}% of pixels"


# -- timing ------------------------------------------------------------------------------------
@torch.inference_mode()
def time_engines(engines: dict[str, Run], images: list[Tensor], repeats: int) -> dict[str, float]:
    """Median seconds per call of each engine, over ``repeats`` rounds after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for round_ in range(repeats + 1):
        for name, run in engines.items():
            start = time.perf_counter()
            run(images)
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.inference_mode()
def compare(engines: dict[str, Run], images: list[Tensor], equal: Callable) -> dict[str, tuple[bool, str]]:
    """Each engine's outputs against torchvision's. This is each engine's first call: the compiled
    engine compiles here, and the time it takes is printed."""
    expected = engines["torchvision eager"](images)
    verdicts = {}
    for name, run in engines.items():
        start = time.perf_counter()
        got = run(images)
        verdicts[name] = equal(expected, got)
        if name in REDUCED_PRECISION:  # say how close
            close = detections_agree if equal is detections_equal else logits_agree
            verdicts[name] = (verdicts[name][0], close(expected, got))
        if name == COMPILED:
            print(f"{COMPILED}: first call {time.perf_counter() - start:.1f} s ({len(images)} images, compiling)")
    return verdicts


def report(
    title: str, seconds: dict[str, float], equality: dict[str, tuple[bool, str]], count: int
) -> tuple[str, float]:
    reference = seconds["torchvision eager"]
    print(f"\n{title}")
    print(f"{'engine':<38} {'s/image':>8} {'speedup':>8}  equal  outputs")
    for name, value in seconds.items():
        same, detail = equality[name]
        print(f"{name:<38} {value / count:8.3f} {reference / value:7.2f}x  {str(same).lower():<5}  {detail}")
    fastest, speedup, same = headline(seconds, equality)
    print(f"fastest engine: {fastest}, {speedup:.2f}x torchvision eager, outputs equal: {str(same).lower()}")
    if EAGER_ENGINE in seconds:
        print(f"default engine ({EAGER_ENGINE}): {reference / seconds[EAGER_ENGINE]:.2f}x, outputs equal: "
              f"{str(equality[EAGER_ENGINE][0]).lower()}")  # fmt: skip
    return fastest, speedup


def headline(seconds: dict[str, float], equality: dict[str, tuple[bool, str]]) -> tuple[str, float, bool]:
    """The fastest float32 engine other than the reference, its speedup and whether its outputs are equal
    (false when they differ: the fastest is never chosen among the equal ones only)."""
    candidates = [name for name in seconds if name != "torchvision eager" and name not in REDUCED_PRECISION]
    if not candidates:
        raise ValueError("no engine besides torchvision's to compare")
    fastest = min(candidates, key=seconds.get)
    return fastest, seconds["torchvision eager"] / seconds[fastest], equality[fastest][0]


def engines_for(
    task: str, theirs: nn.Module, ours: nn.Module, folder: Path, compile_: bool, calibration: list[Tensor]
) -> dict[str, Run]:
    if task == "detection":
        wrap, reference = eager_detector, eager_detector(theirs)
    else:  # torchvision's DeepLab takes normalised images, ours normalises inside
        wrap, reference = (lambda model: eager_segmenter(model, normalise=False)), eager_segmenter(theirs, True)
    engines = {"torchvision eager": reference, "this project eager": wrap(ours)}
    engines |= {name: wrap(model) for name, model in candidate_models(ours).items()}
    engines["onnxruntime"] = exported_engine(ours, task, folder, "onnx")
    engines["openvino fp32"] = exported_engine(ours, task, folder, "openvino")
    if compile_:
        engines[COMPILED] = wrap(optimise_for_cpu(copy.deepcopy(ours), compile=True))
    if bf16_available():  # else n/a: never emulated
        engines["bf16 autocast"] = with_bf16(wrap(ours))
        engines[OPENVINO_BF16] = exported_engine(ours, task, folder, "openvino", "bf16")
    engines[OPENVINO_INT8] = exported_engine(ours, task, folder, "openvino", "int8", calibration)
    return engines


PROBE_SIZE = 2048  # the probes' matrices: 2048 x 2048, 8.6 GMACs a product
PROBES = {"torch f32 GEMM": "f32", "OpenVINO f32 MatMul": "f32", "OpenVINO int8 MatMul": "int8"}


def peak_probes() -> dict[str, Callable[[], object]]:
    """The matrix products timed in the same rounds as the engines (``PROBES``)."""
    return {
        "torch f32 GEMM": torch_matmul(PROBE_SIZE),
        "OpenVINO f32 MatMul": openvino_matmul("f32", PROBE_SIZE),
        "OpenVINO int8 MatMul": openvino_matmul("int8", PROBE_SIZE),
    }


@dataclass
class Peaks:
    """The machine's matrix-product peaks: measured in the same rounds as the engines, so that drift of the
    machine's speed during the run affects them alike (GMAC/s of the median round of each probe; float32:
    the faster of torch's GEMM and OpenVINO's MatMul, int8: OpenVINO's MatMul quantized as the int8 engine
    is), and computed from the instruction set, cores and clock (``theoretical_peak``) at the reported
    clock, or at the clock the measured float32 peak implies where that is higher (a virtual machine
    reports its nominal clock)."""

    measured: dict[str, float]
    theoretical: dict[str, tuple[float | None, str]]

    @classmethod
    def from_seconds(cls, seconds: dict[str, float]) -> Peaks:
        measured = {name: PROBE_SIZE**3 / seconds[name] / 1e9 for name in PROBES}
        ghz, source = clock_ghz()
        implied = implied_clock(max(value for name, value in measured.items() if PROBES[name] == "f32"))
        if implied is not None and implied > ghz:
            source = f"implied by the measured float32 peak; {source} says {ghz:.2f}"
            ghz = implied
        return cls(measured, {precision: theoretical_peak(precision, (ghz, source)) for precision in ("f32", "int8")})

    def peak(self, precision: str) -> float:
        return max(value for name, value in self.measured.items() if PROBES[name] == precision)

    def print(self) -> None:
        figures = ", ".join(f"{name} {value:.1f}" for name, value in self.measured.items())
        print(f"matrix-product peaks in the same rounds ({PROBE_SIZE}x{PROBE_SIZE}): {figures} GMAC/s")
        for precision, (value, how) in self.theoretical.items():
            figure = "n/a" if value is None else f"{value:.1f} GMAC/s"
            print(f"{precision} theoretical peak: {figure} = {how}")

    def distance(self, precision: str, achieved: float) -> str:
        """``achieved`` GMAC/s against the measured and the theoretical peak of ``precision``."""
        theoretical = self.theoretical[precision][0]
        against = f"{100 * achieved / self.peak(precision):.0f}% of the measured {precision} peak"
        if theoretical:
            against += f", {100 * achieved / theoretical:.0f}% of the theoretical"
        return f"{achieved:.1f} GMAC/s, {against}"


def run_task(
    task: str,
    images: list[Tensor],
    repeats: int,
    folder: Path,
    compile_: bool,
    probes: dict[str, Callable[[], object]],
    detection_size: int = 800,
) -> tuple[str, float, bool, float]:
    """Print the table of one model; return the fastest float32 engine, its speedup, whether it is equal,
    and the int8 engine's speedup."""
    if task == "detection":
        theirs, ours = detection_models(detection_size, images)
    else:
        theirs, ours = segmentation_models(images)
    calibration = images_of(CALIBRATION_IMAGES, *images[0].shape[-2:], seed=2)
    engines = engines_for(task, theirs, ours, folder, compile_, calibration)
    equality = compare(engines, images, detections_equal if task == "detection" else masks_equal)
    seconds = time_engines(
        {**engines, **{name: lambda _, p=probe: p() for name, probe in probes.items()}}, images, repeats
    )
    peaks = Peaks.from_seconds(seconds)
    seconds = {name: value for name, value in seconds.items() if name in engines}
    title = f"Faster R-CNN R50-FPN at {detection_size} px" if task == "detection" else "DeepLabV3 R50, output stride 8"
    size = "x".join(map(str, images[0].shape[-2:]))
    fastest, speedup = report(f"{title}: {len(images)} images of {size}", seconds, equality, len(images))
    gmacs = gmacs_of(engines["torchvision eager"], images[:1])
    achieved = gmacs / (seconds[fastest] / len(images))
    peaks.print()
    print(f"{gmacs:.1f} GMACs an image (convolutions and matrix products)")
    print(f"{fastest}: {peaks.distance('f32', achieved)}")
    int8 = gmacs / (seconds[OPENVINO_INT8] / len(images))
    print(f"{OPENVINO_INT8}: the same multiply-accumulates, {peaks.distance('int8', int8)}")
    return fastest, speedup, equality[fastest][0], seconds["torchvision eager"] / seconds[OPENVINO_INT8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int, default=480, help="image height (width: 4/3 of it)")
    parser.add_argument("--detection-size", type=int, default=800, help="the detector's min_size")
    parser.add_argument("--segmentation-height", type=int, default=600, help="DeepLab input height (width 4/3)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--skip-segmentation", action="store_true")
    parser.add_argument(
        "--checkpoint",
        help="a detection checkpoint trained on the built-in shapes (python tasks/train.py task=detection): "
        "exported to int8 as tasks/export.py quantize=int8 does, its map_50 drop is the last line's",
    )
    parser.add_argument("--calibration-images", type=int, default=300, help="of --checkpoint's training split")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {bf16_available()}")
    print(f"machine: {cpu_description()}")
    probes = peak_probes()
    with tempfile.TemporaryDirectory() as folder:
        # an empty compilation cache: the first compiled call compiles, as a user's first run does
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder) / "inductor")
        if not args.skip_segmentation:
            h = args.segmentation_height
            segmentation = images_of(args.images, h, h * 4 // 3)
            run_task("segmentation", segmentation, args.repeats, Path(folder), args.compile, probes)
        h = args.height
        detection = images_of(args.images, h, h * 4 // 3)
        engine, speedup, equal, int8_speedup = run_task(
            "detection", detection, args.repeats, Path(folder), args.compile, probes, args.detection_size
        )
        drop = int8_map50_drop(args.checkpoint, args.calibration_images, Path(folder)) if args.checkpoint else None
    if not int8_units():
        print("this CPU has no int8 dot-product units (VNNI, AMX): the int8 target does not apply here")
    print(f"speedup_vs_torchvision={speedup:.2f} equal={str(equal).lower()} engine={engine}")
    print(f"int8_speedup_vs_torchvision={int8_speedup:.2f} map50_drop={'n/a' if drop is None else f'{drop:.4f}'}")


def int8_map50_drop(checkpoint: str, calibration_images: int, folder: Path) -> float:
    """map_50 of the float32 model minus that of its int8 export, both scored on the validation split by
    ``tasks/export.py ... quantize=int8`` (which prints them and records them in ``model.json``)."""
    overrides = ["task=detection", f"ckpt_path={checkpoint}", "format=openvino", "quantize=int8"]
    output = folder / "int8_export"
    _, seconds = timed_run([*overrides, f"calibration_images={calibration_images}"], output, export_model, "export")
    validation = json.loads((output / MODEL_CARD).read_text())["quantization"]["validation"]
    fp32, int8 = validation["fp32"]["map_50"], validation["int8"]["map_50"]
    print(f"\nint8 export of {checkpoint} ({calibration_images} calibration images, {seconds:.0f} s, both scored):")
    print(f"validation map_50 fp32 {fp32:.4f}, int8 {int8:.4f}")
    return fp32 - int8


if __name__ == "__main__":
    main()
