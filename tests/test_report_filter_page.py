"""The report's filter page, over a run trained with FilterMonitor: a section per drawn filter
of one layer (weights, feature maps, dataset examples, curves) and an index of their states.

A filter's weights frame at a step is held, pixel for pixel, against its tile in the
TensorBoard image of that step and against the Filters tab's frame of it. Also: the planted
dead filter is marked dead, ``--filter-layer`` picks the layer and names the layers there
are when it names none of them, and histories without feature maps or statistics (older
writers) still build.
"""

from __future__ import annotations

import base64
import io
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins import base_plugin
from torch import nn
from werkzeug.test import Client

from conftest import Classifier, FilterMonitor, RandomImages, pl, read_events, trainer_kwargs
from lightning_filterviz import load_history
from lightning_filterviz.__main__ import main
from lightning_filterviz.board.plugin import FilterVizPlugin
from lightning_filterviz.core.history import history_dir_of
from lightning_filterviz.core.tiles import square_columns, tile_origin
from lightning_filterviz.report import filter_series
from lightning_filterviz.report.build import ReportError, ReportWarning, build_report
from lightning_filterviz.report.filter_page import FRAME_GAP, filter_anchor

LAYERS = ("net.0", "net.2")
FILTERS = {"net.0": 6, "net.2": 8}
DEAD_FILTER = 4  # of net.0: its bias keeps its ReLU at zero
COMPARED_FILTER = 3
RUN = "tb/version_0"


# ---------------------------------------------------------------- the page, parsed


@dataclass
class PageImage:
    sections: tuple[str, ...]  # ids of the sections it lies in, outermost first
    alt: str
    pixels: np.ndarray


class Page(HTMLParser):
    """The report's images, the filter index's links and each section's text, by section id."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[PageImage] = []
        self.index: dict[str, tuple[str, str]] = {}  # href -> (class, text)
        self.text: dict[str, str] = {}
        self._sections: list[str] = []
        self._link: Optional[tuple[str, str]] = None
        self._in_index = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "section":
            self._sections.append(attributes.get("id", ""))
        elif tag == "nav" and "filter-index" in attributes.get("class", ""):
            self._in_index = True
        elif tag == "a" and self._in_index:
            self._link = (attributes["href"], attributes.get("class", ""))
            self.index[attributes["href"]] = (attributes.get("class", ""), "")
        elif tag == "img" and attributes["src"].startswith("data:image/png;base64,"):
            png = base64.b64decode(attributes["src"].split(",", 1)[1])
            pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            self.images.append(PageImage(tuple(self._sections), attributes["alt"], pixels))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._sections.pop()
        elif tag == "nav":
            self._in_index = False
        elif tag == "a":
            self._link = None

    def handle_data(self, data: str) -> None:
        if self._link is not None:
            href, css = self._link
            self.index[href] = (css, self.index[href][1] + data)
        for section in self._sections:
            self.text[section] = self.text.get(section, "") + data

    def image(self, section: str, alt: str) -> np.ndarray:
        found = [image.pixels for image in self.images if section in image.sections and image.alt == alt]
        assert len(found) == 1, (section, alt, [(image.sections, image.alt) for image in self.images][:20])
        return found[0]

    def alts(self, section: str) -> list[str]:
        return [image.alt for image in self.images if section in image.sections]


def parsed(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def frames_of(strip: np.ndarray, count: int, gap: int = 0) -> list[np.ndarray]:
    """The ``count`` frames of a timeline in one row, left to right, ``gap`` pixels apart."""
    width = (strip.shape[1] + gap) // count - gap
    assert strip.shape[1] == count * (width + gap) - gap
    return [strip[:, index * (width + gap) : index * (width + gap) + width] for index in range(count)]


def tensorboard_tile(grid: np.ndarray, index: int, filters: int, tile: tuple[int, int]) -> np.ndarray:
    """Filter ``index``'s tile, without its frame, in a TensorBoard weights grid of ``filters``."""
    height, width = tile
    top, left = tile_origin(index, height, width, square_columns(filters))
    return grid[top : top + height, left : left + width]


# ---------------------------------------------------------------- the run


@dataclass
class TrainedRun:
    logdir: Path
    run_dir: Path
    report: Path
    images: dict[str, dict[int, np.ndarray]]
    steps: list[int]
    maps_steps: list[int]
    examples_steps: list[int]


