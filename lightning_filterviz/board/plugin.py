"""The Filters tab's server side: routes under ``data/plugin/filterviz/`` of TensorBoard.

The data comes from each run's history files (:mod:`lightning_filterviz.board.run_history`),
not from the event files, so the tab sees every snapshot (TensorBoard keeps a sample of each
image tag) with both of TensorBoard's data loaders. Only runs that TensorBoard itself lists
are served: a run named in a request must be one of them, and its history directory is the
one under that run's own directory (or the one its history note names), so no path taken
from a URL reaches the file system. Routes and their answers: see :meth:`get_plugin_apps`.
NumPy only: no torch is imported into TensorBoard.
"""

from __future__ import annotations

import collections
import json
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
from tensorboard import context as tb_context
from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from lightning_filterviz.drawing import filter_frames
from lightning_filterviz.board.run_history import GRAD_DORMANT, UNKNOWN, LayerSeries, RunHistory
from lightning_filterviz.core.history import HISTORY_POINTER, history_dir_of
from lightning_filterviz.core.png import encode_png

__all__ = ["PLUGIN_NAME", "FilterVizPlugin"]

PLUGIN_NAME = "filterviz"
# Sprites drawn lately, by what they show: a page polls the same filter while a run trains.
SPRITES_KEPT = 32
# A WSGI application: (environ, start_response) -> the body's chunks.
WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]
Sprite = tuple[bytes, tuple[int, int], int]  # PNG bytes, a frame's (height, width), frames per row
# A filter's pictures of one kind that are not per snapshot, each first its step: dataset
# examples ``(step, patches, values)`` or feature visualizations ``(step, image)``.
Pictures = Sequence[tuple[Any, ...]]
# 10 ** k is exact in a double for these k, so rounding with it matches Python's formatting.
_EXACT_POWERS_OF_TEN = 22
# What a sprite shows, where its kind is not already a word.
_SPRITE_NAMES = {"feature_vis": "feature visualizations"}


