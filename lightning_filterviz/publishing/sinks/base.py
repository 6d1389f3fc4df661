"""Where rendered snapshots go: a TensorBoard ``SummaryWriter`` or a directory of PNG files.

Sinks for the other loggers Lightning users log to are in :mod:`lightning_filterviz.publishing.sinks.loggers`;
:class:`~lightning_filterviz.publishing.sinks.group.SinkGroup` hands one snapshot to several sinks.
"""

from __future__ import annotations

import csv
import functools
import os
import struct
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Union

from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.records import Table
from lightning_filterviz.core.tags import TAG_PREFIX
from lightning_filterviz.core.tiles import Image

__all__ = [
    "DirectorySink",
    "NullSink",
    "Sink",
    "TensorBoardSink",
    "as_sink",
    "masked_crc32c",
    "use_fast_checksums",
    "write_images",
    "write_scalars",
    "write_table",
]


class Sink(Protocol):
    """What the engine writes to. Images are ``(H, W, 3)`` ``uint8`` arrays or
    :class:`~lightning_filterviz.core.tiles.IndexedImage` (see :func:`~lightning_filterviz.core.png.encode_png`).

    A sink may also have, and then gets a snapshot's items through them:

    - ``add_encoded_images(images: Mapping[str, EncodedImage], step)``: all of a snapshot's
      images at once, each with its PNG bytes encoded once for every sink;
    - ``add_image_group(images: Mapping[str, Image], step)``: all of its images at once;
    - ``add_scalars(values: Mapping[str, float], step)``: all of its scalars at once;
    - ``add_table(tag, table: Table, step)``: a table as a table (else it gets Markdown text);
    - ``on_training_thread()``: called by the engine on the training thread (after each
      training batch under the callback), for a sink whose logger must be called there.
    """

    def add_image(self, tag: str, image: Image, step: int) -> None: ...

    def add_scalar(self, tag: str, value: float, step: int) -> None: ...

    def add_text(self, tag: str, text: str, step: int) -> None: ...

    def flush(self) -> None: ...


class TensorBoardSink:
    """Writes to a ``torch.utils.tensorboard.SummaryWriter``.

    Images and text are written as summaries under exactly the given tag (``add_text``
    would append ``/text_summary``), through the writer's event file writer, as
    Lightning's own ``TensorBoardLogger`` does for hyperparameters. A snapshot's images
    are one event, and so are its scalars, in the same event file as the logger's own
    metrics.

    Args:
        writer: the writer, e.g. ``TensorBoardLogger.experiment`` or ``SummaryWriter(log_dir)``.
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self._checked_file_writer: Any = None

    def add_image(self, tag: str, image: Image, step: int) -> None:
        self.add_encoded_images({tag: EncodedImage(image)}, step)

    def add_image_group(self, images: Mapping[str, Image], step: int) -> None:
        self.add_encoded_images({tag: EncodedImage(image) for tag, image in images.items()}, step)

    def add_encoded_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        """Write images under their own tags, as one event: a summary holds any number of
        values, and each event costs a record, a checksum and a hand-over to the writer thread."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        if images:
            self._add_summary(Summary(value=[_image_value(tag, image) for tag, image in images.items()]), step)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.add_scalars({tag: value}, step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write scalars under their own tags, as one event (a summary holds any number of values)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        # What SummaryWriter.add_scalar writes per tag, without its per-call tensor conversions.
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()])
        self._add_summary(summary, step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb

        self._add_summary(text_pb(tag, text), step)

    def _add_summary(self, summary: Any, step: int) -> None:
        self._file_writer().add_summary(summary, step)

    def _file_writer(self) -> Any:
        # The writer opens a new file writer after close(); each one gets the C checksum.
        file_writer = self.writer._get_file_writer()
        if file_writer is not self._checked_file_writer:
            self._checked_file_writer = file_writer
            use_fast_checksums(file_writer)
        return file_writer

    def flush(self) -> None:
        self.writer.flush()


def _image_value(tag: str, image: EncodedImage) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = image.size
    encoded = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=image.png)
    return Summary.Value(tag=tag, image=encoded)


class NullSink:
    """Writes nothing: a stand-in until the real destination is known, and on ranks other than zero."""

    def add_image(self, tag: str, image: Image, step: int) -> None:
        pass

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def add_text(self, tag: str, text: str, step: int) -> None:
        pass

    def flush(self) -> None:
        pass


