"""The input gradient of a first conv (a "stem", reading RGB images) with the CPU's two conv
kernels, oneDNN's and ATen's own, side by side: why feature visualization times both once and
keeps the faster (``_StemGradient`` in ``lightning_filterviz.capture.feature_visualization``).

    python benchmarks/stem_gradient.py

For each stem, a batch shaped as one chunk of feature visualization's CPU loop (8 images at
128 px, 32 at 64 px), channels-last as there, and a random gradient at the stem's output:
the median of ``--repeats`` timed calls asking for the input gradient only, of
``torch.ops.aten.convolution_backward`` (autograd's choice: oneDNN) and of ATen's own im2col
kernel ``_slow_conv2d_backward``, and their ratio. Prints the torch version,
the CPU capability torch dispatches for and the load average first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

# name: (input shape, weight shape, stride, padding)
STEMS = {
    "ResNet-18 conv1, 7x7 stride 2, 8 x 128 px": ((8, 3, 128, 128), (64, 3, 7, 7), 2, 3),
    "VGG-like, 3x3, 64 filters, 8 x 128 px": ((8, 3, 128, 128), (64, 3, 3, 3), 1, 1),
    "the example's small CNN, 5x5, 16 filters, 32 x 64 px": ((32, 3, 64, 64), (16, 3, 5, 5), 1, 2),
    "CIFAR-like, 3x3, 64 filters, 64 x 32 px": ((64, 3, 32, 32), (64, 3, 3, 3), 1, 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per kernel (default 20)")
    args = parser.parse_args()
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads, load before the run {load} on {os.cpu_count()} cores\n"
    )
    print(f"{'stem':<56} {'oneDNN (ms)':>12} {'ATen (ms)':>10} {'oneDNN / ATen':>14}")
    for name, (input_shape, weight_shape, stride, padding) in STEMS.items():
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(input_shape, generator=generator).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(weight_shape, generator=generator)
        output = torch.nn.functional.conv2d(images, weight, None, stride, padding)
        gradient = torch.randn(output.shape, generator=generator).contiguous(memory_format=torch.channels_last)
        onednn = _median_ms(images, weight, gradient, stride, padding, False, args.repeats)
        aten = _median_ms(images, weight, gradient, stride, padding, True, args.repeats)
        print(f"{name:<56} {onednn:>12.2f} {aten:>10.2f} {onednn / aten:>14.2f}")


def _median_ms(
    images: torch.Tensor, weight: torch.Tensor, gradient: torch.Tensor, stride: int, padding: int, use_aten: bool,
    repeats: int,
) -> float:
    """The median time of one input-gradient call, in ms: ATen's im2col kernel called by name
    (as feature visualization calls it), or ``convolution_backward``, autograd's choice (oneDNN)."""
    only_the_input = [True, False, False]
    times = []
    for _ in range(repeats + 1):  # the first call allocates and plans: not counted
        start = time.perf_counter()
        if use_aten:
            torch.ops.aten._slow_conv2d_backward.output_mask(
                gradient, images, weight, tuple(weight.shape[2:]), (stride, stride), (padding, padding), only_the_input
            )
        else:
            torch.ops.aten.convolution_backward(
                gradient, images, weight, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1, only_the_input
            )
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


if __name__ == "__main__":
    main()
