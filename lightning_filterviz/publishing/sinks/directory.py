"""PNG files, a CSV of scalars and a Markdown log of text, under one directory."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Mapping, Union

from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.tags import TAG_PREFIX
from lightning_filterviz.publishing.sinks.base import Sink

__all__ = ["DirectorySink"]


class DirectorySink(Sink):
    """Writes PNG files, a CSV of scalars and a Markdown log of text under one directory.

    Layout: ``<root>/<tag>/step_<step>.png`` for images, where the tag loses its
    ``filterviz/`` prefix and its other ``/`` become folders (``<root>/weights/conv1/``);
    ``<root>/scalars.csv`` with columns ``step,tag,value``; and ``<root>/text.md``, where
    tables are written as Markdown.

    Args:
        root: the directory; created when missing.

    Raises:
        OSError: if ``root`` cannot be created.

    Example::

        visualizer = FilterVisualizer(DirectorySink("filterviz-out"))  # or FilterVisualizer("filterviz-out")
    """

    takes_images = True

    def __init__(self, root: Union[str, os.PathLike]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        for tag, image in images.items():
            path = self.root / tag.removeprefix(f"{TAG_PREFIX}/") / f"step_{step:08d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image.png)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        if not values:
            return
        path = self.root / "scalars.csv"
        new_file = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(["step", "tag", "value"])
            writer.writerows([step, tag, value] for tag, value in values.items())

    def add_text(self, tag: str, text: str, step: int) -> None:
        with (self.root / "text.md").open("a") as handle:
            handle.write(f"## {tag} (step {step})\n\n{text}\n\n")

    def flush(self) -> None:
        """Files are closed after every write; nothing is buffered."""
