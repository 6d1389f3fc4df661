"""Which sink each of a trainer's loggers gets: a registry keyed by logger class name.

A sink for a logger registers itself in its own module with :func:`sink_for_logger`, by the
name of the logger's class, so that both Lightning packages' classes (``lightning.pytorch``
and ``pytorch_lightning``) and their subclasses match, and no logger's package is imported
to find out. Registering is importing the sink's module: :data:`SINK_MODULES` lists them, and
is the registration. Those modules import this one for the decorator, so this one imports
them only when it is first asked which sink a logger gets.

:func:`sinks_for_loggers` makes a trainer's sinks: one per logger, and PNG files where the
images would otherwise go nowhere.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn

from lightning_filterviz.publishing.sinks.base import Sink, is_summary_writer
from lightning_filterviz.publishing.sinks.directory import DirectorySink
from lightning_filterviz.publishing.sinks.group import SinkGroup

__all__ = [
    "PNG_FOLDER",
    "SINK_MODULES",
    "TENSORBOARD_LOGGER",
    "registered_sinks",
    "sink_class_for",
    "sink_for_logger",
    "sinks_for_loggers",
]

# The registration: importing each of these modules registers its sinks (see sink_for_logger).
SINK_MODULES = (
    "lightning_filterviz.publishing.sinks.tensorboard",
    "lightning_filterviz.publishing.sinks.metrics",
    "lightning_filterviz.publishing.sinks.wandb",
    "lightning_filterviz.publishing.sinks.mlflow",
    "lightning_filterviz.publishing.sinks.comet",
)
# A logger of another class whose experiment is a SummaryWriter gets the sink registered for this one.
TENSORBOARD_LOGGER = "TensorBoardLogger"
# The folder, under a run's directory, of the PNG files written where no logger takes images.
PNG_FOLDER = "filterviz"
# The logger whose log_dir holds the history files where no TensorBoard logger is there.
CSV_LOGGER = "CSVLogger"

SinkClass = TypeVar("SinkClass", bound=type[Sink])

# Logger class name -> the sink class registered for it.
_SINK_CLASSES: dict[str, type[Sink]] = {}


def sink_for_logger(*logger_class_names: str) -> Callable[[SinkClass], SinkClass]:
    """Register the decorated sink class for the loggers of these class names, and of their
    subclasses. The class makes its sink with ``from_logger(logger)``.

    Args:
        logger_class_names: names of logger classes, e.g. ``"WandbLogger"``.

    Raises:
        TypeError: if the class defines no ``from_logger``.
        ValueError: if another class is registered for one of the names already.

    Example::

        @sink_for_logger("NeptuneLogger")
        class NeptuneSink(Sink):
            takes_images = True

            @classmethod
            def from_logger(cls, logger):
                return cls(logger.run)
    """

    def register(sink_class: SinkClass) -> SinkClass:
        if sink_class.from_logger.__func__ is Sink.from_logger.__func__:  # type: ignore[attr-defined]
            raise TypeError(f"{sink_class.__name__} is registered for loggers but defines no `from_logger`.")
        for name in logger_class_names:
            registered = _SINK_CLASSES.setdefault(name, sink_class)
            if registered is not sink_class:
                raise ValueError(f"{registered.__name__} is registered for {name} already; not {sink_class.__name__}.")
        return sink_class

    return register


def registered_sinks() -> dict[str, type[Sink]]:
    """Every registered sink class, by the name of the logger class it is registered for."""
    _import_sink_modules()
    return dict(_SINK_CLASSES)


def sink_class_for(logger: Any) -> Optional[type[Sink]]:
    """The sink class registered for the logger's class or its nearest base class; for a
    logger of no registered class whose experiment is a ``SummaryWriter``, TensorBoard's;
    else ``None``."""
    _import_sink_modules()
    for cls in type(logger).__mro__:
        if cls.__name__ in _SINK_CLASSES:
            return _SINK_CLASSES[cls.__name__]
    if is_summary_writer(getattr(logger, "experiment", None)):
        return _SINK_CLASSES[TENSORBOARD_LOGGER]
    return None


def sinks_for_loggers(loggers: Sequence[Any], log_dir: str) -> tuple[SinkGroup, str]:
    """One sink per logger, all of them in one group.

    A logger gets the sink registered for its class (:func:`sink_class_for`); most take the
    images, scalars and tables in the logger's own records, while a ``CSVLogger`` takes the
    scalars through ``log_metrics``. A logger of another kind gets the scalars through
    ``log_metrics`` too, and a warning. Where no sink takes the images, or a logger of
    another kind is there, they go to PNG files (and a CSV of scalars) under
    ``<output dir>/filterviz``.

    Args:
        loggers: ``trainer.loggers``.
        log_dir: the trainer's log directory, used where no logger has a directory of its own.

    Returns:
        The group of sinks, and the directory that keeps the run's other outputs (the
        history files): the first TensorBoard logger's, else the first CSV logger's, else ``log_dir``.
    """
    # metrics.py registers a sink with this module's decorator, so it cannot be imported at the top.
    from lightning_filterviz.publishing.sinks.metrics import LoggerMetricsSink

    sinks: dict[str, Sink] = {}
    without_images: list[str] = []
    tensorboard_loggers = []
    for logger in loggers:
        name = _unique_name(type(logger).__name__, sinks)
        sink_class = sink_class_for(logger)
        if sink_class is None:
            sink_class = LoggerMetricsSink
            without_images.append(name)
        elif sink_class is _SINK_CLASSES[TENSORBOARD_LOGGER]:
            tensorboard_loggers.append(logger)
        sinks[name] = sink_class.from_logger(logger)
    # TensorBoard's directory first: the filterviz TensorBoard plugin reads the history there.
    csv_loggers = [logger for logger in loggers if _is_a(logger, CSV_LOGGER)]
    output_dir = _first_log_dir(tensorboard_loggers) or _first_log_dir(csv_loggers) or log_dir
    if without_images or not any(sink.takes_images for sink in sinks.values()):
        directory = os.path.join(output_dir, PNG_FOLDER)
        # Made at the first write: a directory that cannot be made costs the images, with one warning, not the fit.
        sinks["PNG files"] = DirectorySink(directory, create_now=False)
        _explain_png_files(directory, without_images)
    return SinkGroup(sinks), output_dir


def _first_log_dir(loggers: Sequence[Any]) -> Optional[str]:
    return next((logger.log_dir for logger in loggers if getattr(logger, "log_dir", None)), None)


def _is_a(logger: Any, class_name: str) -> bool:
    return any(cls.__name__ == class_name for cls in type(logger).__mro__)


def _unique_name(name: str, taken: Mapping[str, Any]) -> str:
    number, unique = 1, name
    while unique in taken:
        number += 1
        unique = f"{name} #{number}"
    return unique


def _explain_png_files(directory: str, without_images: list[str]) -> None:
    with_images = ", ".join(sorted(name for name, sink_class in _SINK_CLASSES.items() if sink_class.takes_images))
    if without_images:
        rank_zero_warn(
            f"filterviz: {', '.join(without_images)} cannot take the snapshot images yet (these loggers can: "
            f"{with_images}); it gets the scalars through `log_metrics`, and the images go to PNG files in {directory}."
        )
    else:
        rank_zero_info(
            f"filterviz: no logger that takes images ({with_images}); writing PNG files and scalars.csv to {directory}"
        )


def _import_sink_modules() -> None:
    # Importing a module twice costs a dictionary look-up: no need to remember having done it.
    for module in SINK_MODULES:
        importlib.import_module(module)
