"""TensorBoard: a snapshot's images, scalars and tables in a ``SummaryWriter``'s event file."""

from __future__ import annotations

from typing import Any, Mapping

from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.publishing.sinks.base import Sink
from lightning_filterviz.publishing.sinks.checksums import use_fast_checksums
from lightning_filterviz.publishing.sinks.registry import TENSORBOARD_LOGGER, sink_for_logger

__all__ = ["TensorBoardSink"]


@sink_for_logger(TENSORBOARD_LOGGER)
class TensorBoardSink(Sink):
    """Writes to a ``torch.utils.tensorboard.SummaryWriter``.

    Images and text are written as summaries under exactly the given tag (``add_text``
    would append ``/text_summary``), through the writer's event file writer, as
    Lightning's own ``TensorBoardLogger`` does for hyperparameters. A snapshot's images
    are one event, and so are its scalars, in the same event file as the logger's own
    metrics; each record is checksummed in C (see
    :mod:`~lightning_filterviz.publishing.sinks.checksums`).

    Args:
        writer: the writer, e.g. ``TensorBoardLogger.experiment`` or ``SummaryWriter(log_dir)``.

    Example::

        writer = SummaryWriter("runs/example")
        visualizer = FilterVisualizer(TensorBoardSink(writer))  # or FilterVisualizer(writer)
    """

    takes_images = True

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self._checked_file_writer: Any = None

    @classmethod
    def from_logger(cls, logger: Any) -> TensorBoardSink:
        """The sink of a ``TensorBoardLogger``, or of a logger whose experiment is a ``SummaryWriter``."""
        return cls(logger.experiment)

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        """Write images under their own tags, as one event: a summary holds any number of
        values, and each event costs a record, a checksum and a hand-over to the writer thread."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        if images:
            self._add_summary(Summary(value=[_image_value(tag, image) for tag, image in images.items()]), step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write scalars under their own tags, as one event (a summary holds any number of values)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        if values:
            # What SummaryWriter.add_scalar writes per tag, without its per-call tensor conversions.
            scalars = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()]
            self._add_summary(Summary(value=scalars), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb

        self._add_summary(text_pb(tag, text), step)

    def flush(self) -> None:
        self.writer.flush()

    def _add_summary(self, summary: Any, step: int) -> None:
        self._file_writer().add_summary(summary, step)

    def _file_writer(self) -> Any:
        # The writer opens a new file writer after close(); each one gets the C checksum.
        file_writer = self.writer._get_file_writer()
        if file_writer is not self._checked_file_writer:
            self._checked_file_writer = file_writer
            use_fast_checksums(file_writer)
        return file_writer


def _image_value(tag: str, image: EncodedImage) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = image.size
    encoded = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=image.png)
    return Summary.Value(tag=tag, image=encoded)
