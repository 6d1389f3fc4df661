"""The probe batch: taken by index without touching any loader, and the input out of a batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from conftest import image_dataset
from lightning_filterviz.capture.probe import (
    ImageInput,
    check_probe_input,
    first_samples,
    given_probe,
    model_input,
    probe_from_loader,
)


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


def images_only(items: list) -> list:
    return [image for image, _ in items]


@pytest.mark.parametrize(("dataset_size", "expected"), [(10, 8), (2, 2)])
def test_a_collate_that_returns_a_list_of_images_is_counted_in_samples(dataset_size, expected):
    dataset = image_dataset(dataset_size, seed=4)
    batch, count = probe_from_loader(DataLoader(dataset, batch_size=4, collate_fn=images_only), 8)
    assert count == expected  # not the 3 channels of the first image
    assert isinstance(batch, list) and len(batch) == expected
    assert torch.equal(torch.stack(batch), dataset.tensors[0][:expected])


def test_a_collate_that_returns_images_of_different_sizes_is_counted_in_samples():
    sizes = [8, 12, 10, 9, 11]
    dataset = [(torch.randn(3, size, size), 0) for size in sizes]
    batch, count = probe_from_loader(DataLoader(dataset, batch_size=2, collate_fn=images_only), 4)
    assert count == 4 and [image.shape[-1] for image in batch] == sizes[:4]


def test_ready_made_batches_that_are_lists_of_images_keep_whole_images():
    """batch_size=None: each item is a batch, here a list of RGB images; two are kept, with
    their 3 channels (cutting each tensor's first rows would keep 2 channels of each)."""
    images = [torch.randn(3, 6, 6) for _ in range(5)]
    loader = DataLoader([images], batch_size=None)
    batch, count = probe_from_loader(loader, 2, ImageInput("conv", 3))
    assert count == 2 and len(batch) == 2 and all(torch.equal(a, b) for a, b in zip(batch, images[:2]))
    # The same list read as fields (no conv known): each tensor's first rows, as for (images, labels).
    fields, _ = probe_from_loader(loader, 2)
    assert [tuple(each.shape) for each in fields] == [(2, 6, 6)] * 5


def test_first_samples_tells_a_list_of_images_from_a_batch_of_fields():
    rgb = ImageInput("conv", 3)
    images, labels = torch.randn(6, 3, 4, 4), torch.arange(6)
    kept, count = first_samples([images, labels], 4, rgb)
    assert count == 4 and torch.equal(kept[0], images[:4]) and torch.equal(kept[1], labels[:4])
    kept, count = first_samples(list(images), 4, rgb)
    assert count == 4 and len(kept) == 4 and kept[0].shape == (3, 4, 4)


def test_given_probe_stacks_a_list_of_images_only_where_batch_key_would_take_one_image():
    rgb = ImageInput("conv", 3)
    images = [torch.randn(3, 4, 4) for _ in range(3)]
    assert torch.equal(given_probe(images, 2, rgb, None), torch.stack(images[:2]))
    as_list = given_probe(images, 2, rgb, lambda batch: batch)  # a model that takes the list
    assert isinstance(as_list, list) and len(as_list) == 2
    with pytest.raises(ValueError, match=r"`probe` is a list of 2 images of different sizes"):
        given_probe([torch.randn(3, 4, 4), torch.randn(3, 5, 5)], 2, rgb, None)


def test_probe_input_checks_skip_what_a_forward_fn_decides():
    single = torch.randn(3, 4, 4)
    check_probe_input(single, single, None, None)  # no conv known, or a forward_fn: nothing refused
    check_probe_input(torch.randn(2, 3, 4, 4), None, ImageInput("conv", 3), None)
    check_probe_input(torch.randn(5, 4, 4), None, ImageInput("conv", 3), None)  # 5 images, 3-d: a batch
    check_probe_input(torch.randn(2, 48), None, ImageInput("conv", 3), None)  # flat images the model reshapes
    with pytest.raises(ValueError, match=r"shape \(3, 4, 4\): a single image.*probe\.unsqueeze\(0\)"):
        check_probe_input(single, single, ImageInput("conv", 3), None)
