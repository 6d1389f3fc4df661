"""The views: every output of the monitor, each a registered :class:`View`.

A view turns a judged :class:`~lightning_filterviz.core.records.Snapshot`, a validation
run's :class:`~lightning_filterviz.core.records.DatasetExamples`, a set of
:class:`~lightning_filterviz.core.records.FeatureVisualizations` or a run's
:class:`~lightning_filterviz.core.records.RunEnding` into a frozen
:class:`~lightning_filterviz.core.records.Rendered` (images, scalars, tables, history
files), and declares the tags it logs. Every module in this package is imported on first
use, and each registers its views with :func:`register_view`: adding a view is adding a
file. Publishing writes what the views rendered and draws nothing itself.

Views run on the writer thread (with ``background=True``); they draw in NumPy, as a torch op
on a second thread starts a second OpenMP team.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import textwrap
import threading
from typing import Any, ClassVar, Iterable, Optional, TypeVar

import numpy as np

from lightning_filterviz.core.arguments import WIDTH
from lightning_filterviz.core.filters import displayed_filters
from lightning_filterviz.core.records import DatasetExamples, FeatureVisualizations, Rendered, RunEnding, Snapshot
from lightning_filterviz.core.settings import VisualizerSettings
from lightning_filterviz.core.tags import LoggedTag

__all__ = [
    "View",
    "ViewContext",
    "logged_tags",
    "register_view",
    "registered_views",
    "render_ending",
    "render_examples",
    "render_feature_vis",
    "render_snapshot",
    "with_logged_tags",
]


class ViewContext:
    """What a view may know besides its record: the settings, whether the run keeps history
    files, and what several views of one snapshot share (computed once).

    Args:
        settings: the engine's settings.
        keeps_history: whether history files are written (a history view renders them only then).
    """

    def __init__(self, settings: VisualizerSettings, *, keeps_history: bool) -> None:
        self.settings = settings
        self.keeps_history = keeps_history
        self._drawn: dict[int, dict[str, np.ndarray]] = {}

    def drawn_filters(self, snapshot: Snapshot) -> dict[str, np.ndarray]:
        """Per layer, the drawn part of its filters (:func:`displayed_filters`), found once
        for the weight grid and the history file."""
        key = id(snapshot)
        if key not in self._drawn:
            self._drawn[key] = {
                name: displayed_filters(layer.weight.numpy(), layer.rgb) for name, layer in snapshot.layers.items()
            }
        return self._drawn[key]


class View:
    """One output of the monitor. Subclass it, set :attr:`tags`, override the occasions the
    output is drawn at, and decorate the class with :func:`register_view`.

    Each method returns a :class:`~lightning_filterviz.core.records.Rendered` (at the step it
    is logged at) or ``None`` when there is nothing to draw; the defaults draw nothing.

    Example::

        @register_view
        class MeanDrift(View):
            tags = (LoggedTag("filterviz/mean_drift", "scalar", "mean drift over every watched conv"),)

            def at_snapshot(self, snapshot, context):
                values = [float(drift.mean()) for drift in snapshot.drift.values()]
                return Rendered(snapshot.step, scalars={"filterviz/mean_drift": sum(values) / len(values)})
    """

    tags: ClassVar[tuple[LoggedTag, ...]] = ()

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        """What a judged snapshot shows."""
        return None

    def at_examples(self, examples: DatasetExamples, context: ViewContext) -> Optional[Rendered]:
        """What a validation run's dataset examples show."""
        return None

    def at_ending(self, ending: RunEnding, context: ViewContext) -> Optional[Rendered]:
        """What the end of a run shows."""
        return None

    def at_feature_vis(self, visuals: FeatureVisualizations, context: ViewContext) -> Optional[Rendered]:
        """What a set of feature visualizations shows."""
        return None


ViewClass = TypeVar("ViewClass", bound=type[View])

_REGISTERED: list[View] = []
_DISCOVERY = threading.Lock()
_discovered = False


