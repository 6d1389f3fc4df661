"""Write ``tests/data/reference_run.npz``, the output that ``tests/test_reference_run.py`` holds
the package to. Run it only on a deliberate change of output: ``python tests/make_reference.py``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # conftest and reference_run, also when run from elsewhere

from reference_run import run_reference  # noqa: E402

REFERENCE = TESTS / "data" / "reference_run.npz"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_dir:
        arrays = run_reference(Path(tmp_dir))
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, **arrays)
    print(f"wrote {REFERENCE} ({len(arrays)} arrays, {REFERENCE.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
