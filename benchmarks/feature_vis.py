"""What feature visualization of a layer's filters costs (the budget: 2 minutes on 2 CPU cores).

    python benchmarks/feature_vis.py                  # 64 filters of layer1.0.conv1, 256 steps, 128 px
    python benchmarks/feature_vis.py --quick          # 32 steps, the time extrapolated to --steps
    python benchmarks/feature_vis.py --all-layer1     # every conv of layer1, each through its BN
    python benchmarks/feature_vis.py --one-batch      # the CPU's chunking off: 64 images at once
    python benchmarks/feature_vis.py --full-forward   # each step also through the conv and its BN
    python benchmarks/feature_vis.py --threads 1      # one thread: how well a step uses the cores
    python benchmarks/feature_vis.py --device cuda

Builds torchvision's ResNet-18 with random weights (nothing is downloaded), a probe of 8
random images normalized with ImageNet's mean and standard deviation, and runs
:func:`~lightning_filterviz.capture.feature_visualization.visualize_filters` on the chosen
conv's tap (the BatchNorm right after it: ``layer1.0.bn1`` for ``layer1.0.conv1``), with the
conv given, so each step's forward stops at the conv's input. Prints the
torch version, the device and the number of threads, then per layer the wall time, the time
per step, the time for ``--steps`` steps (measured, or extrapolated with ``--quick``), and
whether that is within the budget, and the process's CPU time per step. The machine's load
average before the run is printed first: on a shared machine, a load near the core count
means other work holds cores and the wall times come out too long.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]  # runs from a checkout, installed or not

from lightning_filterviz.capture import feature_visualization  # noqa: E402
from lightning_filterviz.capture.feature_visualization import visualize_filters  # noqa: E402

BUDGET_S = 120.0
LAYER1_CONVS = ("layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=256, help="optimization steps (default 256)")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    parser.add_argument("--filters", type=int, default=64, help="filters visualized, as one batch (default 64)")
    parser.add_argument("--layer", default="layer1.0.conv1", help="the conv whose filters are visualized")
    parser.add_argument("--all-layer1", action="store_true", help="time every conv of layer1")
    parser.add_argument("--quick", action="store_true", help="run 32 steps and extrapolate to --steps")
    parser.add_argument("--one-batch", action="store_true", help="no chunks on the CPU: for comparison")
    parser.add_argument(
        "--full-forward",
        action="store_true",
        help="every step runs the conv and its BN too (no `conv=`, so no stop at the conv's input): for comparison",
    )
    parser.add_argument(
        "--threads", type=int, help="torch's intra-op threads (default: torch's own choice, one per core)"
    )
    parser.add_argument("--save", type=Path, help="save the images of the (last) layer as a PNG grid here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import torchvision

    device = torch.device(args.device)
    if args.one_batch:
        feature_visualization.CPU_CHUNK_PIXELS = 2**62
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"device {_device_name(device)}, {torch.get_num_threads()} threads, load before the run {_load()}"
    )
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    probe = (torch.rand(8, 3, args.size, args.size, device=device) - mean) / std
    run_steps = min(32, args.steps) if args.quick else args.steps
    layers = LAYER1_CONVS if args.all_layer1 else (args.layer,)
    print(
        f"\n{args.filters} filters, {args.size} px, {run_steps} steps run" + (f" of {args.steps}" if args.quick else "")
    )
    print(
        f"{'layer':<16} {'tap':<16} {'wall (s)':>9} {'per step (ms)':>14} {f'{args.steps} steps (s)':>15}  within {BUDGET_S:.0f} s"
    )
    for name in layers:
        tap = _tap_of(model, name)
        conv = None if args.full_forward else model.get_submodule(name)
        channels = list(range(min(args.filters, _out_channels(model, name))))
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        images = visualize_filters(model, tap, channels, probe, steps=run_steps, seed=0, conv=conv)
        wall = time.perf_counter() - start  # the result is on the host: the device's work is done
        cpu_per_step = (time.process_time() - cpu_start) / run_steps
        per_step = wall / run_steps
        full = per_step * args.steps
        verdict = "yes" if full <= BUDGET_S else "NO"
        print(
            f"{name:<16} {_name_of(model, tap):<16} {wall:>9.1f} {per_step * 1e3:>14.0f} {full:>15.1f}  {verdict:<6}"
            f"  cpu {cpu_per_step * 1e3:.0f} ms/step"
        )
    if args.save is not None:
        _save_grid(images, args.save)
        print(f"\nsaved {args.save}")


def _tap_of(model: nn.Module, conv_name: str) -> nn.Module:
    """torchvision's ResNet: ``...convN`` is followed by ``...bnN`` (the ReLU's input)."""
    modules = dict(model.named_modules())
    if conv_name not in modules:
        raise SystemExit(f"no module {conv_name!r} in ResNet-18")
    head, _, last = conv_name.rpartition(".")
    bn_name = f"{head}.{last.replace('conv', 'bn')}" if head else last.replace("conv", "bn")
    return modules.get(bn_name, modules[conv_name])


def _out_channels(model: nn.Module, conv_name: str) -> int:
    return int(dict(model.named_modules())[conv_name].out_channels)


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _load() -> str:
    """The 1-minute load average against the core count, where the system tells it."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _save_grid(images: object, path: Path) -> None:
    import torchvision

    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    torchvision.utils.save_image(tensor.float() / 255, str(path), nrow=8, padding=2)


if __name__ == "__main__":
    main()
