"""The Filters tab in a real browser: Debian's Chromium, driven by Playwright, kept off the
network, on a real TensorBoard process. It opens the tab, picks a layer, clicks a filter,
and checks that the filter's timeline shows one frame per snapshot (and its feature
visualizations one per validation run that made them) and that the page logged no console
error or warning. Screenshots go to the test's directory (and to
``$FILTERVIZ_SCREENSHOTS`` when set).

Skipped, with the reason, only where no Chromium is installed (``apt-get install chromium``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from lightning_filterviz import FilterVisualizer
from lightning_filterviz.core.history import history_dir_of
from test_board_server import TensorBoard

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium); .ci/run installs it"
)

RUN = "browser_run"
STEPS = (0, 10, 20, 30, 40)
FEATVIS_STEPS = (20, 40)
DEAD_FILTER = 2
# Chromium talks to the local TensorBoard only: every host name fails to resolve but 127.0.0.1.
OFF_THE_NETWORK = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-sandbox",
    "--disable-gpu",
]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five snapshots of a two-conv model by the engine, with one filter of the second conv dead,
    gradients read before each but the first, feature visualizations of the second conv at two steps."""
    root = tmp_path_factory.mktemp("browser")
    run_dir = root / RUN
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        model[2].bias[DEAD_FILTER] = -1000.0
    probe = torch.rand(2, 3, 12, 12)
    with SummaryWriter(str(run_dir)) as writer:
        visualizer = FilterVisualizer(
            writer, history_dir=history_dir_of(run_dir), views_every=2, dead_patience=1, featvis_layers=["2"]
        )
        for step in STEPS:
            if step:
                model.zero_grad()
                model(probe).sum().backward()
                visualizer.read_gradients(model)
            visualizer.snapshot(model, probe, step)
            if step in FEATVIS_STEPS:
                visualizer.visualize_features(model, probe, step, steps=8)
            with torch.no_grad():
                model[0].weight.add_(0.05 * torch.randn_like(model[0].weight))
        visualizer.close()
    return root


@pytest.fixture
def tab(logdir: Path, tmp_path: Path) -> Iterator[Any]:
    """The TensorBoard page on the Filters tab, and the console messages of the tab's frame."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is in the [dev] extra")
    board = TensorBoard(logdir, "false", "", tmp_path / "tensorboard.log")
    try:
        board.wait_for("data/plugin/filterviz/runs", lambda answer: bool(answer["runs"]))
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=OFF_THE_NETWORK)
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            messages: list[Any] = []
            page.on("console", lambda message: messages.append(message))
            page.goto(f"{board.base}/#filterviz")
            yield page, messages
            browser.close()
    finally:
        board.stop()


def the_tabs_frame(page: Any, seconds: float = 30.0) -> Any:
    """The iframe TensorBoard loads the Filters page into, once the page has drawn in it."""
    for _ in range(int(seconds * 10)):
        for frame in page.frames:
            if "plugin_entry.html?name=filterviz" in frame.url and frame.query_selector("#layer-select"):
                return frame
        page.wait_for_timeout(100)
    raise AssertionError(f"no frame of the Filters tab among {[frame.url for frame in page.frames]}")


def save_screenshot(page: Any, directory: Path, name: str) -> None:
    for target in (directory, Path(os.environ.get("FILTERVIZ_SCREENSHOTS", directory))):
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / name))


def test_a_filters_timeline_has_a_frame_per_snapshot_and_the_page_logs_no_error(tab, tmp_path):
    page, messages = tab
    frame = the_tabs_frame(page)
    frame.wait_for_selector("#layer-select option[value='2']", state="attached")
    frame.select_option("#layer-select", "2")
    frame.wait_for_selector(f"button.map-row[data-filter='{DEAD_FILTER}']")
    assert "5 filters" in frame.inner_text("#layer-summary")
    assert frame.locator("#layer-health svg.chart").count() == 3  # effective rank, srank, CKA
    assert frame.locator("#layer-gradients svg.chart").count() == 1  # the gradient-dormant fraction
    save_screenshot(page, tmp_path, "filters_tab_map.png")

    frame.click(f"button.map-row[data-filter='{DEAD_FILTER}']")
    frame.wait_for_function(f"document.querySelectorAll('#weights-timeline .frame').length === {len(STEPS)}")
    titles = frame.eval_on_selector_all("#weights-timeline .frame", "frames => frames.map(frame => frame.title)")
    assert titles == [f"step {step}" for step in STEPS]
    assert "dead" in frame.inner_text("#filter-summary")
    assert frame.locator("#curves svg.chart").count() == 5  # with the gradient score
    frame.wait_for_function(f"document.querySelectorAll('#featvis-timeline .frame').length === {len(FEATVIS_STEPS)}")
    titles = frame.eval_on_selector_all("#featvis-timeline .frame", "frames => frames.map(frame => frame.title)")
    assert titles == [f"step {step}" for step in FEATVIS_STEPS]
    assert frame.locator("#curves .band-grad-dormant").count() >= 1  # the dead filter gets no gradient
    save_screenshot(page, tmp_path, "filters_tab_filter.png")

    url = page.url  # the address names run, layer and filter, so the link can be shared
    assert f"p.filterviz.run={RUN}" in url and "p.filterviz.layer=2" in url
    assert f"p.filterviz.filter={DEAD_FILTER}" in url

    of_the_tab = [
        message for message in messages
        if message.type in ("error", "warning") and "filterviz" in (message.location or {}).get("url", "")
    ]
    assert of_the_tab == [], [f"{message.type}: {message.text} ({message.location})" for message in of_the_tab]


def test_a_shared_link_opens_that_filter(tab, tmp_path):
    page, _ = tab
    base = page.url.split("#")[0]
    # Opened in a page of its own, as a link someone sent would be.
    shared = page.context.new_page()
    shared.goto(f"{base}#filterviz&p.filterviz.run={RUN}&p.filterviz.layer=0&p.filterviz.filter=4")
    frame = the_tabs_frame(shared)
    frame.wait_for_function(f"document.querySelectorAll('#weights-timeline .frame').length === {len(STEPS)}")
    assert "filter 4" in frame.inner_text("#filter-title")
    assert "net" not in frame.inner_text("#filter-title") and "0" in frame.inner_text("#filter-title")
    assert not frame.is_visible("#featvis-view")  # only the featvis_layers have feature visualizations


def test_a_link_opened_in_the_open_tab_shows_that_filter(tab):
    page, messages = tab
    frame = the_tabs_frame(page)
    frame.wait_for_selector("button.map-row[data-filter='0']")  # the tab shows its first layer
    page.evaluate(f"location.hash = '#filterviz&p.filterviz.run={RUN}&p.filterviz.layer=2&p.filterviz.filter=3'")
    frame.wait_for_function("document.querySelector('#filter-title')?.textContent.includes('filter 3')")
    assert frame.eval_on_selector("#layer-select", "select => select.value") == "2"
    frame.wait_for_function(f"document.querySelectorAll('#weights-timeline .frame').length === {len(STEPS)}")
    of_the_tab = [message for message in messages if message.type == "error"]
    assert of_the_tab == [], [message.text for message in of_the_tab]
