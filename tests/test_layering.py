"""The package's stages, held to the direction a snapshot flows in.

Each subpackage is one stage (see "How it works" in docs/how-it-works.md); a stage may
import only the stages listed for it here. The rule lives in this test, not in a comment:
an import against the flow fails it, wherever in a module it is written (at the top,
inside a function, or under ``TYPE_CHECKING``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_filterviz"
NAME = PACKAGE.name

# Stage -> the stages it may import (itself included).
MAY_IMPORT: dict[str, set[str]] = {
    "core": {"core"},
    "capture": {"core", "capture"},
    "state": {"core", "state"},
    "drawing": {"core", "drawing"},
    "views": {"core", "drawing", "views"},
    "publishing": {"core", "publishing"},
    "engine": {"core", "capture", "state", "views", "publishing", "engine"},
    "integration": {"core", "capture", "engine", "publishing", "views", "integration"},
    "report": {"core", "drawing", "report"},
    "board": {"core", "drawing", "board"},
}
# The package's public face: the only modules at its top.
TOP_MODULES = {"__init__.py", "__main__.py", "lightning.py", "pl.py"}
# Stages the report and the history reader depend on: they must load without torch.
WITHOUT_TORCH = {"core", "drawing", "report", "board"}


def stage_modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path.parent != PACKAGE)


def stage_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def imported_modules(text: str, package_parts: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every module a module's ``text`` imports, relative imports
    resolved against ``package_parts`` (the dotted package it lies in)."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # ``from lightning_filterviz.core import tiles`` imports lightning_filterviz.core.tiles.
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def imported_stages(text: str, package_parts: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """``(line, dotted name, stage)`` of each import of one of the package's stages."""
    stages = []
    for line, module in imported_modules(text, package_parts):
        parts = module.split(".")
        if parts[0] == NAME and len(parts) > 1:
            stages.append((line, module, parts[1]))
    return stages


def package_parts_of(path: Path) -> tuple[str, ...]:
    return (NAME, *path.relative_to(PACKAGE).parent.parts)


def test_the_package_top_holds_only_its_public_face() -> None:
    top = {path.name for path in PACKAGE.glob("*.py")}
    assert top == TOP_MODULES
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"} == set(MAY_IMPORT)


@pytest.mark.parametrize("path", stage_modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_a_stage_imports_only_the_stages_before_it(path: Path) -> None:
    stage = stage_of(path)
    against_the_flow = [
        f"line {line}: {module}" for line, module, imported in imported_stages(path.read_text(), package_parts_of(path))
        if imported not in MAY_IMPORT[stage]
    ]
    assert not against_the_flow, f"{stage}/ may import only {sorted(MAY_IMPORT[stage])}"


@pytest.mark.parametrize(
    "path",
    [path for path in stage_modules() if stage_of(path) in WITHOUT_TORCH],
    ids=lambda path: str(path.relative_to(PACKAGE)),
)
def test_the_report_stages_import_no_torch(path: Path) -> None:
    tree = ast.parse(path.read_text())
    type_checking_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    torch_imports = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in type_checking_only
        and any(name.split(".")[0] == "torch" for name in _names(node))
    ]
    assert not torch_imports, f"torch imported at lines {torch_imports}"


def test_the_rule_sees_imports_inside_functions_and_relative_ones() -> None:
    text = "def f():\n    from lightning_filterviz.engine.delivery import Delivery\n    from . import tiles\n"
    found = imported_stages(text, (NAME, "core"))
    assert [(module, stage) for _, module, stage in found] == [
        ("lightning_filterviz.engine.delivery.Delivery", "engine"),
        ("lightning_filterviz.core.tiles", "core"),
    ]


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    return [node.module or ""]
