"""The package as an index would get it: the sdist and the wheel built from the tracked files,
checked by twine and read back (typing marker, license text and expression, dependencies)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a checkout holds besides the tracked files: environments, caches, outputs of earlier builds.
UNTRACKED = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".pytest_cache", "lightning_logs", "wandb*", "ml*"
)


@pytest.fixture(scope="module")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    source = tmp_path_factory.mktemp("source") / "lightning_filterviz"
    shutil.copytree(REPO, source, ignore=UNTRACKED)
    out = source / "dist"
    # No isolation: the build uses this environment's setuptools instead of downloading one.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_twine_check_strict_passes(distributions: dict[str, Path]) -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, distributions.values())],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2


def test_wheel_is_typed_licensed_and_needs_no_torchvision(distributions: dict[str, Path]) -> None:
    with zipfile.ZipFile(distributions["wheel"]) as wheel:
        names = wheel.namelist()
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
        (license_name,) = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
        license_text = wheel.read(license_name).decode()
    assert "lightning_filterviz/py.typed" in names
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    classifiers = metadata.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert not any(classifier.startswith("License ::") for classifier in classifiers)  # PEP 639: the expression alone
    assert "lightning_filterviz authors" in metadata["Author"]
    required = [requirement for requirement in metadata.get_all("Requires-Dist") if "extra ==" not in requirement]
    assert not any(requirement.startswith("torchvision") for requirement in required)
    assert any(requirement.startswith("torchvision") for requirement in metadata.get_all("Requires-Dist"))


def test_wheel_carries_the_filters_tab_and_registers_it_with_tensorboard(distributions: dict[str, Path]) -> None:
    with zipfile.ZipFile(distributions["wheel"]) as wheel:
        names = wheel.namelist()
        (entry_points_name,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        entry_points = wheel.read(entry_points_name).decode()
        page = wheel.read("lightning_filterviz/board/static/index.js").decode()
    assert "export async function render()" in page
    assert "[tensorboard_plugins]\nfilterviz = lightning_filterviz.board:FilterVizLoader" in entry_points


def test_sdist_carries_the_license_changelog_and_typing_marker(distributions: dict[str, Path]) -> None:
    with tarfile.open(distributions["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "lightning_filterviz/py.typed"} <= names
    assert "lightning_filterviz/board/static/index.js" in names
