"""What the intra-op thread count does to a training step, on an idle machine and beside other work.

``python -m tasks.benchmarks.threads [--steps 8] [--busy 1]``: a ResNet18 classifier's training step
(8 images at 128 px, forward and backward) timed with 1, the ``auto`` count (``runtime.threads=auto``)
and twice the usable CPUs of threads, first alone, then while ``--busy`` other processes each keep one
core busy (another job on a shared machine, or a loader worker). Prints the median seconds a step and
each count's ratio to the ``auto`` one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import torch
import torchvision

from tasks.benchmarks.machine import cpu_description
from tasks.common.threads import intra_op_threads, usable_cpus


def _spin(stop: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    torch.set_num_threads(1)
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def step_seconds(threads: int, steps: int) -> float:
    """Median seconds of a ResNet18 training step with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = torch.rand(8, 3, 128, 128), torch.randint(0, 4, (8,))
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def measure(counts: list[int], steps: int, busy: int) -> dict[int, float]:
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    for process in spinners:
        process.start()
    try:
        return {count: step_seconds(count, steps) for count in counts}
    finally:
        stop.set()
        for process in spinners:
            process.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--busy", type=int, default=1, help="processes keeping a core busy in the second part")
    args = parser.parse_args()
    print(f"machine: {cpu_description()}")
    cpus = usable_cpus()
    auto, why = intra_op_threads("auto", cpus=cpus, environment={})
    print(f"auto: {auto} threads ({why})")
    counts = sorted({1, auto, 2 * cpus})
    for busy in (0, args.busy):
        seconds = measure(counts, args.steps, busy)
        for count in counts:
            ratio = seconds[count] / seconds[auto]
            print(f"busy={busy} threads={count}: {seconds[count]:.3f} s/step ({ratio:.2f}x the auto count's)")


if __name__ == "__main__":
    main()
