"""TensorBoard writing (the C checksum gives the very bytes TensorBoard's own writer would), a
user's own sink, and one snapshot handed to several sinks."""

from __future__ import annotations

import doctest
import io
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter

from conftest import conv_bn_relu_stack, read_events
from lightning_filterviz import FilterVisualizer
from lightning_filterviz.publishing.sinks import base, null
from lightning_filterviz.publishing.sinks.base import Sink
from lightning_filterviz.publishing.sinks.checksums import masked_crc32c, use_fast_checksums
from lightning_filterviz.publishing.sinks.directory import DirectorySink
from lightning_filterviz.publishing.sinks.group import SinkGroup
from lightning_filterviz.publishing.sinks.tensorboard import TensorBoardSink
from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.tiles import IndexedImage


@pytest.mark.parametrize("size", [0, 1, 8, 12, 1000, 65_537])
def test_masked_crc32c_equals_tensorboards(size):
    data = os.urandom(size)
    assert masked_crc32c(data) == tensorboard_masked_crc32c(data)


def test_a_switched_record_writer_writes_the_same_bytes():
    records = [b"", b"x", os.urandom(5000)]
    plain_file, fast_file = io.BytesIO(), io.BytesIO()
    plain, fast = RecordWriter(plain_file), RecordWriter(fast_file)

    class FileWriterStandIn:  # the attribute path of torch's FileWriter to TensorBoard's record writer
        class event_writer:
            class _async_writer:
                _writer = fast

    assert use_fast_checksums(FileWriterStandIn())
    for record in records:
        plain.write(record)
        fast.write(record)
    assert fast_file.getvalue() == plain_file.getvalue()


def test_an_unknown_writer_is_left_alone():
    class Elsewhere:
        pass

    assert not use_fast_checksums(Elsewhere())


