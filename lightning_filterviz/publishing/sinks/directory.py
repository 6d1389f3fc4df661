"""PNG files, a CSV of scalars and a Markdown log of text, under one directory."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Mapping, Optional, Union

from lightning_filterviz.core.files import write_new_file
from lightning_filterviz.core.layer_names import file_name_part
from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.tags import TAG_PREFIX
from lightning_filterviz.publishing.sinks.base import Sink

__all__ = ["DirectorySink"]


class DirectorySink(Sink):
    """Writes PNG files, a CSV of scalars and a Markdown log of text under one directory.

    Layout: ``<root>/<kind>/<name>/step_<step>.png`` for images, where a tag
    ``filterviz/<kind>/<name>`` gives two folders (``<root>/weights/conv1/``) and a tag
    without a layer, ``filterviz/probe``, one; ``<root>/scalars.csv`` with columns
    ``step,tag,value``; and ``<root>/text.md``, where tables are written as Markdown.

    Every file stays inside ``root``: each folder's name is
    :func:`~lightning_filterviz.core.layer_names.file_name_part` of its part of the tag, so
    a layer named ``"../../x"`` or ``"a/b"`` gets one folder, ``..%2F..%2Fx`` or ``a%2Fb``.
    No PNG file is written over another: an image at a step that has one already (a second
    fit into the same directory) is saved as ``step_<step>-2.png`` and the sink says so once
    (:meth:`take_notices`). Each PNG file appears whole or not at all.

    Args:
        root: the directory; created when missing.
        create_now: create ``root`` here, and raise here when it cannot be; ``False``:
            create it at the first write, which raises then instead (the directory a trainer
            gets, where a sink that cannot write costs its images, not the run).

    Raises:
        OSError: if ``root`` cannot be created (with ``create_now``).

    Example::

        visualizer = FilterVisualizer(DirectorySink("filterviz-out"))  # or FilterVisualizer("filterviz-out")
    """

    takes_images = True

    def __init__(self, root: Union[str, os.PathLike], *, create_now: bool = True) -> None:
        self.root = Path(root)
        self._first_copy: Optional[Path] = None
        self._told_of_copies = False
        if create_now:
            self.root.mkdir(parents=True, exist_ok=True)

    def image_path(self, tag: str) -> Path:
        """The folder of a tag's PNG files (see the layout above).

        Example::

            DirectorySink("out").image_path("filterviz/weights/net.0")  # out/weights/net.0
        """
        kind, _, name = tag.removeprefix(f"{TAG_PREFIX}/").partition("/")
        parts = [kind, name] if name else [kind]
        return self.root.joinpath(*map(file_name_part, parts))

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        for tag, image in images.items():
            wanted = self.image_path(tag) / f"step_{step:08d}.png"
            written = write_new_file(wanted, image.png)
            if written != wanted and self._first_copy is None:
                self._first_copy = written

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        if not values:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "scalars.csv"
        new_file = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(["step", "tag", "value"])
            writer.writerows([step, tag, value] for tag, value in values.items())

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "text.md").open("a") as handle:
            handle.write(f"## {tag} (step {step})\n\n{text}\n\n")

    def flush(self) -> None:
        """Files are closed after every write; nothing is buffered."""

    def take_notices(self) -> list[str]:
        """Once per sink: that a PNG file was saved beside one of the same name (scalars and
        text are appended to, never replaced)."""
        if self._first_copy is None or self._told_of_copies:
            return []
        self._told_of_copies = True
        return [f"the PNG files in {self.root} ({self._first_copy.relative_to(self.root).as_posix()})"]