def as_sink(target: Any) -> Sink:
    """A sink for ``target``: a sink, a ``SummaryWriter`` (anything with ``add_image``) or a directory path.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(target, (str, os.PathLike)):
        return DirectorySink(target)
    if isinstance(target, (TensorBoardSink, DirectorySink, NullSink)):
        return target
    if is_summary_writer(target):
        return TensorBoardSink(target)
    if all(hasattr(target, method) for method in ("add_image", "add_scalar", "add_text", "flush")):
        return target
    raise TypeError(
        f"Cannot log to a {type(target).__name__}: pass a SummaryWriter, a directory path, "
        "or an object with add_image, add_scalar, add_text and flush."
    )


def is_summary_writer(target: Any) -> bool:
    """Whether ``target`` is a TensorBoard ``SummaryWriter`` (torch's, tensorboardX's or one like them)."""
    has_sink_methods = all(hasattr(target, method) for method in ("add_image", "add_scalar", "add_text", "flush"))
    return has_sink_methods and (hasattr(target, "add_images") or type(target).__name__ == "SummaryWriter")


class DirectorySink:
    """Writes PNG files, a CSV of scalars and a Markdown log of text under one directory.

    Layout: ``<root>/<tag>/step_<step>.png`` for images, where the tag loses its
    ``filterviz/`` prefix and its other ``/`` become folders (``<root>/weights/conv1/``);
    ``<root>/scalars.csv`` with columns ``step,tag,value``; and ``<root>/text.md``.

    Args:
        root: the directory; created when missing.
    """

    def __init__(self, root: Union[str, os.PathLike]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def add_image(self, tag: str, image: Image, step: int) -> None:
        self.add_encoded_images({tag: EncodedImage(image)}, step)

    def add_encoded_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        for tag, image in images.items():
            path = self.root / tag.removeprefix(f"{TAG_PREFIX}/") / f"step_{step:08d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image.png)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.add_scalars({tag: value}, step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
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


def write_images(sink: Sink, images: Mapping[str, EncodedImage], step: int) -> None:
    """Hand ``images`` to the sink in the widest call it has: ``add_encoded_images``, else
    ``add_image_group``, else ``add_image`` one by one."""
    if not images:
        return
    if hasattr(sink, "add_encoded_images"):
        sink.add_encoded_images(images, step)
    elif hasattr(sink, "add_image_group"):
        sink.add_image_group({tag: image.pixels for tag, image in images.items()}, step)
    else:
        for tag, image in images.items():
            sink.add_image(tag, image.pixels, step)


def write_scalars(sink: Sink, values: Mapping[str, float], step: int) -> None:
    """Hand ``values`` to ``sink.add_scalars`` at once where it has one, else one by one."""
    if not values:
        return
    if hasattr(sink, "add_scalars"):
        sink.add_scalars(values, step)
    else:
        for tag, value in values.items():
            sink.add_scalar(tag, value, step)


def write_table(sink: Sink, tag: str, table: Table, step: int) -> None:
    """Hand ``table`` to ``sink.add_table`` where it has one, else as Markdown to ``add_text``."""
    if hasattr(sink, "add_table"):
        sink.add_table(tag, table, step)
    else:
        sink.add_text(tag, table.markdown(), step)


def use_fast_checksums(file_writer: Any) -> bool:
    """Let a TensorBoard event file writer checksum its records in C.

    Without TensorFlow installed, TensorBoard computes each record's CRC32C in pure
    Python, about 8 MB/s: some 10 ms for one snapshot's images, all of it holding the
    GIL that the training loop needs. ``google-crc32c`` computes the same checksum in C,
    so the file's bytes are unchanged. Only a record writer of TensorBoard's own class is
    touched; a writer of any other kind is left as it is.

    Args:
        file_writer: what ``SummaryWriter._get_file_writer()`` returns.

    Returns:
        Whether the writer's records are now checksummed in C.
    """
    from tensorboard.summary.writer.record_writer import RecordWriter

    async_writer = getattr(getattr(file_writer, "event_writer", None), "_async_writer", None)
    record_writer = getattr(async_writer, "_writer", None)
    if record_writer is None or type(record_writer) is not RecordWriter or _c_crc32c() is None:
        return False
    record_writer.write = functools.partial(_write_record, record_writer._writer)
    return True


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C of a TFRecord (the format of TensorBoard event files), computed in C."""
    crc32c = _c_crc32c()
    if crc32c is None:
        raise RuntimeError("google-crc32c has no C implementation here; reinstall it: pip install google-crc32c")
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _write_record(file: Any, data: bytes) -> None:
    # TFRecord framing: length (u64), its masked CRC (u32), the data, the data's masked CRC (u32).
    header = struct.pack("<Q", len(data))
    file.write(header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data)))


@functools.lru_cache(maxsize=None)
def _c_crc32c() -> Optional[Callable[[bytes], int]]:
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value if google_crc32c.implementation == "c" else None
