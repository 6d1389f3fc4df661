"""Bad constructor arguments fail fast with a message naming the argument and what it accepts."""

from __future__ import annotations

import pytest

from lightning_filterviz import FilterMonitor, FilterVisualizer

BAD_ARGUMENTS = [
    (dict(every_n_epochs=0), r"`every_n_epochs` must be None or an integer >= 1, got 0"),
    (dict(every_n_epochs=-2), r"`every_n_epochs` must be None or an integer >= 1"),
    (dict(every_n_steps=0), r"`every_n_steps` must be None or an integer >= 1"),
    (dict(every_n_steps=1.5), r"`every_n_steps` must be None or an integer >= 1"),
    (dict(every_n_epochs=1, every_n_steps=10), r"at most one of `every_n_epochs` \(1\) and `every_n_steps` \(10\)"),
    (dict(probe_size=0), r"`probe_size` must be an integer >= 1, got 0"),
    (dict(probe_split="test"), r"`probe_split` must be one of \('val', 'train'\), got 'test'"),
    (dict(max_filters=0), r"`max_filters` must be an integer >= 1, got 0"),
    (dict(max_images=0), r"`max_images` must be an integer >= 1, got 0"),
    (dict(dead_patience=0), r"`dead_patience` must be an integer >= 1, got 0"),
    (dict(weight_normalization="minmax"), r"`weight_normalization` must be one of \('filter', 'layer', 'symmetric'\)"),
    (dict(colormap="no-such-map"), r"`colormap` must be a matplotlib colormap name"),
    (dict(dormant_tau=-0.1), r"`dormant_tau` must be a number >= 0, got -0.1"),
    (dict(views_every=0), r"`views_every` must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS, ids=[str(kwargs) for kwargs, _ in BAD_ARGUMENTS])
def test_bad_argument_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FilterMonitor(**kwargs)


def test_engine_refuses_what_it_cannot_write_to():
    with pytest.raises(TypeError, match="pass a SummaryWriter, a directory path"):
        FilterVisualizer(object())
