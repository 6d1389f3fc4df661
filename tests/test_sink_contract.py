"""One contract for every sink: the same images, scalars and table, written through the Sink
API alone, read back from each backend's own records (event files, a W&B offline run, an
MLflow store, a CSV logger's metrics file, a Comet offline archive, PNG files, a user's own
object) with the same pixels, values and steps; and a SinkGroup's seams: a failing sink is
left out and reported, and every sink gets the very same encoded image."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from conftest import pl, read_events
from logger_records import (
    LoggedRecords,
    comet_logger,
    mlflow_logger,
    offline_comet,  # noqa: F401  (a fixture)
    offline_wandb,  # noqa: F401  (a fixture)
    read_comet_archive,
    read_csv_metrics,
    read_mlflow_run,
    read_png_directory,
    read_wandb_run,
    wandb_logger,
)
from lightning_filterviz import (
    CometSink,
    DirectorySink,
    LoggerMetricsSink,
    MLflowSink,
    NullSink,
    Sink,
    SinkGroup,
    TensorBoardSink,
    WandbSink,
)
from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.records import Table
from lightning_filterviz.core.tiles import IndexedImage
from lightning_filterviz.publishing.sinks.base import UserSink, as_sink

IMAGES, SCALARS, TABLES = "images", "scalars", "tables"
TABLE_TAG = "filterviz/dead_filters"
TABLE = Table(columns=("conv", "dead filters"), rows=(("net.0", "2, 5"), ("net.3", "-")))


def rgb_picture() -> np.ndarray:
    rows, columns = np.mgrid[0:12, 0:20]
    return np.stack([rows * 20, columns * 12, (rows + columns) * 8], axis=-1).astype(np.uint8)


def palette_picture() -> IndexedImage:
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:, 0] = np.arange(256)
    palette[255] = (255, 0, 255)
    indices = np.arange(9 * 16, dtype=np.uint8).reshape(9, 16)
    indices[0, 0] = 255
    return IndexedImage(indices, palette)


def write_the_contract(sink: Sink) -> None:
    """Two steps, each written the way the publisher writes (batched calls) and the way a
    user may (single calls), with empty batches in between that must write nothing."""
    images = {"filterviz/weights/net.0": rgb_picture(), "filterviz/probe": palette_picture()}
    sink.add_images({tag: EncodedImage(pixels) for tag, pixels in images.items()}, 0)
    sink.add_scalars({"filterviz/dead_fraction/net.0": 0.25, "filterviz/drift/net.0": 0.125}, 0)
    sink.add_table(TABLE_TAG, TABLE, 0)
    sink.flush()
    sink.on_training_thread()
    sink.add_images({}, 3)
    sink.add_scalars({}, 3)
    sink.flush()
    sink.on_training_thread()
    sink.add_image("filterviz/weights/net.0", palette_picture(), 5)
    sink.add_scalar("filterviz/dead_fraction/net.0", 0.5, 5)
    sink.flush()
    sink.on_training_thread()


def expected_records() -> LoggedRecords:
    return LoggedRecords(
        images={
            "filterviz/weights/net.0": {0: rgb_picture(), 5: palette_picture().to_rgb()},
            "filterviz/probe": {0: palette_picture().to_rgb()},
        },
        scalars={"filterviz/dead_fraction/net.0": {0: 0.25, 5: 0.5}, "filterviz/drift/net.0": {0: 0.125}},
        tables={TABLE_TAG: {0: TABLE.markdown()}},
    )


@dataclasses.dataclass
class Backend:
    """A sink over a backend that writes locally, and how to read back what the backend holds."""

    sink: Sink
    read_back: Callable[[], list[LoggedRecords]]  # one per store the sink writes to
    holds: frozenset[str]  # what the backend keeps of the contract


class OwnSink:
    """A user's own sink: the four methods of a SummaryWriter, nothing of the Sink class."""

    def __init__(self) -> None:
        self.records = LoggedRecords()

    def add_image(self, tag: str, image: Any, step: int) -> None:
        pixels = image.to_rgb() if isinstance(image, IndexedImage) else image
        self.records.images.setdefault(tag, {})[step] = pixels

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.records.scalars.setdefault(tag, {})[step] = value

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.records.tables.setdefault(tag, {})[step] = text

    def flush(self) -> None:
        pass