class FilterVizPlugin(base_plugin.TBPlugin):
    """The "Filters" tab: every filter of a run's watched convs over every snapshot.

    Args:
        context: TensorBoard's :class:`~tensorboard.plugins.base_plugin.TBContext`.
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        # Nothing is read here: TensorBoard builds every plugin at its start.
        self._logdir = Path(context.logdir) if context.logdir else None
        self._data_provider = context.data_provider
        self._histories: dict[Path, RunHistory] = {}
        self._sprites: collections.OrderedDict[tuple[Any, ...], Sprite] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get_plugin_apps(self) -> dict[str, WSGIApp]:
        """The routes: ``index.js`` (the page), ``runs``, ``layer?run=&layer=``,
        ``filter?run=&layer=&filter=`` (JSON) and ``weights.png``, ``maps.png``,
        ``examples.png``, ``featvis.png`` with the same arguments as ``filter`` (sprites of
        its frames).

        The ``layer`` answer: ``steps``; per filter and step ``state``, ``drift``,
        ``norm_ratio``, ``mean_activation``, ``dormant_score``, ``grad_score`` (``null``
        where the gradients were not read) and ``grad_dormant`` (``true``, ``false`` or
        ``null``); ``health``; ``grad_dormant_fraction`` (``steps`` whose gradients were
        read and the fraction's ``values``); ``frozen``; ``maps_steps``,
        ``examples_steps`` and ``feature_vis_steps``. The ``filter`` answer: the filter's
        row of each, ``frozen``, and ``weights``, ``maps``, ``examples``, ``feature_vis``:
        each ``null`` or its sprite's ``url``, ``steps``, ``tile`` and ``columns``."""
        routes = {
            "/index.js": self._serve_page,
            "/runs": self._serve_runs,
            "/layer": self._serve_layer,
            "/filter": self._serve_filter,
            "/weights.png": self._serve_weights,
            "/maps.png": self._serve_maps,
            "/examples.png": self._serve_examples,
            "/featvis.png": self._serve_feature_vis,
        }
        return {route: _wsgi(handle) for route, handle in routes.items()}

    def is_active(self) -> bool:
        """Whether a run TensorBoard lists has monitor history (a few ``stat`` calls per run)."""
        runs = self._listed_runs(tb_context.RequestContext(), "")
        return any(self._history_dir_of(run) is not None for run in runs)

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Filters")

    def _serve_page(self, request: wrappers.Request) -> wrappers.Response:
        page = resources.files("lightning_filterviz.board").joinpath("static/index.js").read_bytes()
        return http_util.Respond(request, page, "text/javascript")

    def _serve_runs(self, request: wrappers.Request) -> wrappers.Response:
        runs = []
        for run in sorted(self._request_runs(request)):
            history = self._history_of(run)
            summary = history.summary() if history is not None else None
            if summary is not None:
                layers, snapshots, last_step = summary
                runs.append({"run": run, "layers": list(layers), "snapshots": snapshots, "last_step": last_step})
        return _json(request, {"runs": runs})

    def _serve_layer(self, request: wrappers.Request) -> wrappers.Response:
        return self._answer(request, self._layer_answer)

    def _serve_filter(self, request: wrappers.Request) -> wrappers.Response:
        return self._answer(request, self._filter_answer)

    def _serve_weights(self, request: wrappers.Request) -> wrappers.Response:
        return self._answer(request, self._weights_png)

    def _serve_maps(self, request: wrappers.Request) -> wrappers.Response:
        return self._answer(request, self._maps_png)

    def _serve_examples(self, request: wrappers.Request) -> wrappers.Response:
        return self._answer(request, self._examples_png)

    def _serve_feature_vis(self, request: wrappers.Request) -> wrappers.Response:
        return self._answer(request, self._feature_vis_png)

    def _answer(self, request: wrappers.Request, make: Callable[[wrappers.Request], wrappers.Response]) -> wrappers.Response:
        try:
            return make(request)
        except _RequestError as error:
            return _json(request, {"error": str(error)}, code=error.code)

    def _layer_answer(self, request: wrappers.Request) -> wrappers.Response:
        run, layer, series = self._series(request)
        answer = {"run": run, "layer": layer, "out_channels": series.out_channels, "drawn": series.drawn}
        answer.update(_rows(series))
        answer["health"] = {key: _json_rows(values) for key, values in series.health.items()}
        steps, fractions = series.grad_dormant_fraction()
        answer["grad_dormant_fraction"] = {"steps": list(steps), "values": _json_rows(fractions)}
        answer["frozen"] = series.frozen
        answer["maps_steps"] = list(series.maps_steps)
        answer["examples_steps"] = list(self._history(run).examples_steps(layer))
        answer["feature_vis_steps"] = list(self._history(run).feature_vis_steps(layer))
        return _json(request, answer)

    def _filter_answer(self, request: wrappers.Request) -> wrappers.Response:
        run, layer, series = self._series(request)
        channel = _filter_of(request, series)
        answer: dict[str, Any] = {"run": run, "layer": layer, "filter": channel, "frozen": series.frozen}
        answer.update(_rows(series, channel))
        query = f"run={_quoted(run)}&layer={_quoted(layer)}&filter={channel}"
        weights = self._sprite_of(run, layer, channel, "weights", series)
        answer["weights"] = _sprite_answer(f"weights.png?{query}", series.steps, weights) if weights else None
        maps = self._sprite_of(run, layer, channel, "maps", series)
        answer["maps"] = _sprite_answer(f"maps.png?{query}", series.maps_steps, maps) if maps else None
        examples = self._history(run).examples(layer, channel)
        sprite = self._sprite_of(run, layer, channel, "examples", series, examples)
        steps = tuple(step for step, _, _ in examples)
        answer["examples"] = _sprite_answer(f"examples.png?{query}", steps, sprite) if sprite else None
        pictures = self._history(run).feature_vis(layer, channel)
        sprite = self._sprite_of(run, layer, channel, "feature_vis", series, pictures)
        steps = tuple(step for step, _ in pictures)
        answer["feature_vis"] = _sprite_answer(f"featvis.png?{query}", steps, sprite) if sprite else None
        return _json(request, answer)

    def _weights_png(self, request: wrappers.Request) -> wrappers.Response:
        return self._png(request, "weights")

    def _maps_png(self, request: wrappers.Request) -> wrappers.Response:
        return self._png(request, "maps")

    def _examples_png(self, request: wrappers.Request) -> wrappers.Response:
        return self._png(request, "examples")

    def _feature_vis_png(self, request: wrappers.Request) -> wrappers.Response:
        return self._png(request, "feature_vis")

    def _png(self, request: wrappers.Request, kind: str) -> wrappers.Response:
        run, layer, series = self._series(request)
        channel = _filter_of(request, series)
        pictures: Optional[Pictures] = None
        if kind == "examples":
            pictures = self._history(run).examples(layer, channel)
        elif kind == "feature_vis":
            pictures = self._history(run).feature_vis(layer, channel)
        sprite = self._sprite_of(run, layer, channel, kind, series, pictures)
        if sprite is None:
            what = _SPRITE_NAMES.get(kind, kind)
            raise _RequestError(404, f"the history of run {run!r} has no {what} for filter {channel} of {layer!r}")
        return http_util.Respond(request, sprite[0], "image/png")

    def _sprite_of(
        self,
        run: str,
        layer: str,
        channel: int,
        kind: str,
        series: LayerSeries,
        pictures: Optional[Pictures] = None,
    ) -> Optional[Sprite]:
        """``(png, tile, columns)`` of a filter's sprite of ``kind``, or ``None`` when the
        history has no frame of it; kept for as long as its frames are the same.
        ``pictures``: the filter's dataset examples or feature visualizations."""
        shown = {"weights": series.steps, "maps": series.maps_steps}.get(kind)
        steps = shown if shown is not None else tuple(picture[0] for picture in pictures or ())
        key = (run, layer, channel, kind, steps)
        with self._lock:
            if key in self._sprites:
                self._sprites.move_to_end(key)
                return self._sprites[key]
        sprite = self._draw(run, layer, channel, kind, series, pictures)
        if sprite is None:
            return None
        kept = (encode_png(sprite.image), sprite.tile, sprite.columns)
        with self._lock:
            self._sprites[key] = kept
            while len(self._sprites) > SPRITES_KEPT:
                self._sprites.popitem(last=False)
        return kept

    def _draw(
        self,
        run: str,
        layer: str,
        channel: int,
        kind: str,
        series: LayerSeries,
        pictures: Optional[Pictures],
    ) -> Optional[filter_frames.Sprite]:
        if kind == "weights":
            return filter_frames.weights_sprite(series.filters[:, channel]) if channel < series.drawn else None
        if kind == "maps":
            kept = self._history(run).maps(layer, channel)
            return filter_frames.maps_sprite([maps for _, _, maps in kept], channel, series.signed) if kept else None
        if not pictures:
            return None
        if kind == "feature_vis":
            return filter_frames.feature_vis_sprite([image for _, image in pictures])
        return filter_frames.examples_sprite([(patches, values) for _, patches, values in pictures])

    def _series(self, request: wrappers.Request) -> tuple[str, str, LayerSeries]:
        run = _argument(request, "run")
        if run not in self._request_runs(request):
            raise _RequestError(404, f"no run {run!r} in this TensorBoard")
        history = self._history_of(run)
        if history is None:
            raise _RequestError(404, f"run {run!r} has no filterviz history")
        layer = _argument(request, "layer")
        series = history.layer(layer)
        if series is None:
            raise _RequestError(404, f"the history of run {run!r} has no layer {layer!r}")
        return run, layer, series

    def _history(self, run: str) -> RunHistory:
        history = self._history_of(run)
        assert history is not None  # checked by _series before
        return history

    def _history_of(self, run: str) -> Optional[RunHistory]:
        directory = self._history_dir_of(run)
        if directory is None:
            return None
        with self._lock:
            if directory not in self._histories:
                self._histories[directory] = RunHistory(directory)
            return self._histories[directory]

    def _history_dir_of(self, run: str) -> Optional[Path]:
        """The history of a run TensorBoard listed: under the run's directory, or where the
        note the monitor left there says (its history went beside another logger's files)."""
        if self._logdir is None:
            return None
        run_dir = self._logdir / run
        own = history_dir_of(run_dir)
        if own.is_dir():
            return own
        try:
            pointed = Path((run_dir / HISTORY_POINTER).read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            return None
        return pointed if pointed.is_absolute() and pointed.is_dir() else None

    def _request_runs(self, request: wrappers.Request) -> set[str]:
        return self._listed_runs(plugin_util.context(request.environ), plugin_util.experiment_id(request.environ))

    def _listed_runs(self, ctx: Any, experiment_id: str) -> set[str]:
        return {run.run_name for run in self._data_provider.list_runs(ctx, experiment_id=experiment_id)}


class _RequestError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _wsgi(handle: Callable[[wrappers.Request], wrappers.Response]) -> WSGIApp:
    def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return handle(wrappers.Request(environ))(environ, start_response)

    return application


def _argument(request: wrappers.Request, name: str) -> str:
    value = request.args.get(name)
    if not value:
        raise _RequestError(400, f"missing argument {name!r}")
    return str(value)


def _filter_of(request: wrappers.Request, series: LayerSeries) -> int:
    text = _argument(request, "filter")
    if not text.isdigit() or int(text) >= series.out_channels:
        raise _RequestError(400, f"filter must be a number from 0 to {series.out_channels - 1}, got {text!r}")
    return int(text)


def _rows(series: LayerSeries, channel: Optional[int] = None) -> dict[str, Any]:
    """The steps and each statistic's rows (filters x steps), or one filter's row."""
    rows = slice(None) if channel is None else channel
    return {
        "steps": list(series.steps),
        "state": series.state[rows].tolist(),
        "drift": _json_rows(series.drift[rows]),
        "norm_ratio": _json_rows(series.norm_ratio[rows]),
        "mean_activation": _json_rows(series.mean_activation[rows]),
        "dormant_score": _json_rows(series.dormant_score[rows]),
        "grad_score": _json_rows(series.grad_score[rows]),
        "grad_dormant": _json_flags(series.grad_dormant[rows]),
    }


def _json_flags(table: np.ndarray) -> list[Any]:
    """``true`` for gradient-dormant, ``false`` for not, ``null`` where not judged, nested as ``table``."""
    flags = np.where(table == GRAD_DORMANT, True, False).astype(object)
    flags[table == UNKNOWN] = None
    return flags.tolist()


def _json_rows(table: np.ndarray) -> list[Any]:
    """Floats with 6 significant digits (a short JSON number) and ``None`` for NaN, nested as ``table``."""
    flat = np.asarray(table, dtype=np.float64).ravel()
    finite = np.isfinite(flat)
    shown = np.where(finite, flat, 0.0)
    # Rounded at the 6th significant digit in NumPy, not value by value (a layer map's tables
    # hold filters x snapshots values each): the number times a power of ten, rounded, divided
    # back, is what "%.6g" writes wherever that power of ten is exact in a double (up to 1e22).
    exponent = np.floor(np.log10(np.abs(shown), where=shown != 0, out=np.zeros_like(shown))).astype(np.int64)
    digits = 5 - exponent
    exact = np.abs(digits) <= _EXACT_POWERS_OF_TEN
    up = 10.0 ** np.where(exact & (digits > 0), digits, 0)
    down = 10.0 ** np.where(exact & (digits < 0), -digits, 0)
    rounded = (np.round(shown * up / down) / up * down).astype(object)
    for index in np.flatnonzero(finite & ~exact):  # below 1e-17 or from 1e28 on: rare, formatted one by one
        rounded[index] = float(f"{flat[index]:.6g}")
    rounded[~finite] = None
    return rounded.reshape(np.shape(table)).tolist()


def _sprite_answer(url: str, steps: tuple[int, ...], sprite: Sprite) -> dict[str, Any]:
    _, tile, columns = sprite
    return {"url": url, "steps": list(steps), "tile": list(tile), "columns": columns}


def _quoted(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _json(request: wrappers.Request, answer: dict[str, Any], code: int = 200) -> wrappers.Response:
    return http_util.Respond(request, json.dumps(answer, allow_nan=False), "application/json", code=code)
