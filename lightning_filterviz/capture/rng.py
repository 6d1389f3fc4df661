"""Leaving every random generator a user's code can draw from exactly as it was.

A dataset's transforms draw from torch's, Python's and NumPy's global generators; a
model's forward may draw from torch's (CPU and CUDA). Whatever the monitor runs of the
user's code, it runs inside :func:`untouched_random_state`, so that a run with the monitor
draws the same numbers as a run without it.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["initialized_cuda_devices", "untouched_random_state"]


@contextlib.contextmanager
def untouched_random_state(cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Restore torch's CPU generator (and those of ``cuda_devices``), Python's ``random`` and
    NumPy's global generator afterwards, also when the block raises."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=list(cuda_devices)):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def initialized_cuda_devices() -> list[int]:
    """Every CUDA device's index once CUDA is in use; none before (nothing there to restore)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