def tensorboard_backend(tmp_path: Path) -> Backend:
    writer = SummaryWriter(str(tmp_path / "tb"))

    def read_back() -> list[LoggedRecords]:
        writer.close()
        events = read_events(tmp_path / "tb")
        return [LoggedRecords(images=events.images, scalars=events.scalars, tables=events.texts)]

    return Backend(TensorBoardSink(writer), read_back, frozenset({IMAGES, SCALARS, TABLES}))


def wandb_backend(tmp_path: Path) -> Backend:
    logger = wandb_logger(tmp_path)

    def read_back() -> list[LoggedRecords]:
        logger.experiment.finish()
        records = read_wandb_run(logger.experiment)
        # W&B keeps a table as a table: its columns and rows.
        tables = records.tables.items()
        records.tables = {tag: {step: as_markdown(table) for step, table in by_step.items()} for tag, by_step in tables}
        return [records]

    return Backend(WandbSink.from_logger(logger), read_back, frozenset({IMAGES, SCALARS, TABLES}))


def as_markdown(wandb_table: dict[str, Any]) -> str:
    return Table(tuple(wandb_table["columns"]), tuple(tuple(row) for row in wandb_table["data"])).markdown()


def mlflow_backend(tmp_path: Path) -> Backend:
    logger = mlflow_logger(tmp_path)

    def read_back() -> list[LoggedRecords]:
        return [read_mlflow_run(logger._tracking_uri, logger.run_id)]

    return Backend(MLflowSink.from_logger(logger), read_back, frozenset({IMAGES, SCALARS, TABLES}))


def csv_backend(tmp_path: Path) -> Backend:
    logger = pl.loggers.CSVLogger(str(tmp_path), name="csv")

    def read_back() -> list[LoggedRecords]:
        logger.save()  # what the trainer does after each logged batch
        return [read_csv_metrics(logger.log_dir)]

    return Backend(LoggerMetricsSink.from_logger(logger), read_back, frozenset({SCALARS}))


def comet_backend(tmp_path: Path) -> Backend:
    logger = comet_logger(tmp_path)

    def read_back() -> list[LoggedRecords]:
        logger.experiment.end()  # writes the offline archive
        return [read_comet_archive(tmp_path / "comet")]

    return Backend(CometSink.from_logger(logger), read_back, frozenset({IMAGES, SCALARS, TABLES}))


def directory_backend(tmp_path: Path) -> Backend:
    read_back = lambda: [read_png_directory(tmp_path / "png")]  # noqa: E731
    return Backend(DirectorySink(tmp_path / "png"), read_back, frozenset({IMAGES, SCALARS, TABLES}))


def null_backend(tmp_path: Path) -> Backend:
    return Backend(NullSink(), lambda: [LoggedRecords()], frozenset())


def group_backend(tmp_path: Path) -> Backend:
    writer = SummaryWriter(str(tmp_path / "tb"))
    group = SinkGroup({"TensorBoard": TensorBoardSink(writer), "PNG files": DirectorySink(tmp_path / "png")})

    def read_back() -> list[LoggedRecords]:
        writer.close()
        events = read_events(tmp_path / "tb")
        return [LoggedRecords(events.images, events.scalars, events.texts), read_png_directory(tmp_path / "png")]

    return Backend(group, read_back, frozenset({IMAGES, SCALARS, TABLES}))


def user_sink_backend(tmp_path: Path) -> Backend:
    own = OwnSink()
    return Backend(as_sink(own), lambda: [own.records], frozenset({IMAGES, SCALARS, TABLES}))


BACKENDS = {
    "tensorboard": tensorboard_backend,
    "wandb": wandb_backend,
    "mlflow": mlflow_backend,
    "csv": csv_backend,
    "comet": comet_backend,
    "directory": directory_backend,
    "null": null_backend,
    "group": group_backend,
    "user sink": user_sink_backend,
}


@pytest.fixture(params=list(BACKENDS))
def backend(request, tmp_path, offline_wandb, offline_comet) -> Backend:
    return BACKENDS[request.param](tmp_path)


