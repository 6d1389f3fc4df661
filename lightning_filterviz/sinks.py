"""Where rendered snapshots go: a TensorBoard ``SummaryWriter`` or a directory of PNG files."""

from __future__ import annotations

import atexit
import csv
import functools
import io
import os
import queue
import struct
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Union

from lightning_filterviz.render import Image, IndexedImage
from lightning_filterviz.tags import TAG_PREFIX

__all__ = [
    "BackgroundWriter",
    "DirectorySink",
    "NullSink",
    "Sink",
    "TensorBoardSink",
    "as_sink",
    "encode_png",
    "masked_crc32c",
    "use_fast_checksums",
    "write_images",
    "write_scalars",
]

# zlib level 1 encodes these grids 2-3x faster than PIL's default level 6, at about the same size.
PNG_COMPRESSION = 1


class Sink(Protocol):
    """What the engine writes to. Images are ``(H, W, 3)`` ``uint8`` arrays or
    :class:`~lightning_filterviz.render.IndexedImage` (see :func:`encode_png`).

    A sink may also have ``add_scalars(values: Mapping[str, float], step)`` and
    ``add_image_group(images: Mapping[str, Image], step)``, which then get all of a
    snapshot's scalars, or images, at once (see :func:`write_scalars` and :func:`write_images`).
    """

    def add_image(self, tag: str, image: Image, step: int) -> None: ...

    def add_scalar(self, tag: str, value: float, step: int) -> None: ...

    def add_text(self, tag: str, text: str, step: int) -> None: ...

    def flush(self) -> None: ...


class TensorBoardSink:
    """Writes to a ``torch.utils.tensorboard.SummaryWriter``.

    Images and text are written as summaries under exactly the given tag (``add_text``
    would append ``/text_summary``), through the writer's event file writer, as
    Lightning's own ``TensorBoardLogger`` does for hyperparameters.

    Args:
        writer: the writer, e.g. ``TensorBoardLogger.experiment`` or ``SummaryWriter(log_dir)``.
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self._checked_file_writer: Any = None

    def add_image(self, tag: str, image: Image, step: int) -> None:
        self.add_image_group({tag: image}, step)

    def add_image_group(self, images: Mapping[str, Image], step: int) -> None:
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


def _image_value(tag: str, image: Image) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = image.indices.shape if isinstance(image, IndexedImage) else image.shape[:2]
    encoded = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encode_png(image))
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
    if all(hasattr(target, method) for method in ("add_image", "add_scalar", "add_text", "flush")):
        writer_like = hasattr(target, "add_images") or type(target).__name__ == "SummaryWriter"
        return TensorBoardSink(target) if writer_like else target
    raise TypeError(
        f"Cannot log to a {type(target).__name__}: pass a SummaryWriter, a directory path, "
        "or an object with add_image, add_scalar, add_text and flush."
    )


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
        path = self.root / tag.removeprefix(f"{TAG_PREFIX}/") / f"step_{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(image))

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


def write_images(sink: Sink, images: Mapping[str, Image], step: int) -> None:
    """Hand ``images`` to ``sink.add_image_group`` at once where it has one, else one by one."""
    _write_all(sink, "add_image_group", "add_image", images, step)


def write_scalars(sink: Sink, values: Mapping[str, float], step: int) -> None:
    """Hand ``values`` to ``sink.add_scalars`` at once where it has one, else one by one."""
    _write_all(sink, "add_scalars", "add_scalar", values, step)


def _write_all(sink: Sink, grouped: str, single: str, items: Mapping[str, Any], step: int) -> None:
    if not items:
        return
    write_group = getattr(sink, grouped, None)
    if write_group is not None:
        write_group(items, step)
        return
    write_one = getattr(sink, single)
    for tag, item in items.items():
        write_one(tag, item, step)


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


def encode_png(image: Image) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` ``uint8`` array or of an :class:`IndexedImage` (palette PNG)."""
    from PIL import Image as PILImage

    if isinstance(image, IndexedImage):
        picture = PILImage.fromarray(image.indices)
        picture.putpalette(image.palette.tobytes(), "RGB")  # an "L" image with a palette becomes "P"
    else:
        picture = PILImage.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=PNG_COMPRESSION)
    return buffer.getvalue()


class BackgroundWriter:
    """Runs rendering and writing jobs, in order, on one daemon thread.

    The queue is bounded: :meth:`submit` blocks while ``max_pending`` jobs wait, so a
    slow disk slows the caller down instead of letting memory grow, and nothing is
    dropped. The first exception a job raises is kept in :attr:`failure`; later jobs still
    run (they may check :attr:`failure` to skip what failed), and the caller decides how to
    report it.

    Args:
        max_pending: jobs that may wait at once.
    """

    def __init__(self, max_pending: int = 2) -> None:
        self.max_pending = max_pending
        self._jobs: queue.Queue[Optional[Callable[[], None]]] = queue.Queue(maxsize=max_pending)
        self._thread: Optional[threading.Thread] = None
        self._finishes_at_exit = False
        self.failure: Optional[BaseException] = None

    def __getstate__(self) -> dict[str, Any]:
        # Launchers that spawn processes pickle the callback: send the setting, not the thread.
        return {"max_pending": self.max_pending}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_pending"])  # type: ignore[misc]

    def on_writer_thread(self) -> bool:
        """Whether the caller is this writer's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, job: Callable[[], None]) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="filterviz-writer", daemon=True)
            self._thread.start()
            if not self._finishes_at_exit:
                # A script that never calls close() still gets every snapshot it submitted written.
                atexit.register(_finish_at_exit, weakref.ref(self))
                self._finishes_at_exit = True
        self._jobs.put(job)

    def drain(self) -> None:
        """Wait until every submitted job has run."""
        if self._thread is not None:
            self._jobs.join()

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                job()
            except Exception as error:  # reported by the owner on the training thread
                if self.failure is None:
                    self.failure = error
            finally:
                job = None  # let the snapshot go while waiting for the next one
                self._jobs.task_done()


def _finish_at_exit(writer_ref: "weakref.ReferenceType[BackgroundWriter]") -> None:
    writer = writer_ref()
    if writer is not None:
        writer.close()