def _conv_relu_net() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(3, FILTERS["net.0"], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(FILTERS["net.0"], FILTERS["net.2"], 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(FILTERS["net.2"], 3),
    )
    with torch.no_grad():
        net[0].bias[DEAD_FILTER] = -1000.0
    return net


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """A fit with FilterMonitor (4 snapshots, feature maps at 3, dataset examples at 3
    validation runs) and its report, at the default layer."""
    logdir = tmp_path_factory.mktemp("logs")
    torch.manual_seed(0)
    trainer = pl.Trainer(callbacks=[FilterMonitor(views_every=2)], **trainer_kwargs(logdir, max_epochs=3))
    trainer.fit(Classifier(_conv_relu_net()), datamodule=RandomImages())
    run_dir = Path(trainer.logger.log_dir)
    files = [load_history(path) for path in sorted(history_dir_of(run_dir).glob("step_*.npz"))]
    examples = sorted(history_dir_of(run_dir).glob("validation_examples_*.npz"))
    return TrainedRun(
        logdir=logdir,
        run_dir=run_dir,
        report=build_report(run_dir, logdir / "report.html"),
        images=read_events(run_dir).images,
        steps=[int(arrays["step"]) for arrays in files],
        maps_steps=[int(arrays["step"]) for arrays in files if "net.0/maps" in arrays],
        examples_steps=[int(load_history(path)["step"]) for path in examples],
    )


@pytest.fixture(scope="module")
def page(trained: TrainedRun) -> Page:
    return parsed(trained.report)


def tab_weights(logdir: Path, layer: str, channel: int) -> np.ndarray:
    """The Filters tab's weights sprite of one filter, as TensorBoard serves it."""
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=MultiplexerDataProvider(multiplexer, str(logdir)))
    route = FilterVizPlugin(context).get_plugin_apps()["/weights.png"]
    response = Client(route).get("/weights.png", query_string={"run": RUN, "layer": layer, "filter": str(channel)})
    assert response.status_code == 200, response.get_data(as_text=True)
    return np.asarray(Image.open(io.BytesIO(response.get_data())).convert("RGB"))


# ---------------------------------------------------------------- the frames


def test_the_run_has_what_the_page_shows(trained):
    assert len(trained.steps) == 4
    assert 1 <= len(trained.maps_steps) < len(trained.steps)
    assert len(trained.examples_steps) == 3


def test_a_weights_frame_has_the_pixels_of_the_filter_in_the_tensorboard_image_and_the_tab_of_its_step(
    trained, page
):
    section = filter_anchor("net.0", COMPARED_FILTER)
    strip = page.image(section, f"weights of filter {COMPARED_FILTER}")
    shown = frames_of(strip, len(trained.steps), FRAME_GAP)
    tab = frames_of(tab_weights(trained.logdir, "net.0", COMPARED_FILTER), len(trained.steps))
    tile = shown[0].shape[:2]
    for step, frame, tab_frame in zip(trained.steps, shown, tab):
        grid = trained.images["filterviz/weights/net.0"][step]
        np.testing.assert_array_equal(frame, tensorboard_tile(grid, COMPARED_FILTER, FILTERS["net.0"], tile), str(step))
        np.testing.assert_array_equal(frame, tab_frame, str(step))
    assert not np.array_equal(shown[0], shown[-1])  # trained between the first and last snapshot


def test_each_drawn_filter_has_a_section_with_its_timelines_and_curves(trained, page):
    for index in range(FILTERS["net.0"]):
        section = filter_anchor("net.0", index)
        assert page.alts(section) == [
            f"weights of filter {index}",
            f"feature maps of filter {index}",
            *(f"dataset examples of filter {index} at step {step}" for step in trained.examples_steps),
            f"curves of filter {index}",
        ]
        maps = page.image(section, f"feature maps of filter {index}")
        assert len(frames_of(maps, len(trained.maps_steps), FRAME_GAP)) == len(trained.maps_steps)
        assert f"step {trained.steps[0]}" in page.text[section] and f"step {trained.steps[-1]}" in page.text[section]
    assert filter_anchor("net.0", FILTERS["net.0"]) not in page.text
    assert not any(section.startswith("filter-net.2-") for section in page.text)  # the first conv by default


def test_the_dead_filter_is_marked_dead_in_the_index_and_its_section(trained, page):
    for index in range(FILTERS["net.0"]):
        css, text = page.index[f"#{filter_anchor('net.0', index)}"]
        assert ("dead" in css.split() and "dead" in text) == (index == DEAD_FILTER), (index, css, text)
    # Dead after dead_patience (2) snapshots in a row without firing.
    assert f"dead since step {trained.steps[1]}" in page.text[filter_anchor("net.0", DEAD_FILTER)]
    assert "alive at every snapshot" in page.text[filter_anchor("net.0", COMPARED_FILTER)]