def test_every_sink_holds_the_same_pixels_values_and_steps_in_its_own_records(backend: Backend) -> None:
    write_the_contract(backend.sink)
    assert backend.sink.take_failures() == []
    assert backend.sink.takes_images == (IMAGES in backend.holds)
    expected = expected_records()
    for records in backend.read_back():
        images = {tag: by_step for tag, by_step in records.images.items() if tag.startswith("filterviz/")}
        scalars = {tag: by_step for tag, by_step in records.scalars.items() if tag.startswith("filterviz/")}
        assert images.keys() == (expected.images.keys() if IMAGES in backend.holds else set())
        for tag, by_step in images.items():
            assert by_step.keys() == expected.images[tag].keys(), tag
            for step, pixels in by_step.items():
                np.testing.assert_array_equal(pixels, expected.images[tag][step], err_msg=f"{tag} at step {step}")
        assert scalars == (expected.scalars if SCALARS in backend.holds else {})
        assert records.tables == (expected.tables if TABLES in backend.holds else {})


def test_the_registered_sinks_are_the_ones_the_contract_runs_over() -> None:
    from lightning_filterviz.publishing.sinks.registry import registered_sinks

    covered = {TensorBoardSink, WandbSink, MLflowSink, LoggerMetricsSink, CometSink}
    # Other tests register sinks of their own for loggers of their own.
    package_sinks = {cls for cls in registered_sinks().values() if cls.__module__.startswith("lightning_filterviz.")}
    assert package_sinks == covered


class FailsAtStep(Sink):
    """Takes images until ``step``, then raises as a full disk would."""

    takes_images = True

    def __init__(self, step: int) -> None:
        self.step = step
        self.steps: list[int] = []

    def add_images(self, images, step) -> None:
        if step >= self.step:
            raise OSError(28, "No space left on device")
        self.steps.append(step)


def test_a_failing_sink_in_a_group_is_left_out_and_reported_once_while_the_others_go_on(tmp_path) -> None:
    failing, fine = FailsAtStep(1), DirectorySink(tmp_path)
    group = SinkGroup({"the full disk": failing, "PNG files": fine})
    for step in range(3):
        group.add_image("filterviz/weights/net.0", rgb_picture(), step)
        group.flush()
    (failure,) = group.take_failures()
    assert failure[0] == "the full disk" and isinstance(failure[1], OSError) and failure[1].errno == 28
    assert group.take_failures() == []  # told once
    assert list(group.sinks) == ["PNG files"] and failing.steps == [0]
    assert sorted(read_png_directory(tmp_path).images["filterviz/weights/net.0"]) == [0, 1, 2]


class ReceivedImages(Sink):
    """Keeps the EncodedImage objects it is handed."""

    takes_images = True

    def __init__(self) -> None:
        self.received: list[EncodedImage] = []

    def add_images(self, images, step) -> None:
        self.received.extend(images.values())


def test_every_sink_of_a_group_gets_the_same_encoded_image_whose_png_is_encoded_once() -> None:
    first, second = ReceivedImages(), ReceivedImages()
    group = SinkGroup({"first": first, "second": second, "user's": OwnSink()})
    image = EncodedImage(rgb_picture())
    group.add_images({"filterviz/weights/net.0": image}, 0)
    assert first.received == [image] and second.received[0] is image
    assert image.png is image.png  # a cached property: encoded on first use, then shared


def test_a_single_image_may_come_encoded_or_as_pixels() -> None:
    sink = ReceivedImages()
    encoded = EncodedImage(palette_picture())
    sink.add_image("filterviz/probe", encoded, 0)
    sink.add_image("filterviz/probe", rgb_picture(), 1)
    assert sink.received[0] is encoded
    np.testing.assert_array_equal(sink.received[1].pixels, rgb_picture())


def test_as_sink_wraps_what_it_can_write_to_and_refuses_the_rest(tmp_path) -> None:
    writer = SummaryWriter(str(tmp_path / "tb"))
    try:
        assert isinstance(as_sink(writer), TensorBoardSink) and as_sink(writer).writer is writer
    finally:
        writer.close()
    assert isinstance(as_sink(tmp_path / "png"), DirectorySink)
    assert isinstance(as_sink(OwnSink()), UserSink)
    null = NullSink()
    assert as_sink(null) is null
    with pytest.raises(TypeError, match="Cannot log to a dict"):
        as_sink({})
