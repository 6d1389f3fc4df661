"""The :class:`Sink` base class, and :func:`as_sink`, which makes a sink of what a user passes.

Every destination of a snapshot's images, scalars and tables derives from :class:`Sink`,
one file each beside this one; :mod:`~lightning_filterviz.publishing.sinks.registry` picks
one for each of a trainer's loggers. A user's own object with ``add_image``, ``add_scalar``,
``add_text`` and ``flush`` (the methods a ``SummaryWriter`` has) is wrapped in a
:class:`UserSink`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Union

from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.records import Table
from lightning_filterviz.core.tiles import Image

__all__ = [
    "USER_SINK_METHODS",
    "Sink",
    "UserSink",
    "as_encoded",
    "as_sink",
    "is_summary_writer",
]

# What an object of the user's own must have to be written to (a SummaryWriter has them too).
USER_SINK_METHODS = ("add_image", "add_scalar", "add_text", "flush")


class Sink:
    """Where a snapshot's images, scalars and tables go: the base class of every sink.

    As in Lightning's ``Logger``, every method has a default that does nothing, so a sink
    overrides only what its destination takes. The publisher makes the batched calls, once
    per snapshot: :meth:`add_images`, :meth:`add_scalars`, :meth:`add_table`, then
    :meth:`flush`. The single calls route to them (:meth:`add_image` to :meth:`add_images`,
    :meth:`add_scalar` to :meth:`add_scalars`), and a table becomes Markdown for
    :meth:`add_text` unless the sink overrides :meth:`add_table`, so a sink writes each kind
    of output in one method. A batch may be empty; then nothing is written.

    Calls come from the writer thread when the engine writes in the background, except
    :meth:`on_training_thread`, which the engine calls on the training thread (after each
    training batch under the callback, and after each flush): a sink whose logger must be
    called from that thread keeps its calls until then.

    Attributes:
        takes_images: whether the images written to this sink are kept. A trainer whose
            loggers' sinks take none gets PNG files instead (see
            :func:`~lightning_filterviz.publishing.sinks.registry.sinks_for_loggers`).

    Example:
        >>> class PrintedScalars(Sink):
        ...     def add_scalars(self, values, step):
        ...         for tag, value in values.items():
        ...             print(f"{step} {tag} {value}")
        >>> PrintedScalars().add_scalar("filterviz/drift/conv1", 0.5, step=3)
        3 filterviz/drift/conv1 0.5
    """

    takes_images: bool = False

    @classmethod
    def from_logger(cls, logger: Any) -> Sink:
        """The sink for one of a trainer's Lightning loggers. Defined by each sink registered
        with :func:`~lightning_filterviz.publishing.sinks.registry.sink_for_logger`.

        Raises:
            NotImplementedError: for a sink that is not made from a logger.
        """
        raise NotImplementedError(f"{cls.__name__} is not made from a logger: it defines no `from_logger`.")

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        """Write each image under its tag at ``step``; by default, nothing (a sink that takes no images).

        Args:
            images: tag -> image. The same :class:`~lightning_filterviz.core.png.EncodedImage`
                goes to every sink of a snapshot, so its PNG bytes are encoded once, for the
                first sink that reads ``png``.
            step: the step the images belong to.
        """

    def add_image(self, tag: str, image: Union[Image, EncodedImage], step: int) -> None:
        """Write one image: an ``(H, W, 3)`` ``uint8`` array, an
        :class:`~lightning_filterviz.core.tiles.IndexedImage`, or an ``EncodedImage``."""
        self.add_images({tag: as_encoded(image)}, step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write each value under its tag at ``step``; by default, nothing."""

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Write one value."""
        self.add_scalars({tag: value}, step)

    def add_table(self, tag: str, table: Table, step: int) -> None:
        """Write a table; by default, as Markdown through :meth:`add_text`."""
        self.add_text(tag, table.markdown(), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        """Write text (Markdown) under ``tag`` at ``step``; by default, nothing."""

    def flush(self) -> None:
        """Write out what is buffered; called after each snapshot. By default, nothing."""

    def on_training_thread(self) -> None:
        """Make the calls that must be made on the training thread; by default, none."""

    def take_failures(self) -> list[tuple[str, Exception]]:
        """The parts of this sink that failed and were left out since the last call, by
        name, with what they raised; by default, none (a sink that fails raises)."""
        return []

    def take_notices(self) -> list[str]:
        """What the user should know of this sink's writing since the last call (it went
        on writing), one phrase each, e.g. that files were saved under a new name rather
        than over older ones; by default, none."""
        return []


class UserSink(Sink):
    """A sink of the user's own that does not derive from :class:`Sink` but has
    ``add_image``, ``add_scalar``, ``add_text`` and ``flush``: each batched call becomes
    single calls, and images arrive as pixels (an ``(H, W, 3)`` ``uint8`` array or an
    :class:`~lightning_filterviz.core.tiles.IndexedImage`). Its ``add_table``,
    ``on_training_thread`` and ``take_failures`` are called where it has them.

    Args:
        target: the user's object.

    Example:
        >>> class Scalars:
        ...     def __init__(self):
        ...         self.logged = {}
        ...     def add_image(self, tag, image, step): pass
        ...     def add_scalar(self, tag, value, step): self.logged[tag, step] = value
        ...     def add_text(self, tag, text, step): pass
        ...     def flush(self): pass
        >>> own = Scalars()
        >>> as_sink(own).add_scalars({"filterviz/drift/conv1": 0.5, "filterviz/drift/conv2": 0.25}, step=3)
        >>> own.logged
        {('filterviz/drift/conv1', 3): 0.5, ('filterviz/drift/conv2', 3): 0.25}
    """

    takes_images = True

    def __init__(self, target: Any) -> None:
        self.target = target

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        for tag, image in images.items():
            self.target.add_image(tag, image.pixels, step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.target.add_scalar(tag, value, step)

    def add_table(self, tag: str, table: Table, step: int) -> None:
        # The user's object is duck-typed: its optional methods are looked up, not assumed.
        add_table = getattr(self.target, "add_table", None)
        if add_table is not None:
            add_table(tag, table, step)
        else:
            super().add_table(tag, table, step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.target.add_text(tag, text, step)

    def flush(self) -> None:
        self.target.flush()

    def on_training_thread(self) -> None:
        deliver = getattr(self.target, "on_training_thread", None)
        if deliver is not None:
            deliver()

    def take_failures(self) -> list[tuple[str, Exception]]:
        take = getattr(self.target, "take_failures", None)
        return list(take()) if take is not None else []

    def take_notices(self) -> list[str]:
        take = getattr(self.target, "take_notices", None)
        return list(take()) if take is not None else []


def as_sink(target: Any) -> Sink:
    """A sink for ``target``: a :class:`Sink` as it is; a ``SummaryWriter`` in a
    :class:`~lightning_filterviz.publishing.sinks.tensorboard.TensorBoardSink`; a directory
    path in a :class:`~lightning_filterviz.publishing.sinks.directory.DirectorySink`; another
    object with ``add_image``, ``add_scalar``, ``add_text`` and ``flush`` in a :class:`UserSink`.

    Raises:
        TypeError: for anything else.
    """
    # These sinks derive from Sink, so their modules import this one: they are imported here.
    from lightning_filterviz.publishing.sinks.directory import DirectorySink
    from lightning_filterviz.publishing.sinks.tensorboard import TensorBoardSink

    if isinstance(target, Sink):
        return target
    if isinstance(target, (str, os.PathLike)):
        return DirectorySink(target)
    if is_summary_writer(target):
        return TensorBoardSink(target)
    if _has_user_sink_methods(target):
        return UserSink(target)
    raise TypeError(
        f"Cannot log to a {type(target).__name__}: pass a SummaryWriter, a directory path, "
        "or an object with add_image, add_scalar, add_text and flush."
    )


def is_summary_writer(target: Any) -> bool:
    """Whether ``target`` is a TensorBoard ``SummaryWriter`` (torch's, tensorboardX's or one like them)."""
    return _has_user_sink_methods(target) and (
        hasattr(target, "add_images") or type(target).__name__ == "SummaryWriter"
    )


def as_encoded(image: Union[Image, EncodedImage]) -> EncodedImage:
    """``image`` as an :class:`~lightning_filterviz.core.png.EncodedImage` (one is returned as it is)."""
    return image if isinstance(image, EncodedImage) else EncodedImage(image)


def _has_user_sink_methods(target: Any) -> bool:
    return all(hasattr(target, method) for method in USER_SINK_METHODS)
