"""The package's whole output, held to a reference written before its reorganization.

``tests/data/reference_run.npz`` was written by the code before the package's
reorganization into stage subpackages, from the fixed run in ``tests/reference_run.py``
(public names only). This test holds every later version to the same images, scalars,
texts, history arrays and monitor attributes: pixel for pixel, and floats to float32 rounding
(see ``_difference``).
Regenerate it only on a deliberate change of output, with ``python tests/make_reference.py``,
and say in the change why the output moved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reference_run import run_reference

REFERENCE = Path(__file__).resolve().parent / "data" / "reference_run.npz"
REGENERATE = "If the change of output is deliberate, regenerate with `python tests/make_reference.py`."


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def current(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    # One run for all the tests below: it is the expensive part.
    return run_reference(tmp_path_factory.mktemp("reference_run"))


def test_the_run_writes_exactly_the_reference_outputs(
    reference: dict[str, np.ndarray], current: dict[str, np.ndarray]
) -> None:
    missing = sorted(set(reference) - set(current))
    extra = sorted(set(current) - set(reference))
    assert not missing and not extra, (
        f"{len(missing)} output(s) no longer written: {missing}\n"
        f"{len(extra)} output(s) not in the reference: {extra}\n{REGENERATE}"
    )


@pytest.mark.parametrize("kind", ["image", "scalar", "scalar_steps", "text", "history", "monitor"])
def test_every_output_equals_the_reference(
    reference: dict[str, np.ndarray], current: dict[str, np.ndarray], kind: str
) -> None:
    keys = sorted(key for key in set(reference) & set(current) if key.split("/", 1)[0] == kind)
    assert keys, f"the reference has no {kind} output"
    differing = [f"{key}: {problem}" for key in keys if (problem := _difference(reference[key], current[key]))]
    assert not differing, f"{len(differing)} of {len(keys)} {kind} outputs differ:\n" + "\n".join(differing) + (
        f"\n{REGENERATE}"
    )


def _difference(expected: np.ndarray, actual: np.ndarray) -> str:
    """Why ``actual`` is not ``expected`` (dtype, shape, then values), or ``""``.

    Pixels, integers, booleans and texts must be equal; floats equal up to a few roundings
    (:func:`_float_tolerance`). The same run repeats bit for bit on one machine, but oneDNN
    and the BLAS choose their kernels by the CPU's instruction set (AVX2, AVX-512), and those
    round the last bits differently: between the reference's AVX2 machine and an AVX-512 one,
    float32 values moved by a unit or two in the last place and float16 feature maps by one."""
    if expected.dtype.kind == actual.dtype.kind == "U":
        # A text's dtype carries its length (<U124): compare the texts themselves.
        return "" if np.array_equal(expected, actual) else f"{actual.tolist()!r}, reference {expected.tolist()!r}"
    if expected.dtype != actual.dtype:
        return f"dtype {actual.dtype}, reference {expected.dtype}"
    if expected.shape != actual.shape:
        return f"shape {actual.shape}, reference {expected.shape}"
    try:
        if expected.dtype.kind in "fc":
            rtol, atol = _float_tolerance(expected.dtype)
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(actual, expected)
    except AssertionError as error:
        return _first_lines(str(error))
    return ""


def _float_tolerance(dtype: np.dtype) -> tuple[float, float]:
    """``(rtol, atol)``: 16 roundings relative, 4 absolute (a drift is one minus a cosine, so its
    rounding is that of 1, not of its small value), at the precision of ``dtype`` or float32,
    whichever is coarser: the float64 statistics are computed from float32 features. A real
    change of output moves values far more than this."""
    eps = max(float(np.finfo(dtype).eps), float(np.finfo(np.float32).eps))
    return 16 * eps, 4 * eps


def _first_lines(message: str, count: int = 6) -> str:
    return " | ".join(line.strip() for line in message.strip().splitlines()[:count] if line.strip())
