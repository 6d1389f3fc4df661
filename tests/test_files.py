"""Results on disk are never lost or misplaced: nothing is written over an older file, a
failed write leaves no partial file, a directory that cannot be written costs the files,
not the run, a layer's name never leads outside the log directory, and the report draws
what a damaged history still holds."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import Classifier, FilterMonitor, RandomImages, conv_bn_relu_stack, pl, trainer_kwargs

from lightning_filterviz import FilterVisualizer, load_history
from lightning_filterviz.__main__ import main
from lightning_filterviz.core.files import write_new_file
from lightning_filterviz.core.history import EXAMPLES_PATTERN, history_files
from lightning_filterviz.core.layer_names import file_name_part
from lightning_filterviz.publishing.sinks.directory import DirectorySink
from lightning_filterviz.report.build import ReportWarning, build_report, load_runs

DEAD = 1  # the planted dead filter of net.3
KEPT_BOTH = "Nothing is overwritten"


def planted_classifier() -> Classifier:
    """conv_bn_relu_stack with filter 1 of ``net.3`` dead: a bias no input overcomes, and a
    ReLU that gives it no gradient, so it stays dead through training."""
    torch.manual_seed(0)
    model = Classifier()
    with torch.no_grad():
        model.net[3].bias[DEAD] = -1e4
    return model


def fit(tmp_path: Path, monitor: FilterMonitor, model: Classifier, **overrides) -> list[warnings.WarningMessage]:
    """Fit ``model`` for one epoch (4 steps) and return the warnings it raised."""
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, **overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pl.Trainer(callbacks=[monitor], **kwargs).fit(model, datamodule=RandomImages())
    assert model.global_step == 4  # training finished, whatever the files did
    return caught


def messages(caught: list[warnings.WarningMessage], text: str) -> list[str]:
    return [str(warning.message) for warning in caught if text in str(warning.message)]


def files_under(root: Path) -> dict[str, bytes]:
    """Every PNG and history file under ``root`` (scalars.csv and text.md are appended to, by design)."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and path.suffix in (".png", ".npz")
    }


# ---------------------------------------------------------------- never overwrite


def test_a_second_fit_into_the_same_log_directory_keeps_both_and_warns_once(tmp_path):
    # A CSVLogger takes no images: the PNG files and the history both lie in its directory.
    def logger():
        return pl.loggers.CSVLogger(str(tmp_path), name="csv", version=0)

    first_fit = fit(tmp_path, FilterMonitor(every_n_steps=2), planted_classifier(), logger=logger())
    log_dir = tmp_path / "csv" / "version_0" / "filterviz"
    assert not messages(first_fit, KEPT_BOTH)  # the control: a first fit has nothing to keep apart
    first = files_under(log_dir)
    first_steps = sorted(int(load_history(log_dir / "history" / name.split("/")[-1])["step"])
                         for name in first if name.startswith("history/step_"))
    assert first_steps == [0, 2, 4]

    second_fit = fit(tmp_path, FilterMonitor(every_n_steps=2), planted_classifier(), logger=logger())

    (told,) = messages(second_fit, KEPT_BOTH)  # once, for the PNG files and the history together
    assert f"the PNG files in {log_dir}" in told and f"the history files in {log_dir / 'history'}" in told
    after = files_under(log_dir)
    assert all(after[name] == data for name, data in first.items())  # not one byte of the first fit changed
    for name in first:  # and each of its files has the second fit's beside it
        stem, suffix = os.path.splitext(name)
        assert f"{stem}-2{suffix}" in after, name
    assert not any("-3." in name or name.endswith(".partial") for name in after)
    # Read back by step, then in the order written: first fit, second fit.
    ordered = [path.name for path in history_files(log_dir / "history")]
    assert ordered == [f"step_{step:08d}{copy}.npz" for step in (0, 2, 4) for copy in ("", "-2")]
    (run,) = load_runs(tmp_path / "csv")
    assert run.steps == [0, 0, 2, 2, 4, 4]
    assert [record.path.name for record in run.records] == ordered
    assert all(list(record.dead["net.3"]) == [DEAD] for record in run.records[2:])