def test_the_dead_filter_curves_are_shaded_red(page):
    dead = page.image(filter_anchor("net.0", DEAD_FILTER), f"curves of filter {DEAD_FILTER}").astype(int)
    alive = page.image(filter_anchor("net.0", COMPARED_FILTER), f"curves of filter {COMPARED_FILTER}").astype(int)

    def reddish(pixels: np.ndarray) -> int:  # the band's red at its alpha over white
        red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        return int(((red > 230) & (green > 150) & (green < 205) & (blue > 150) & (blue < 205)).sum())

    assert reddish(dead) > 1000
    assert reddish(alive) == 0


# ---------------------------------------------------------------- choosing the layer


def test_filter_layer_picks_the_layer(trained, tmp_path):
    page = parsed(build_report(trained.run_dir, tmp_path / "report.html", filter_layer="net.2"))
    assert f"filters-of-{'net.2'}" in page.text
    assert [href for href in page.index] == [f"#{filter_anchor('net.2', index)}" for index in range(FILTERS["net.2"])]
    assert not any(section.startswith("filter-net.0-") for section in page.text)


def test_a_filter_layer_the_run_lacks_is_an_error_naming_its_layers(trained, tmp_path):
    with pytest.raises(ReportError, match=r"no layer 'net\.9'.*net\.0, net\.2"):
        build_report(trained.run_dir, tmp_path / "report.html", filter_layer="net.9")
    assert not (tmp_path / "report.html").exists()


def test_cli_filter_layer(trained, tmp_path, capsys):
    output = tmp_path / "report.html"
    assert main(["report", str(trained.run_dir), "-o", str(output), "--filter-layer", "net.2"]) == 0
    assert capsys.readouterr().out == f"{output}\n"
    assert filter_anchor("net.2", 0) in parsed(output).text


def test_cli_bad_filter_layer_exits_2_naming_the_layers(trained, tmp_path, capsys):
    output = tmp_path / "report.html"
    assert main(["report", str(trained.run_dir), "-o", str(output), "--filter-layer", "conv9"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "filterviz report: no layer 'conv9' in the history; its layers are: net.0, net.2"
    ]
    assert not output.exists()


def test_the_ids_of_any_layer_name_are_valid_and_distinct():
    assert filter_anchor("net.0", 3) == "filter-net.0-3"
    assert filter_anchor("a b/c", 0) == "filter-a-20-b-2f-c-0"
    assert filter_anchor("a-b", 0) != filter_anchor("a_b", 0)
    assert filter_anchor("net.0", 3, "run1-") == "run1-filter-net.0-3"


# ---------------------------------------------------------------- older and damaged histories


def _rewrite_without(history: Path, dropped: tuple[str, ...]) -> None:
    """Rewrite every snapshot file without the per-layer arrays named ``dropped`` (an older writer)."""
    for path in history.glob("step_*.npz"):
        arrays = {key: value for key, value in load_history(path).items() if key.rsplit("/", 1)[-1] not in dropped}
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)


def test_a_history_without_maps_or_activation_statistics_still_builds(trained, tmp_path):
    run_dir = tmp_path / "old"
    shutil.copytree(trained.run_dir, run_dir)
    _rewrite_without(
        history_dir_of(run_dir),
        ("maps", "weight_norm_ratio", "channel_mean_abs", "channel_max", "dormant", "dead", "drift"),
    )
    page = parsed(build_report(run_dir, tmp_path / "report.html"))
    section = filter_anchor("net.0", COMPARED_FILTER)
    assert "No snapshot of this layer kept its feature maps." in page.text[section]
    assert f"feature maps of filter {COMPARED_FILTER}" not in page.alts(section)
    assert "no activation statistics" in page.text[section]
    assert "unknown" in page.index[f"#{section}"][0].split()
    # Frames need only the filters: the same as from the whole history.
    np.testing.assert_array_equal(
        page.image(section, f"weights of filter {COMPARED_FILTER}"),
        parsed(trained.report).image(section, f"weights of filter {COMPARED_FILTER}"),
    )


def test_maps_that_cannot_be_read_again_are_left_out_with_a_warning(trained, tmp_path, monkeypatch):
    def unreadable(record, layer):
        raise ReportError(f"{record.path} cannot be read again for the feature maps of {layer}: gone")

    monkeypatch.setattr(filter_series, "read_maps", unreadable)
    with pytest.warns(ReportWarning, match="cannot be read again for the feature maps of net.0"):
        page = parsed(build_report(trained.run_dir, tmp_path / "report.html"))
    assert "No snapshot of this layer kept its feature maps." in page.text[filter_anchor("net.0", 0)]
