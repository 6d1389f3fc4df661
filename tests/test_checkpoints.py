"""The monitor's checkpoint state loads with ``weights_only=True`` and resumes the same run:
the user's batch types (named tuples of the training script, dicts) are stored as plain
containers and rebuilt, the probe compactly and bit for bit."""

from __future__ import annotations

import dataclasses
import io
import sys
import types
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset

from conftest import Classifier, FilterMonitor, RandomImages, image_dataset, pl, trainer_kwargs
from lightning_filterviz.integration.probe_storage import is_stored_probe, rebuilt_probe, stored_probe


class Sample(NamedTuple):
    image: Tensor
    label: Tensor


class SampleImages(RandomImages):
    """RandomImages whose samples (and so batches, collated) are of a named tuple type."""

    def __init__(self, sample_type: type) -> None:
        super().__init__()
        self.train_set = AsSamples(self.train_set, sample_type)
        self.val_set = AsSamples(self.val_set, sample_type)


class AsSamples(Dataset):
    def __init__(self, dataset: Any, sample_type: type) -> None:
        self.dataset, self.sample_type = dataset, sample_type

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.sample_type(*self.dataset[index])


def classifier_with_a_dead_filter(dict_batches: bool = False) -> Classifier:
    model = Classifier(dict_batches=dict_batches)
    with torch.no_grad():
        model.net[3].bias[2] = -1e4  # planted: filter 2 of net.3 never fires
    return model


def fit_then_resume(tmp_path: Path, data: Any, **monitor_args: Any) -> tuple[Any, Any, dict]:
    """Fit one epoch with a checkpoint, load it with weights_only=True, resume for a second."""
    dict_batches = monitor_args.get("batch_key") == "image"
    first = FilterMonitor(dead_patience=3, **monitor_args)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, enable_checkpointing=True)
    pl.Trainer(callbacks=[first, checkpoint], **kwargs).fit(classifier_with_a_dead_filter(dict_batches), datamodule=data)
    assert first.dead_filters["net.3"] == []  # off at steps 0 and 4: two of three

    path = tmp_path / "ckpt" / "last.ckpt"
    loaded = torch.load(path, weights_only=True)  # refuses any class it does not know
    resumed = FilterMonitor(dead_patience=3, **monitor_args)
    kwargs = trainer_kwargs(tmp_path, max_epochs=2, enable_checkpointing=True)
    pl.Trainer(callbacks=[resumed], **kwargs).fit(
        classifier_with_a_dead_filter(dict_batches), datamodule=data, ckpt_path=str(path)
    )
    assert resumed.dead_filters["net.3"] == [2]  # the third off snapshot, counted across the restart
    return first.probe, resumed.probe, loaded["callbacks"][first.state_key]


def test_a_named_tuple_batch_of_a_test_module_is_stored_plain_and_rebuilt_as_itself(tmp_path):
    before, after, saved = fit_then_resume(tmp_path, SampleImages(Sample))
    assert is_stored_probe(saved["probe"])
    assert type(before) is Sample and type(after) is Sample
    assert torch.equal(after.image, before.image) and torch.equal(after.label, before.label)


def test_a_named_tuple_of_the_training_script_loads_with_weights_only(tmp_path, monkeypatch):
    """A ``NamedTuple`` defined in the script that runs: pickled, it would be ``__main__.Sample``."""
    script_sample = NamedTuple("Sample", [("image", Tensor), ("label", Tensor)])
    script_sample.__module__ = "__main__"
    monkeypatch.setattr(sys.modules["__main__"], "Sample", script_sample, raising=False)
    with pytest.raises(Exception):  # what a checkpoint holding the batch itself would do
        buffer = io.BytesIO()
        torch.save({"probe": script_sample(torch.zeros(1), torch.zeros(1))}, buffer)
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    before, after, _ = fit_then_resume(tmp_path, SampleImages(script_sample))
    assert type(after) is script_sample
    assert torch.equal(after.image, before.image) and torch.equal(after.label, before.label)


def test_a_named_tuple_whose_module_is_gone_comes_back_as_a_stand_in_with_its_fields(monkeypatch):
    script = types.ModuleType("training_script")
    script_sample = NamedTuple("Sample", [("image", Tensor), ("label", Tensor)])
    script_sample.__module__ = "training_script"
    script.Sample = script_sample  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training_script", script)
    batch = script_sample(torch.randn(4, 3, 8, 8), torch.arange(4))
    stored = stored_probe(batch)
    assert type(rebuilt_probe(stored)) is script_sample  # while the script is loaded
    monkeypatch.delitem(sys.modules, "training_script")  # another process: the script is not imported
    rebuilt = rebuilt_probe(stored)
    assert type(rebuilt).__name__ == "Sample" and rebuilt._fields == ("image", "label")
    assert torch.equal(rebuilt.image, batch.image) and torch.equal(rebuilt.label, batch.label)