def test_two_snapshots_at_one_step_keep_both_and_warn_once(tmp_path):
    model, probe = conv_bn_relu_stack(), torch.randn(2, 3, 8, 8)
    visualizer = FilterVisualizer(tmp_path / "png", history_dir=tmp_path / "history", max_images=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        visualizer.snapshot(model, probe, step=5)
        assert not messages(caught, KEPT_BOTH)
        first = files_under(tmp_path)
        with torch.no_grad():
            model[0].weight.mul_(-1)  # the second snapshot differs, so a file written over would show
        visualizer.snapshot(model, probe, step=5)
        visualizer.snapshot(model, probe, step=5)
        visualizer.close()
    assert len(messages(caught, KEPT_BOTH)) == 1
    after = files_under(tmp_path)
    assert all(after[name] == data for name, data in first.items())
    weights = tmp_path / "png" / "weights" / "0"
    assert sorted(path.name for path in weights.iterdir()) == ["step_00000005-2.png", "step_00000005-3.png", "step_00000005.png"]
    assert (weights / "step_00000005.png").read_bytes() != (weights / "step_00000005-2.png").read_bytes()
    files = history_files(tmp_path / "history")
    assert [path.name for path in files] == ["step_00000005.npz", "step_00000005-2.npz", "step_00000005-3.npz"]
    filters = [load_history(path)["0/filters"] for path in files]
    np.testing.assert_array_equal(filters[1], -filters[0])  # the order written: before, then after the flip


def test_write_new_file_takes_the_first_free_copy_number_and_sorts_copies_numerically(tmp_path):
    for number in range(12):
        write_new_file(tmp_path / "step_00000003.npz", bytes([number]))
    write_new_file(tmp_path / "step_00000010.npz", b"later")
    names = [path.name for path in history_files(tmp_path)]
    assert names[:3] == ["step_00000003.npz", "step_00000003-2.npz", "step_00000003-3.npz"]
    assert names[-3:] == ["step_00000003-11.npz", "step_00000003-12.npz", "step_00000010.npz"]
    assert [(tmp_path / name).read_bytes() for name in names[:-1]] == [bytes([number]) for number in range(12)]


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_under_the_history_leaves_no_partial_file_warns_once_and_training_goes_on(tmp_path):
    history = tmp_path / "tb" / "version_0" / "filterviz" / "history"
    history.mkdir(parents=True)
    # The first history file's bytes go to /dev/full, which fails every write as a full disk does (ENOSPC).
    (history / ".step_00000000.npz.partial").symlink_to("/dev/full")
    monitor = FilterMonitor(every_n_steps=1)
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0)
    caught = fit(tmp_path, monitor, planted_classifier(), logger=logger)

    (told,) = messages(caught, "No space left on device")
    assert f"the history files in {history}" in told
    assert list(history.iterdir()) == []  # no partial file, and no later history file
    assert monitor.dead_filters["net.3"] == [DEAD]  # the statistics went on


def test_a_failed_png_write_leaves_no_partial_file(tmp_path):
    sink = DirectorySink(tmp_path)
    folder = sink.image_path("filterviz/weights/net.0")
    folder.mkdir(parents=True)
    (folder / ".step_00000007.png.partial").symlink_to("/dev/full")
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(OSError, match="No space left on device"):
        sink.add_image("filterviz/weights/net.0", image, step=7)
    assert list(folder.iterdir()) == []
    sink.add_image("filterviz/weights/net.0", image, step=8)  # the control: where the disk has room, it writes
    assert [path.name for path in folder.iterdir()] == ["step_00000008.png"]


# ---------------------------------------------------------------- a log directory that cannot be written


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_log_directory_that_cannot_be_made_warns_once_and_training_finishes(tmp_path, where):
    # Root may write anywhere; no one can make a directory where a file is, or under one.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the log directory should be")
    log_dir = blocker if where == "a file" else blocker / "logs"
    monitor = FilterMonitor(every_n_steps=1)
    caught = fit(tmp_path, monitor, planted_classifier(), logger=False, default_root_dir=str(log_dir))

    told = messages(caught, "filterviz: writing to")
    assert len(told) == 1 and "PNG files" in told[0] and "history files" in told[0]
    assert ("NotADirectoryError" in told[0]) or ("FileExistsError" in told[0])
    assert monitor.dead_filters["net.3"] == [DEAD]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blocker"] and blocker.is_file()


# ---------------------------------------------------------------- layer names that are paths


# Inside the Classifier (``net.``), from <log dir>/filterviz/weights/net... six levels up: tmp_path.
ESCAPING = "../../../../../../escaped"


class Escaping(nn.Module):
    """Three convs whose names are paths or look like escaped ones; ``..`` only through
    setattr, which (unlike add_module) does not refuse a dot."""

    def __init__(self) -> None:
        super().__init__()
        setattr(self, ESCAPING, nn.Conv2d(3, 4, 3, padding=1))
        self.add_module("a/b", nn.Conv2d(4, 4, 3, padding=1))
        self.add_module("a%2Fb", nn.Conv2d(4, 4, 3, padding=1))  # "a/b" escaped naively
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convs = [self._modules[name] for name in (ESCAPING, "a/b", "a%2Fb")]
        for conv in convs:
            x = torch.relu(conv(x))
        return self.head(x.mean(dim=(2, 3)))


def test_layer_names_that_are_paths_write_nothing_outside_the_log_directory(tmp_path):
    log_dir = tmp_path / "deep" / "inside" / "logs"
    outside_before = {path for path in tmp_path.rglob("*")}
    fit(tmp_path, FilterMonitor(every_n_steps=2), Classifier(net=Escaping()), logger=False, default_root_dir=str(log_dir))

    written = {path for path in tmp_path.rglob("*") if path.is_file()}
    assert written and all(log_dir in path.parents for path in written - outside_before), sorted(map(str, written))
    weights = log_dir / "filterviz" / "weights"
    # One folder per layer, each its own files: no two names share one.
    expected = {"net...%2F..%2F..%2F..%2F..%2F..%2Fescaped", "net.a%2Fb", "net.a%252Fb"}
    assert {path.name for path in weights.iterdir()} == expected
    pngs = {folder: sorted(path.name for path in (weights / folder).iterdir()) for folder in expected}
    assert all(names == ["step_00000000.png", "step_00000002.png", "step_00000004.png"] for names in pngs.values())
    assert len({(weights / folder / "step_00000004.png").read_bytes() for folder in expected}) == 3
    arrays = load_history(log_dir / "filterviz" / "history" / "step_00000004.npz")
    assert sorted(map(str, arrays["layers"])) == sorted([f"net.{ESCAPING}", "net.a%2Fb", "net.a/b"])
    assert build_report(log_dir).is_file()