def test_every_record_the_sink_writes_passes_tensorboards_checksum(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(writer)
    image = IndexedImage(np.arange(64, dtype=np.uint8).reshape(8, 8), np.zeros((256, 3), dtype=np.uint8))
    sink.add_image("filterviz/weights/conv", image, 3)
    sink.add_scalar("filterviz/dead_fraction/conv", 0.25, 3)
    writer.add_scalar("loss", 1.5, 3)  # the user's own scalar goes through the same, switched, writer
    sink.add_text("filterviz/dead_filters", "| conv | 1 |", 3)
    assert writer._get_file_writer().event_writer._async_writer._writer.write.func.__name__ == "_write_record"
    writer.close()

    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    data = event_file.read_bytes()
    position, records = 0, 0
    while position < len(data):
        header = data[position : position + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[position + 8 : position + 12])
        body = data[position + 12 : position + 12 + length]
        (body_crc,) = struct.unpack("<I", data[position + 12 + length : position + 16 + length])
        assert header_crc == tensorboard_masked_crc32c(header) and body_crc == tensorboard_masked_crc32c(body)
        position += 16 + length
        records += 1
    assert position == len(data) and records == 5  # file version, image, two scalars, text
    events = read_events(tmp_path)
    assert events.images["filterviz/weights/conv"][3].shape == (8, 8, 3)
    assert events.scalars["loss"] == {3: 1.5} and events.scalars["filterviz/dead_fraction/conv"] == {3: 0.25}


def test_a_reopened_writer_gets_the_c_checksum_too(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(writer)
    sink.add_scalar("filterviz/drift/conv", 0.5, 0)
    writer.close()  # a later write opens a new file writer
    sink.add_scalar("filterviz/drift/conv", 0.6, 1)
    record_writer = writer._get_file_writer().event_writer._async_writer._writer
    assert record_writer.write.func.__name__ == "_write_record"
    writer.close()


class PlainSink:
    """A user's own sink with only the four methods a SummaryWriter has (as_sink wraps it in a UserSink)."""

    def __init__(self) -> None:
        self.scalars: dict[str, dict[int, float]] = {}
        self.images: dict[str, dict[int, np.ndarray]] = {}

    def add_image(self, tag, image, step) -> None:
        self.images.setdefault(tag, {})[step] = image.to_rgb() if isinstance(image, IndexedImage) else image

    def add_scalar(self, tag, value, step) -> None:
        self.scalars.setdefault(tag, {})[step] = value

    def add_text(self, tag, text, step) -> None:
        pass

    def flush(self) -> None:
        pass


def test_a_plain_sink_gets_the_same_scalars_and_images_one_by_one(tmp_path):
    model = conv_bn_relu_stack()
    with torch.no_grad():
        model[0].bias[2] = -1e4  # a dead filter, so dead fractions are logged too
    probe = torch.randn(4, 3, 10, 10)
    own = PlainSink()
    writer = SummaryWriter(str(tmp_path))
    for visualizer in (FilterVisualizer(own, dead_patience=1), FilterVisualizer(writer, dead_patience=1)):
        for step in range(2):
            visualizer.snapshot(model, probe, step)
        visualizer.finish(2)
    writer.close()
    events = read_events(tmp_path)
    assert "filterviz/dead_fraction/0" in own.scalars and "filterviz/drift/0" in own.scalars
    assert set(own.scalars) == set(events.scalars)
    for tag, by_step in own.scalars.items():
        assert by_step == pytest.approx(events.scalars[tag])
    assert "filterviz/weights/0" in own.images and "filterviz/filmstrip/0" in own.images
    assert set(own.images) == set(events.images)
    for tag, by_step in own.images.items():
        assert sorted(by_step) == sorted(events.images[tag])
        for step, image in by_step.items():
            np.testing.assert_array_equal(image, events.images[tag][step])


def test_a_snapshots_images_go_to_tensorboard_as_one_event(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    visualizer = FilterVisualizer(writer)
    for step in range(3):
        visualizer.snapshot(conv_bn_relu_stack(), torch.randn(4, 3, 10, 10), step)
    writer.close()

    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    images_per_event = {}
    for record in RawEventFileLoader(str(event_file)).Load():
        event = Event.FromString(record)
        tags = [value.tag for value in event.summary.value if value.HasField("image")]
        if tags:
            assert event.step not in images_per_event  # one event per snapshot
            images_per_event[event.step] = tags
    assert sorted(images_per_event) == [0, 1, 2]
    assert {"filterviz/weights/0", "filterviz/activations/3", "filterviz/probe"} <= set(images_per_event[0])
    plain = [f"filterviz/{kind}/{layer}" for kind in ("weights", "activations") for layer in "03"]
    assert sorted(images_per_event[2]) == sorted(plain)  # the third snapshot draws no costlier views


class ReceivedImages(Sink):
    """Keeps every EncodedImage it is handed, and reads its PNG bytes as a sink that writes them would."""

    takes_images = True

    def __init__(self) -> None:
        self.received: list[tuple[str, int, EncodedImage]] = []

    def add_images(self, images, step) -> None:
        for tag, image in images.items():
            self.received.append((tag, step, image))
            image.png


def test_a_sink_group_hands_every_sink_the_same_encoded_image_and_every_sink_gets_the_same_bytes(tmp_path):
    spies = ReceivedImages(), ReceivedImages()
    writer = SummaryWriter(str(tmp_path / "tb"))
    group = SinkGroup(
        {"A": DirectorySink(tmp_path / "a"), "spy": spies[0], "TB": TensorBoardSink(writer), "spy 2": spies[1]}
    )
    visualizer = FilterVisualizer(group)
    for step in range(2):
        visualizer.snapshot(conv_bn_relu_stack(), torch.randn(4, 3, 10, 10), step)
    visualizer.close()
    writer.close()
    first, second = spies[0].received, spies[1].received
    assert len(first) > 4 and [(tag, step) for tag, step, _ in first] == [(tag, step) for tag, step, _ in second]
    # The very same object, so its PNG bytes (a cached property) were encoded once for all sinks.
    assert all(mine is theirs for (_, _, mine), (_, _, theirs) in zip(first, second))
    assert all(image.png is image.png for _, _, image in first)
    events = read_events(tmp_path / "tb")
    for tag, step, image in first:
        path = tmp_path / "a" / tag.removeprefix("filterviz/") / f"step_{step:08d}.png"
        assert path.read_bytes() == image.png
        np.testing.assert_array_equal(np.asarray(PILImage.open(path).convert("RGB")), events.images[tag][step])


class BrokenAfterFirstSnapshot(PlainSink):
    def add_image(self, tag, image, step):
        if step > 0:
            raise OSError(5, "Input/output error")
        super().add_image(tag, image, step)


def test_a_failing_sink_in_a_group_is_told_once_and_left_out_while_the_others_go_on(tmp_path):
    broken = BrokenAfterFirstSnapshot()
    group = SinkGroup({"the broken sink": broken, "PNG files": DirectorySink(tmp_path)})
    visualizer = FilterVisualizer(group)
    with pytest.warns(UserWarning) as record:
        for step in range(4):
            visualizer.snapshot(conv_bn_relu_stack(), torch.randn(4, 3, 10, 10), step)
            visualizer.flush()
    visualizer.close()
    told = [str(warning.message) for warning in record if "failed" in str(warning.message)]
    assert len(told) == 1 and told[0].startswith("filterviz: writing to the broken sink failed")
    assert "OSError: [Errno 5] Input/output error" in told[0]
    assert list(group.sinks) == ["PNG files"]
    assert sorted(broken.images["filterviz/weights/0"]) == [0]
    assert sorted(path.name for path in (tmp_path / "weights" / "0").iterdir()) == [
        f"step_{step:08d}.png" for step in range(4)
    ]


@pytest.mark.parametrize("module", [base, null], ids=lambda module: module.__name__)
def test_the_examples_in_the_sink_docstrings_run(module):
    failed, run = doctest.testmod(module)
    assert run > 0 and failed == 0
