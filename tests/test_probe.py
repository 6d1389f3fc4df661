"""The probe batch: taken by index without touching any loader, and the input out of a batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from conftest import image_dataset
from lightning_filterviz.capture.probe import model_input, probe_from_loader


class RefusesIteration(DataLoader):
    def __iter__(self):
        raise AssertionError("the probe must not iterate the loader")


def test_probe_takes_the_first_samples_by_index_with_the_loaders_collate():
    dataset = image_dataset(10, seed=3)
    calls = []

    def collate(samples):
        calls.append(len(samples))
        return torch.utils.data.default_collate(samples)

    loader = RefusesIteration(dataset, batch_size=4, shuffle=True, collate_fn=collate)
    rng = torch.get_rng_state()
    (images, labels), count = probe_from_loader(loader, 6)
    assert count == 6 and calls == [6]
    assert torch.equal(images, dataset.tensors[0][:6]) and torch.equal(labels, dataset.tensors[1][:6])
    assert torch.equal(torch.get_rng_state(), rng)


def test_small_dataset_gives_a_smaller_probe():
    (images, _), count = probe_from_loader(DataLoader(image_dataset(3, seed=0)), 8)
    assert count == 3 and len(images) == 3


def test_iterable_dataset_asks_for_an_explicit_probe():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(3)

    with pytest.raises(ValueError, match="Pass `probe=`"):
        probe_from_loader(DataLoader(Stream()), 4)


def test_model_input_from_tensor_tuple_and_dict():
    images = torch.zeros(2, 3, 4, 4)
    assert model_input(images) is images
    assert model_input((images, torch.zeros(2))) is images
    assert model_input([torch.zeros(2), images], batch_key=1) is images
    assert model_input({"image": images, "label": 0}, batch_key="image") is images


def test_model_input_errors_say_what_to_set():
    with pytest.raises(ValueError, match=r"set `batch_key`.*\['image', 'label'\]|keys \['image', 'label'\].*batch_key"):
        model_input({"image": torch.zeros(1), "label": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"`batch_key='img'` is not in the probe batch"):
        model_input({"image": torch.zeros(1)}, batch_key="img")