@pytest.mark.parametrize(
    "names",
    [
        ["..", ".", "", "%", "%2E", "%2E%2E"],
        ["a/b", "a%2Fb", "a\\b", "a%5Cb", "a:b"],
        ["con", "CON", "%43ON", "a.", "a%2E", "a "],
        ["x" * 300, "x" * 301, "x" * 150 + "~" + "0" * 16],
    ],
    ids=["dots", "separators", "windows", "long"],
)
def test_file_name_parts_are_single_safe_names_that_never_collide(tmp_path, names):
    parts = [file_name_part(name) for name in names]
    assert len(set(parts)) == len(names)
    for part in parts:
        assert part not in ("", ".", "..") and not set(part) & set("/\\:") and len(part.encode()) <= 200
        (tmp_path / part).mkdir()  # a real folder, right here
    assert len(list(tmp_path.iterdir())) == len(names)
    assert file_name_part("features.3.conv") == "features.3.conv"  # ordinary names stay as they are


# ---------------------------------------------------------------- the report on a damaged history


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run's history: snapshots at steps 0, 2, 4, 6, 8, and dataset examples at the
    two validation runs (steps 4 and 8)."""
    root = tmp_path_factory.mktemp("damaged")
    kwargs = trainer_kwargs(root, max_epochs=2)
    monitor = FilterMonitor(every_n_steps=2, examples_layers=["net.0", "net.3"])
    pl.Trainer(callbacks=[monitor], **kwargs).fit(planted_classifier(), datamodule=RandomImages())
    return root / "tb" / "version_0" / "filterviz" / "history"


def damaged_copy(history: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run" / "filterviz" / "history"
    shutil.copytree(history, copy)
    return copy


def without(path: Path, key: str) -> None:
    arrays = load_history(path)
    del arrays[key]
    np.savez(path, **arrays)


def report_lines(tmp_path: Path, capsys) -> tuple[str, list[str]]:
    output = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "run"), "-o", str(output)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{output}\n"
    return output.read_text(encoding="utf-8"), captured.err.splitlines()


def test_an_examples_file_without_a_layers_arrays_is_named_and_the_rest_is_drawn(history, tmp_path, capsys):
    examples = history_files(damaged_copy(history, tmp_path), EXAMPLES_PATTERN)
    assert [path.name for path in examples] == ["validation_examples_00000004.npz", "validation_examples_00000008.npz"]
    damaged = tmp_path / "run" / "filterviz" / "history" / examples[1].name
    without(damaged, "net.0/indices")

    page, lines = report_lines(tmp_path, capsys)

    assert lines == [f"filterviz report: {damaged} lacks net.0/indices: the dataset examples of net.0 at step 8 are left out"]
    assert "validation run (steps 4)" in page  # net.0's examples from the run that is whole
    assert "Dataset examples: net.3, filter 0" in page and "steps 4, 8" in page  # net.3's from both
    assert "steps: 0, 2, 4, 6, 8." in page and "Final filters: net.3" in page
    assert f"{damaged} lacks net.0/indices" in page  # the page says what it leaves out


def test_a_truncated_and_a_foreign_history_file_are_skipped_by_name(history, tmp_path, capsys):
    copy = damaged_copy(history, tmp_path)
    truncated = copy / "step_00000006.npz"
    truncated.write_bytes(truncated.read_bytes()[:300])
    foreign = copy / "step_00000002.npz"
    np.savez(foreign, x=np.zeros(3))
    layer_lost = copy / "step_00000004.npz"
    without(layer_lost, "net.3/filters")

    with pytest.warns(ReportWarning) as record:
        (run,) = load_runs(tmp_path / "run")
    assert run.steps == [0, 4, 8]
    assert "net.3" not in run.records[1].layers and "net.0" in run.records[1].layers
    assert len([warning for warning in record if warning.category is ReportWarning]) == 3

    page, lines = report_lines(tmp_path, capsys)
    assert sorted(lines) == sorted([
        f"filterviz report: {foreign} is not a lightning_filterviz history file "
        "(format 'lightning_filterviz.history/1'); the file is skipped",
        f"filterviz report: {layer_lost} lacks net.3/filters: net.3 at step 4 is left out",
        f"filterviz report: {truncated} is corrupt: File is not a zip file; the file is skipped",
    ])
    assert "steps: 0, 4, 8." in page and "Filmstrip: net.0" in page