def test_a_dict_batch_is_stored_plain_and_resumes(tmp_path):
    before, after, saved = fit_then_resume(tmp_path, RandomImages(dict_items=True), batch_key="image")
    assert type(after) is dict and list(after) == ["image", "label"]
    assert all(torch.equal(after[key], before[key]) for key in before)


def image_probe(count: int = 8, size: int = 224, levels: int = 256) -> Tensor:
    """8-bit images after ToTensor and Normalize: at most 256 values per channel."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, levels, (count, 3, size, size), generator=generator, dtype=torch.uint8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (pixels.float().div(255) - mean[:, None, None]) / std[:, None, None]


def saved_bytes(value: Any) -> int:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return len(buffer.getvalue())


def test_an_8_bit_image_probe_takes_a_quarter_of_its_float32_size_and_comes_back_bit_for_bit():
    assert saved_bytes(stored_probe(image_probe())) < 1.01 * 8 * 3 * 224 * 224 + 20_000
    probe = image_probe(levels=250)
    probe[0, 0, 0, :3] = torch.tensor([float("nan"), -0.0, float("inf")])  # bits, not values, are kept
    stored = stored_probe((probe, torch.arange(8)))
    size = saved_bytes(stored)
    assert size < 1.01 * 8 * 3 * 224 * 224 + 20_000  # one byte a value and small tables (float32: 4.8 MB)
    images, labels = rebuilt_probe(torch.load(_saved(stored), weights_only=True))
    assert images.dtype == probe.dtype and images.shape == probe.shape
    assert torch.equal(images.view(torch.int32), probe.view(torch.int32))  # every bit, NaN and -0.0 too
    assert torch.equal(labels, torch.arange(8))


def _saved(value: Any) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return buffer


def test_a_probe_of_arbitrary_floats_is_stored_as_it_is_and_a_sliced_one_without_the_rest():
    many = torch.randn(64, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    stored = stored_probe(many[:2])  # a view of the 64 images
    assert saved_bytes(stored) < 2 * 3 * 32 * 32 * 8 + 5_000  # two images' values, not 64
    rebuilt = rebuilt_probe(torch.load(_saved(stored), weights_only=True))
    assert torch.equal(rebuilt, many[:2]) and rebuilt.dtype == torch.float64
    assert rebuilt.is_contiguous(memory_format=torch.channels_last)


def test_a_given_probe_is_stored_at_its_size_in_the_checkpoint(tmp_path):
    many = image_dataset(64, seed=3).tensors[0]  # type: ignore[attr-defined]
    monitor = FilterMonitor(probe=many, probe_size=2)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, enable_checkpointing=True)
    pl.Trainer(callbacks=[monitor, checkpoint], **kwargs).fit(Classifier(), datamodule=RandomImages())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"][monitor.state_key]
    assert saved_bytes(saved["probe"]) < 2 * 3 * 12 * 12 * 4 + 5_000
    assert torch.equal(rebuilt_probe(saved["probe"]), many[:2])


def test_a_probe_saved_by_an_older_version_as_the_batch_itself_still_loads(tmp_path):
    batch = (torch.randn(8, 3, 12, 12), torch.zeros(8, dtype=torch.long))
    monitor = FilterMonitor()
    monitor.load_state_dict({"probe": batch, "last_snapshot_step": None, "engine": {}})
    assert monitor.probe is batch


def test_parts_that_cannot_be_stored_plain_are_left_out_with_a_warning():
    class Opaque:
        pass

    with pytest.warns(UserWarning, match="without its parts of type \\['Opaque'\\]"):
        stored = stored_probe({"image": torch.zeros(2, 3, 4, 4), "meta": Opaque(), "ids": ["a", "b"]})
    rebuilt = rebuilt_probe(torch.load(_saved(stored), weights_only=True))
    assert rebuilt["meta"] is None and rebuilt["ids"] == ["a", "b"]
    assert torch.equal(rebuilt["image"], torch.zeros(2, 3, 4, 4))


@dataclasses.dataclass
class Pair:
    image: Tensor
    label: Tensor


def test_a_dataclass_batch_is_rebuilt_as_itself_and_as_a_namespace_where_it_is_not_loaded(monkeypatch):
    batch = Pair(torch.randn(2, 3, 4, 4), torch.tensor([1, 2]))
    stored = torch.load(_saved(stored_probe(batch)), weights_only=True)
    rebuilt = rebuilt_probe(stored)
    assert type(rebuilt) is Pair and torch.equal(rebuilt.image, batch.image)
    monkeypatch.delitem(sys.modules, __name__)  # as in a process that has not imported this module
    stand_in = rebuilt_probe(stored)
    assert isinstance(stand_in, types.SimpleNamespace) and torch.equal(stand_in.label, batch.label)
