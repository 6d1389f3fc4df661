"""Make the README's pictures from real runs of the example.

    python docs/make_pictures.py            # needs the [examples] extra; a few minutes on 2 CPU cores
    python docs/make_pictures.py --no-browser   # skip the two screenshots (no Chromium needed)

Trains the example with configs/default.yaml, then once more with a learning rate far
too high (so that filters die), and writes into docs/:
  filters_init.png, filters_trained.png   first-layer filters at step 0 and at the end
  through_the_layers.png                   one probe image's feature maps, early to deep
  dead_filters.png                         a feature-map grid with dead filters framed in red
  filmstrip.png                            the first layer's filters at every snapshot
  dataset_examples.png                     the first layer's dataset examples at the last validation run
  report.png                               the offline report (headless Chromium screenshot)
  tensorboard.png                          TensorBoard showing the monitor's images (likewise)
  filters_tab.png, filter_page.png         the Filters tab: a layer's map, and one filter's page (likewise)
The screenshots need Debian's `chromium` package (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO / "examples"))

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-browser", action="store_true", help="skip the report and TensorBoard screenshots")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="filterviz-docs-"))

    start = time.perf_counter()
    log_dir = train(workdir, name="example", extra=[])
    print(f"the example trained with configs/default.yaml in {time.perf_counter() - start:.0f} s")
    save_first_and_last_filters(log_dir)
    save_through_the_layers(log_dir)
    save_filmstrip(log_dir)
    save_dataset_examples(log_dir)

    dying = train(workdir, name="too_high_lr", extra=["--model.lr", "0.3", "--trainer.max_epochs", "3"])
    save_dead_filter_grid(dying)

    if not args.no_browser:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            sys.exit("make_pictures: no chromium on PATH (apt-get install chromium), or pass --no-browser")
        screenshot_report(chromium, log_dir, workdir)
        screenshot_tensorboard(chromium, log_dir, workdir)
        screenshot_filters_tab(chromium, log_dir, dying, workdir)
    print(f"pictures written to {DOCS}")


def train(workdir: Path, name: str, extra: list[str]) -> Path:
    import train as example

    cli = example.main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "default.yaml"),
            "--trainer.logger.init_args.save_dir",
            str(workdir),
            "--trainer.logger.init_args.name",
            name,
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ]
    )
    return Path(cli.trainer.logger.log_dir)


def images_of(log_dir: Path, tag: str) -> dict[int, np.ndarray]:
    import io

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    accumulator.Reload()
    return {
        event.step: np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        for event in accumulator.Images(tag)
    }


def save(image: np.ndarray, name: str, scale: int = 1) -> None:
    picture = Image.fromarray(image)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    picture.save(DOCS / name, optimize=True)
    print(f"wrote docs/{name} ({picture.width}x{picture.height})")


def save_first_and_last_filters(log_dir: Path) -> None:
    filters = images_of(log_dir, "filterviz/weights/net.0")
    save(filters[min(filters)], "filters_init.png", scale=2)
    save(filters[max(filters)], "filters_trained.png", scale=2)


def save_through_the_layers(log_dir: Path) -> None:
    from lightning_filterviz.core.history import load_history
    from lightning_filterviz.drawing.responses import through_the_layers

    last = sorted((log_dir / "filterviz" / "history").glob("step_*.npz"))[-1]
    arrays = load_history(last)
    maps = {name: arrays[f"{name}/maps"].astype(np.float32) for name in arrays["layers"] if f"{name}/maps" in arrays}
    save(through_the_layers(maps, channels=4, height=64).to_rgb(), "through_the_layers.png")


def save_filmstrip(log_dir: Path) -> None:
    strips = images_of(log_dir, "filterviz/filmstrip/net.0")
    save(strips[max(strips)], "filmstrip.png")


def save_dataset_examples(log_dir: Path) -> None:
    examples = images_of(log_dir, "filterviz/examples/net.0")
    save(examples[max(examples)], "dataset_examples.png")


def save_dead_filter_grid(log_dir: Path) -> None:
    """The feature-map grid of the layer with the most dead filters at the end."""
    from lightning_filterviz.core.history import load_history

    last = load_history(sorted((log_dir / "filterviz" / "history").glob("step_*.npz"))[-1])
    dead = {name: len(last[f"{name}/dead"]) for name in last["layers"] if f"{name}/dead" in last}
    worst = max(dead, key=dead.get)
    print(f"dead filters at the end of the high-learning-rate run: {dead}")
    grids = images_of(log_dir, f"filterviz/activations/{worst}")
    save(grids[max(grids)], "dead_filters.png")


def screenshot_report(chromium: str, log_dir: Path, workdir: Path) -> None:
    from lightning_filterviz.report.build import build_report

    import contextlib

    # Given as a relative path, so that the page's title names the run as a user's own would.
    with contextlib.chdir(prepare_logdir(log_dir, workdir)):
        page = build_report(Path("lightning_logs", log_dir.parent.name, log_dir.name), workdir / "report.html")
    shoot(chromium, page.as_uri(), workdir, "report.png", size=(1200, 1600))


def screenshot_tensorboard(chromium: str, log_dir: Path, workdir: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        # Started in the run's logger directory with a relative --logdir, so that the page
        # shows the run as a user's own would be shown ("example/version_0"), not a temporary path.
        [sys.executable, "-m", "tensorboard.main", "--logdir", "lightning_logs", "--port", str(port),
         "--host", "127.0.0.1", "--samples_per_plugin", "images=1000"],
        cwd=prepare_logdir(log_dir, workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(port, seconds=60)
        url = f"http://127.0.0.1:{port}/#images&tagFilter=weights"  # the README's way to find the filters
        shoot(chromium, url, workdir, "tensorboard.png", size=(1400, 1000), budget_ms=20000)
    finally:
        server.terminate()
        server.wait(timeout=30)


def screenshot_filters_tab(chromium: str, log_dir: Path, dying: Path, workdir: Path) -> None:
    """The Filters tab: the map of the high-learning-rate run's deepest conv, and a filter's page."""
    prepare_logdir(dying, workdir)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", "lightning_logs", "--port", str(port),
         "--host", "127.0.0.1"],
        cwd=prepare_logdir(log_dir, workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(port, seconds=60)
        tab = f"http://127.0.0.1:{port}/#filterviz"
        dying_run = f"{dying.parent.name}%2F{dying.name}"
        shoot(chromium, f"{tab}&p.filterviz.run={dying_run}&p.filterviz.layer=net.12", workdir, "filters_tab.png",
              size=(1280, 1060), budget_ms=20000)
        run = f"{log_dir.parent.name}%2F{log_dir.name}"
        shoot(chromium, f"{tab}&p.filterviz.run={run}&p.filterviz.layer=net.0&p.filterviz.filter=9", workdir,
              "filter_page.png", size=(1280, 1300), budget_ms=20000)
    finally:
        server.terminate()
        server.wait(timeout=30)


def prepare_logdir(log_dir: Path, workdir: Path) -> Path:
    """A directory holding ``lightning_logs/<run>`` as a link to the run, for TensorBoard's --logdir."""
    shown = workdir / "shown"
    (shown / "lightning_logs").mkdir(parents=True, exist_ok=True)
    link = shown / "lightning_logs" / log_dir.parent.name / log_dir.name
    link.parent.mkdir(exist_ok=True)
    if not link.exists():
        link.symlink_to(log_dir, target_is_directory=True)
    return shown


def shoot(chromium: str, url: str, workdir: Path, name: str, size: tuple[int, int], budget_ms: int = 5000) -> None:
    target = workdir / name
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'chromium-profile'}",
         f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}", f"--screenshot={target}", url],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=180,
    )
    picture = Image.open(target).convert("RGB")
    picture.thumbnail((900, 1200))
    picture.save(DOCS / name, optimize=True)
    print(f"wrote docs/{name} ({picture.width}x{picture.height})")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as connection:
            if connection.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(3)  # the server answers before it has read the event files
                return
        time.sleep(0.5)
    raise RuntimeError(f"TensorBoard did not start on port {port} within {seconds} s")


if __name__ == "__main__":
    main()
