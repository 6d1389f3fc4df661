"""What the health signals (effective rank, srank, CKA to the first snapshot; gradient dormancy) cost a snapshot.

    python benchmarks/health.py            # under a minute on 2 CPU cores
    python benchmarks/health.py --quick    # fewer repetitions

For the example's CNN (probe 8 x 3 x 64 x 64) and torchvision's ResNet-18 (probe 8 at 64 and
at 224 pixels), with each conv's real activation (or, without one, its output) taken by a
probe pass of the monitor, prints side by side:

  a. the training thread: the probe's plain eval forward, and the feature gathers a
     snapshot adds (one per layer, timed on the same activations);
  b. the writer thread: the signals of every layer from the gathered features, per snapshot
     after the first (float64 singular values and CKA, on the host);
  c. gradient dormancy: on the training thread, reading every conv's per-filter gradient
     magnitudes (one reduction per conv, on a step followed by a snapshot) beside that
     training step's forward and backward on a batch of 8; on the writer thread, the scores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "examples")]  # runs from a checkout, installed or not

from cnn_example import small_cnn  # noqa: E402

from lightning_filterviz import FilterVisualizer, Sink  # noqa: E402
from lightning_filterviz.capture.activations import feature_sample  # noqa: E402
from lightning_filterviz.capture.conv_layers import select_conv_layers  # noqa: E402
from lightning_filterviz.capture.gradients import gradient_magnitudes  # noqa: E402
from lightning_filterviz.core.records import CapturedSnapshot  # noqa: E402
from lightning_filterviz.state.health import HealthTracker  # noqa: E402
from lightning_filterviz.state.stats import grad_dormant_verdict  # noqa: E402


class _Nowhere(Sink):
    def add_scalars(self, values: dict, step: int) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    import torchvision

    repeats = 5 if args.quick else 20
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    torch.manual_seed(0)
    models = [
        ("example CNN, 64 px", small_cnn(8), 64),
        ("ResNet-18, 64 px", torchvision.models.resnet18(num_classes=8), 64),
        ("ResNet-18, 224 px", torchvision.models.resnet18(num_classes=8), 224),
    ]
    print("\n                       forward   gathers  (training thread, ms)   signals (writer thread, ms)")
    gradient_rows = []
    for label, model, size in models:
        model.eval()
        probe = torch.rand(8, 3, size, size)
        captured = captured_snapshot(model, probe)
        activations = layer_activations(model, probe)
        forward = best_of(repeats, lambda: _forward(model, probe))
        gathers = best_of(repeats, lambda: [feature_sample(values) for values in activations])
        tracker = HealthTracker()
        tracker.update(captured)  # the first snapshot keeps its features
        signals = best_of(repeats, lambda: tracker.update(captured))
        print(f"   {label:<18} {forward * 1e3:8.1f}  {gathers * 1e3:8.2f}  ({gathers / forward:.1%} of the forward)"
              f"   {signals * 1e3:8.1f}")
        gradient_rows.append((label, *gradient_costs(model, probe, repeats)))
    print("\n  gradient dormancy     step      reads   (training thread, ms)   scores (writer thread, ms)")
    for label, step, reads, scores in gradient_rows:
        print(f"   {label:<18} {step * 1e3:8.1f}  {reads * 1e3:8.2f}  ({reads / step:.1%} of the step)"
              f"        {scores * 1e3:8.2f}")


def gradient_costs(model: nn.Module, batch: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """A training step's forward and backward, the reads of its convs' gradient magnitudes
    (as the monitor does them at ``on_before_optimizer_step``), and the scores of them all."""
    model.train()
    layers = select_conv_layers(model)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(batch).sum().backward()

    training_step = best_of(repeats, step)
    reads = best_of(repeats, lambda: gradient_magnitudes(layers))
    magnitudes = gradient_magnitudes(layers)
    scores = best_of(repeats, lambda: [grad_dormant_verdict(values, 0.0) for values in magnitudes.values()])
    model.eval()
    return training_step, reads, scores


def captured_snapshot(model: nn.Module, probe: torch.Tensor) -> CapturedSnapshot:
    """One snapshot's capture by the monitor itself, its layers' features included."""
    visualizer = FilterVisualizer(_Nowhere())
    snapshot = visualizer.snapshot(model, probe, 0).result()
    visualizer.close()
    return CapturedSnapshot(step=0, layers=snapshot.layers)


def layer_activations(model: nn.Module, probe: torch.Tensor) -> list[torch.Tensor]:
    """Each conv's output on the probe (the gathers' cost depends on the shape alone)."""
    outputs: list[torch.Tensor] = []
    handles = [
        module.register_forward_hook(lambda module, args, output: outputs.append(output))
        for module in model.modules()
        if isinstance(module, nn.Conv2d)
    ]
    _forward(model, probe)
    for handle in handles:
        handle.remove()
    return outputs


def _forward(model: nn.Module, probe: torch.Tensor) -> None:
    with torch.no_grad():
        model(probe)


def best_of(repeats: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


if __name__ == "__main__":
    main()
