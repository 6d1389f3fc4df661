"""Bad constructor arguments fail fast with a message naming the argument and what it accepts;
every argument of FilterMonitor and FilterVisualizer has a case here, one description in
lightning_filterviz/core/arguments.py (which both docstrings show) and, for the monitor, a row in README."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
import typing

import numpy as np
import pytest
import torch

from conftest import REPO, Classifier, FilterMonitor, RandomImages, conv_bn_relu_stack, pl, trainer_kwargs
from lightning_filterviz import FilterVisualizer
from lightning_filterviz.core.arguments import ARGUMENTS, MONITOR, VISUALIZER, args_section, render_argument
from lightning_filterviz.core.settings import VisualizerSettings
from lightning_filterviz.views.registry import logged_tags

# Shared by FilterMonitor and FilterVisualizer: (arguments, exception, message).
SHARED = [
    (dict(layers="net.0"), TypeError, r"`layers` must be a list of module names or patterns, got the string 'net.0'"),
    (dict(layers=[0]), TypeError, r"`layers` must hold module names or patterns \(strings\), got 0"),
    (dict(layers=[]), ValueError, r"`layers` is an empty list, so no layer would be watched. Pass None to watch"),
    (dict(max_filters=0), ValueError, r"`max_filters` must be an integer >= 1, got 0"),
    (dict(max_filters=4.0), ValueError, r"`max_filters` must be an integer >= 1, got 4.0"),
    (dict(max_filters=np.int64(0)), ValueError, r"`max_filters` must be an integer >= 1, got (np.int64\()?0"),
    (dict(max_images=0), ValueError, r"`max_images` must be an integer >= 1, got 0"),
    (dict(dead_threshold="0"), ValueError, r"`dead_threshold` must be a finite number, got '0'"),
    (dict(dead_threshold=math.nan), ValueError, r"`dead_threshold` must be a finite number, got nan"),
    (dict(dead_patience=0), ValueError, r"`dead_patience` must be an integer >= 1, got 0"),
    (dict(dead_patience=True), ValueError, r"`dead_patience` must be an integer >= 1, got True"),
    (dict(dormant_tau=-0.1), ValueError, r"`dormant_tau` must be a number >= 0, got -0.1"),
    (dict(grad_dormant_tau=-0.1), ValueError, r"`grad_dormant_tau` must be a number >= 0, got -0.1"),
    (dict(grad_dormant_tau=math.inf), ValueError, r"`grad_dormant_tau` must be a finite number, got inf"),
    (
        dict(weight_normalization="minmax"),
        ValueError,
        r"`weight_normalization` must be one of \('filter', 'layer', 'symmetric'\)",
    ),
    (dict(log_weights="no"), TypeError, r"`log_weights` must be True or False, got 'no'"),
    (dict(log_activations=1), TypeError, r"`log_activations` must be True or False, got 1"),
    (dict(batch_key=1.5), TypeError, r"`batch_key` must be None, an int index, a str key or a function of the batch"),
    (dict(forward_fn="model"), TypeError, r"`forward_fn` must be callable as forward_fn\(module, input\), got 'model'"),
    (dict(colormap="no-such-map"), ValueError, r"`colormap` must be a matplotlib colormap name"),
    (dict(filmstrip_layers="net.0"), TypeError, r"`filmstrip_layers` must be a list of module names or patterns"),
    (dict(views_every=0), ValueError, r"`views_every` must be an integer >= 1, got 0"),
    (dict(response_layers="net.0"), TypeError, r"`response_layers` must be a list of module names or patterns"),
    (dict(examples_layers="net.0"), TypeError, r"`examples_layers` must be a list of module names or patterns"),
    (dict(featvis_layers="net.0"), TypeError, r"`featvis_layers` must be a list of module names or patterns"),
    (dict(examples_k=0), ValueError, r"`examples_k` must be an integer >= 1, got 0"),
]
MONITOR_ONLY = [
    (dict(every_n_epochs=0), ValueError, r"`every_n_epochs` must be None or an integer >= 1, got 0"),
    (dict(every_n_epochs=-2), ValueError, r"`every_n_epochs` must be None or an integer >= 1"),
    (dict(every_n_steps=0), ValueError, r"`every_n_steps` must be None or an integer >= 1"),
    (dict(every_n_steps=1.5), ValueError, r"`every_n_steps` must be None or an integer >= 1"),
    (dict(every_n_epochs=1, every_n_steps=10), ValueError, r"at most one of `every_n_epochs` \(1\) and"),
    (dict(probe_size=0), ValueError, r"`probe_size` must be an integer >= 1, got 0"),
    (dict(probe_split="test"), ValueError, r"`probe_split` must be one of \('val', 'train'\), got 'test'"),
    (dict(track_training_batches="yes"), TypeError, r"`track_training_batches` must be True or False, got 'yes'"),
    (dict(save_history=None), TypeError, r"`save_history` must be True or False, got None"),
]
VISUALIZER_ONLY = [
    (dict(sink=object()), TypeError, r"pass a SummaryWriter, a directory path"),
    (dict(background="yes"), TypeError, r"`background` must be True or False, got 'yes'"),
    (dict(max_pending=0), ValueError, r"`max_pending` must be an integer >= 1, got 0"),
    (dict(history_dir=3), TypeError, r"`history_dir` must be None or a directory path, got 3"),
]
# Arguments that take any value of their kind, so no value is wrong at construction.
ANY_VALUE = {"probe"}


def ids(cases: list) -> list[str]:
    return [str(kwargs) for kwargs, _, _ in cases]


@pytest.mark.parametrize(("kwargs", "error", "message"), SHARED + MONITOR_ONLY, ids=ids(SHARED + MONITOR_ONLY))
def test_bad_monitor_argument_raises(kwargs, error, message):
    with pytest.raises(error, match=message):
        FilterMonitor(**kwargs)


@pytest.mark.parametrize(("kwargs", "error", "message"), SHARED + VISUALIZER_ONLY, ids=ids(SHARED + VISUALIZER_ONLY))
def test_bad_visualizer_argument_raises(kwargs, error, message, tmp_path):
    arguments = {"sink": str(tmp_path), **kwargs}
    with pytest.raises(error, match=message):
        FilterVisualizer(**arguments)


@pytest.mark.parametrize(
    ("owner", "cases"), [(FilterMonitor, SHARED + MONITOR_ONLY), (FilterVisualizer, SHARED + VISUALIZER_ONLY)]
)
def test_every_argument_has_a_bad_value_case(owner, cases):
    covered = {name for kwargs, _, _ in cases for name in kwargs} | ANY_VALUE
    arguments = set(inspect.signature(owner.__init__).parameters) - {"self"}
    assert arguments - covered == set()


def constructor_arguments(owner: type) -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(owner.__init__).parameters
    return {name: parameter for name, parameter in parameters.items() if name != "self"}


def readme_argument_rows() -> dict[str, str]:
    """README's "### Arguments" table: argument -> its default cell, without the backticks."""
    readme = (REPO / "README.md").read_text()
    lines = readme[readme.index("### Arguments") :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| argument |"))
    table = []
    for line in lines[start + 2 :]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        table.append(line)
    rows = [re.match(r"^\| `(\w+)` \| `([^`]*)` \|", line) for line in table]
    assert None not in rows, [line for line, row in zip(table, rows) if row is None]
    return {row.group(1): row.group(2) for row in rows if row is not None}


def test_readme_documents_every_monitor_argument():
    rows = readme_argument_rows()
    documented = set(rows)
    arguments = set(constructor_arguments(FilterMonitor))
    assert arguments - documented == set()
    assert documented - arguments == set()
    for name, parameter in constructor_arguments(FilterMonitor).items():
        default = ast.literal_eval(rows[name])
        assert (name, type(default), default) == (name, type(parameter.default), parameter.default)


def test_readme_tag_table_lists_the_logged_tags():
    readme = (REPO / "README.md").read_text()
    lines = readme[readme.index("### What you see in TensorBoard") :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| tag |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(re.match(r"^\| `([^`]+)` \| (\w+) \|", line).groups())  # type: ignore[union-attr]
    assert len(rows) == len(set(rows))
    assert set(rows) == {(each.tag, each.kind) for each in logged_tags()}


@pytest.mark.parametrize("owner", [FilterMonitor, FilterVisualizer])
def test_docstring_lists_every_logged_tag(owner):
    for each in logged_tags():
        assert f"``{each.tag}`` ({each.kind})" in owner.__doc__


OWNERS = [(FilterMonitor, MONITOR), (FilterVisualizer, VISUALIZER)]


@pytest.mark.parametrize(("owner", "name"), OWNERS, ids=[MONITOR, VISUALIZER])
def test_every_argument_is_described_in_the_one_place(owner, name):
    arguments = set(constructor_arguments(owner))
    assert arguments - set(ARGUMENTS) == set()
    described = {argument for argument, entry in ARGUMENTS.items() if name in entry.owners}
    assert described == arguments  # and nothing is described for an owner that does not take it


@pytest.mark.parametrize(("owner", "name"), OWNERS, ids=[MONITOR, VISUALIZER])
def test_docstring_shows_every_argument_description(owner, name):
    arguments = list(constructor_arguments(owner))
    assert [argument for argument in arguments if render_argument(argument) not in owner.__doc__] == []
    assert args_section(arguments, name) in owner.__doc__  # one Args section, in the signature's order
    assert inspect.getdoc(owner).count("\nArgs:\n") == 1  # as help() shows it


@pytest.mark.parametrize("argument", ["filmstrip_layers", "response_layers"])
def test_view_layers_that_match_nothing_fail_at_setup(argument, tmp_path):
    monitor = FilterMonitor(**{argument: ["net.9*"]})
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    with pytest.raises(ValueError, match=rf"`{argument}` entry 'net.9\*' matches none of the watched conv layers"):
        trainer.fit(Classifier(), datamodule=RandomImages())


def test_a_step_that_is_not_an_integer_is_refused(tmp_path):
    visualizer = FilterVisualizer(str(tmp_path))
    with pytest.raises(TypeError, match=r"`step` must be an integer \(the training step\), got 1.5"):
        visualizer.snapshot(conv_bn_relu_stack(), torch.randn(2, 3, 8, 8), 1.5)
    visualizer.snapshot(conv_bn_relu_stack(), torch.randn(2, 3, 8, 8), torch.tensor(2))  # an integer tensor is fine


def test_with_neither_weights_nor_activations_only_scalars_are_written(tmp_path):
    visualizer = FilterVisualizer(str(tmp_path), log_weights=False, log_activations=False)
    model = conv_bn_relu_stack()
    for step in range(3):
        visualizer.snapshot(model, torch.randn(2, 3, 8, 8), step)
    visualizer.finish(3)
    assert list(tmp_path.rglob("*.png")) == []
    assert "filterviz/drift/0" in (tmp_path / "scalars.csv").read_text()


@pytest.mark.parametrize(("max_steps", "warned"), [(12, False), (60, True)])
def test_snapshots_per_epoch_are_counted_from_max_steps(max_steps, warned, tmp_path, recwarn):
    monitor = FilterMonitor(every_n_epochs=1)  # 4 batches an epoch: 3 or 15 epochs, 4 or 16 snapshots
    kwargs = trainer_kwargs(tmp_path, max_epochs=-1, max_steps=max_steps)
    pl.Trainer(callbacks=[monitor], **kwargs).fit(Classifier(), datamodule=RandomImages())
    sampling = [str(warning.message) for warning in recwarn if "TensorBoard shows only" in str(warning.message)]
    if warned:
        assert len(sampling) == 1 and "about 16 snapshots are planned" in sampling[0]
    else:
        assert sampling == []


# A valid value for every setting, none of them its default.
NON_DEFAULT_SETTINGS = dict(
    layers=["net.3"], max_filters=5, max_images=3, dead_threshold=0.5, dead_patience=4, dormant_tau=0.5,
    grad_dormant_tau=0.2,
    weight_normalization="layer", log_weights=False, log_activations=False, batch_key=1, forward_fn=len,
    colormap="magma", filmstrip_layers=[], views_every=3, response_layers=[], examples_layers=[], examples_k=2,
    featvis_layers=["net.0"],
    max_pending=7,
)
# Settings FilterMonitor leaves at their default: its writer waits for at most two snapshots.
NOT_MONITOR_SETTINGS = {"max_pending"}


def as_held(value):
    """A setting's value as the settings hold it: a list of layer names as a tuple."""
    return tuple(value) if isinstance(value, list) else value


def test_every_setting_has_a_non_default_value_to_pass():
    fields = {field.name: field.default for field in dataclasses.fields(VisualizerSettings)}
    assert set(NON_DEFAULT_SETTINGS) == set(fields)
    assert [name for name, value in NON_DEFAULT_SETTINGS.items() if as_held(value) == fields[name]] == []


@pytest.mark.parametrize(
    ("owner", "not_taken"), [(FilterVisualizer, set()), (FilterMonitor, NOT_MONITOR_SETTINGS)], ids=[VISUALIZER, MONITOR]
)
def test_every_setting_argument_reaches_the_settings_by_its_name(owner, not_taken, tmp_path):
    """One setting at a time: its value arrives where it belongs, and every other setting
    keeps its default (a dropped or misrouted argument fails here)."""
    fields = {field.name: field.default for field in dataclasses.fields(VisualizerSettings)}
    arguments = constructor_arguments(owner)
    assert set(fields) - set(arguments) == not_taken
    for name, value in NON_DEFAULT_SETTINGS.items():
        if name in not_taken:
            continue
        built = owner(str(tmp_path), **{name: value}) if owner is FilterVisualizer else owner(**{name: value})
        settings = built.settings if owner is FilterVisualizer else built.engine.settings
        held = {field: getattr(settings, field) for field in fields}
        assert held == {**fields, name: as_held(value)}, name


# Valid values, none of them a default, for the numeric arguments NON_DEFAULT_SETTINGS lacks.
NON_DEFAULT_MONITOR_NUMBERS = dict(every_n_epochs=3, every_n_steps=7, probe_size=5)


def numeric_arguments(owner: type) -> dict[str, type]:
    """Each constructor argument that takes a number: name -> int or float (an int where both would do)."""
    numbers = {}
    for name, parameter in inspect.signature(owner.__init__, eval_str=True).parameters.items():
        kinds = {parameter.annotation, *typing.get_args(parameter.annotation)}
        for kind in (int, float):
            if kind in kinds:
                numbers[name] = kind
                break
    return numbers


def numpy_variants(kind: type, value) -> list:
    """``value`` as the NumPy numbers a config or a sweep gives: any integral one where an int
    belongs, any real one (integral ones too) where a float does."""
    if kind is int:
        return [np.int64(value), np.int32(value), np.uint8(value)]
    return [np.float32(value), np.float64(value), np.float16(value), np.int64(round(value) or 1)]


def held_value(built, owner: type, name: str):
    """How the constructed object holds an argument: in its settings, or as its own attribute."""
    settings = built.settings if owner is FilterVisualizer else built.engine.settings
    return getattr(settings, name) if hasattr(settings, name) else getattr(built, name)


NUMPY_CASES = [
    (owner, name, variant)
    for owner in (FilterMonitor, FilterVisualizer)
    for name, kind in numeric_arguments(owner).items()
    for variant in numpy_variants(kind, {**NON_DEFAULT_SETTINGS, **NON_DEFAULT_MONITOR_NUMBERS}[name])
]


def test_the_numeric_arguments_are_the_expected_ones():
    """The list the NumPy cases are generated from misses no number argument."""
    monitor, visualizer = numeric_arguments(FilterMonitor), numeric_arguments(FilterVisualizer)
    shared = {"max_filters": int, "max_images": int, "dead_patience": int, "views_every": int, "examples_k": int,
              "batch_key": int, "dead_threshold": float, "dormant_tau": float,
              "grad_dormant_tau": float}
    assert monitor == {**shared, **dict.fromkeys(NON_DEFAULT_MONITOR_NUMBERS, int)}
    assert visualizer == {**shared, "max_pending": int}


@pytest.mark.parametrize(
    ("owner", "name", "value"),
    NUMPY_CASES,
    ids=[f"{owner.__name__}-{name}-{type(value).__name__}" for owner, name, value in NUMPY_CASES],
)
def test_numpy_numbers_are_accepted_and_held_as_plain_ones(owner, name, value, tmp_path):
    built = owner(str(tmp_path), **{name: value}) if owner is FilterVisualizer else owner(**{name: value})
    held = held_value(built, owner, name)
    plain = int(value) if numeric_arguments(owner)[name] is int else float(value)
    assert type(held) is type(plain) and held == plain


def test_a_monitor_given_numpy_numbers_has_the_state_key_of_plain_ones():
    """Its checkpoint state is found again whether a config gave 10 or np.int64(10)."""
    assert FilterMonitor(every_n_steps=np.int64(10)).state_key == FilterMonitor(every_n_steps=10).state_key
    assert FilterMonitor(every_n_epochs=np.int32(2)).state_key == FilterMonitor(every_n_epochs=2).state_key