def register_view(cls: ViewClass) -> ViewClass:
    """Class decorator: draw this view from now on (one instance serves every run).

    Raises:
        TypeError: if ``cls`` is not a :class:`View`.
        ValueError: if one of its tags is already another view's.
    """
    if not (isinstance(cls, type) and issubclass(cls, View)):
        raise TypeError(f"register_view takes a View subclass, got {cls!r}.")
    taken = {each.tag: type(view).__name__ for view in _REGISTERED for each in view.tags}
    clashing = [each.tag for each in cls.tags if each.tag in taken]
    if clashing:
        raise ValueError(f"{cls.__name__} logs {clashing[0]!r}, which {taken[clashing[0]]} logs already.")
    _REGISTERED.append(cls())
    return cls


def unregister_view(cls: type[View]) -> None:
    """Stop drawing a view registered with :func:`register_view` (for a view added at run time)."""
    _REGISTERED[:] = [view for view in _REGISTERED if type(view) is not cls]


def registered_views() -> tuple[View, ...]:
    """Every registered view, those of this package first (in the order of their modules' names)."""
    _discover()
    return tuple(_REGISTERED)


def logged_tags() -> tuple[LoggedTag, ...]:
    """Every tag the registered views log, in their order."""
    return tuple(each for view in registered_views() for each in view.tags)


def render_snapshot(snapshot: Snapshot, context: ViewContext) -> list[Rendered]:
    """What every view draws of a judged snapshot, merged per step."""
    return _merged(view.at_snapshot(snapshot, context) for view in registered_views())


def render_examples(examples: DatasetExamples, context: ViewContext) -> list[Rendered]:
    """What every view draws of a validation run's dataset examples, merged per step."""
    return _merged(view.at_examples(examples, context) for view in registered_views())


def render_feature_vis(visuals: FeatureVisualizations, context: ViewContext) -> list[Rendered]:
    """What every view draws of a set of feature visualizations, merged per step."""
    return _merged(view.at_feature_vis(visuals, context) for view in registered_views())


def render_ending(ending: RunEnding, context: ViewContext) -> list[Rendered]:
    """What every view draws at the end of a run, merged per step."""
    return _merged(view.at_ending(ending, context) for view in registered_views())


def with_logged_tags(docstring: str) -> str:
    """``docstring`` with its line ``<logged tags>`` replaced by a list of :func:`logged_tags`,
    indented like that line.

    Raises:
        ValueError: if ``docstring`` has no such line.
    """
    found = re.search(r"^( *)<logged tags>$", docstring, flags=re.MULTILINE)
    if found is None:
        raise ValueError("The docstring has no `<logged tags>` line to list the tags at.")
    indent = found.group(1)
    entries = [f"- ``{each.tag}`` ({each.kind}): {each.what}" for each in logged_tags()]
    text = ",\n".join(_wrapped(entry, indent) for entry in entries) + "."
    return docstring[: found.start()] + text + docstring[found.end() :]


def _discover() -> None:
    # Importing a module of this package registers its views; done once, whichever thread asks first.
    global _discovered
    with _DISCOVERY:
        if _discovered:
            return
        package = __name__.rpartition(".")[0]
        path = importlib.import_module(package).__path__
        for module in sorted(info.name for info in pkgutil.iter_modules(path)):
            importlib.import_module(f"{package}.{module}")
        _discovered = True


def _merged(outputs: Iterable[Optional[Rendered]]) -> list[Rendered]:
    """One :class:`Rendered` per step, in the order the steps first appear."""
    merged: dict[int, dict[str, Any]] = {}
    for output in outputs:
        if not output:
            continue
        into = merged.setdefault(output.step, {"images": {}, "scalars": {}, "tables": {}, "history": ()})
        into["images"].update(output.images)
        into["scalars"].update(output.scalars)
        into["tables"].update(output.tables)
        into["history"] += output.history
    return [Rendered(step, **parts) for step, parts in merged.items()]


def _wrapped(entry: str, indent: str) -> str:
    lines = textwrap.wrap(
        entry,
        width=WIDTH,  # as the Args sections are
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return "\n".join(lines)
