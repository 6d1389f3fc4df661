"""Every logger gets every snapshot of a fit in its own records: W&B (offline), MLflow (local
store), Comet (offline), TensorBoard, CSV, several at once, and the others go on when one of
them fails. What each sink writes through the Sink API alone is held to one contract in
test_sink_contract.py."""

from __future__ import annotations

import csv
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import Classifier, FilterMonitor, NoValidation, RandomImages, pl, read_events, trainer_kwargs
from logger_records import (
    LoggedRecords,
    comet_logger,
    mlflow_logger,
    offline_comet,  # noqa: F401  (a fixture)
    offline_wandb,  # noqa: F401  (a fixture)
    read_comet_archive,
    read_mlflow_run,
    read_wandb_run,
    wandb_logger,
)

SNAPSHOT_STEPS = [0, 2, 4]  # every_n_steps=2 over one epoch of 4 batches
CONTRACT_IMAGE_TAGS = {"filterviz/weights/net.0", "filterviz/activations/net.0", "filterviz/weights/net.3"}
CONTRACT_SCALAR_TAGS = {"filterviz/dead_fraction/net.0", "filterviz/dead_fraction/net.3"}


def fit(tmp_path: Path, loggers: list, model=None, callbacks=()) -> None:
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, logger=loggers)
    trainer = pl.Trainer(callbacks=[FilterMonitor(every_n_steps=2), *callbacks], **kwargs)
    trainer.fit(model if model is not None else Classifier(), datamodule=RandomImages())


def assert_holds_every_snapshot(records: LoggedRecords) -> None:
    for tag in CONTRACT_IMAGE_TAGS:
        assert sorted(records.images[tag]) == SNAPSHOT_STEPS, tag
    for tag in CONTRACT_SCALAR_TAGS:
        assert sorted(records.scalars[tag]) == SNAPSHOT_STEPS, tag
        assert all(0.0 <= value <= 1.0 for value in records.scalars[tag].values())
    assert "filterviz/layers" in records.tables and "filterviz/dead_filters" in records.tables


def test_wandb_alone_gets_images_scalars_and_tables_at_the_trainers_steps(tmp_path, offline_wandb):
    logger = wandb_logger(tmp_path)
    fit(tmp_path, [logger])
    logger.experiment.finish()
    records = read_wandb_run(logger.experiment)
    assert_holds_every_snapshot(records)
    layers = records.tables["filterviz/layers"][0]
    assert layers["columns"][:3] == ["conv", "filters", "activation"]
    assert [row[0] for row in layers["data"]] == ["net.0", "net.3"]
    # No PNG files of the monitor's own beside a logger that takes the images.
    assert not list(tmp_path.rglob("weights/net.0/step_*.png"))


def test_mlflow_alone_gets_images_by_key_and_step_and_scalars_as_metrics(tmp_path):
    logger = mlflow_logger(tmp_path)
    fit(tmp_path, [logger])
    records = read_mlflow_run(logger._tracking_uri, logger.run_id)
    assert_holds_every_snapshot(records)
    assert records.tables["filterviz/layers"][0].startswith("| conv | filters | activation |")
    assert "val_loss" in records.scalars  # the filterviz scalars sit beside the run's own metrics


def test_comet_alone_gets_images_by_name_and_step_scalars_as_metrics_and_tables_as_text(tmp_path, offline_comet):
    logger = comet_logger(tmp_path)
    fit(tmp_path, [logger])
    logger.experiment.end()  # writes the offline archive
    records = read_comet_archive(tmp_path / "comet")
    assert_holds_every_snapshot(records)
    assert records.tables["filterviz/layers"][0].startswith("| conv | filters | activation |")
    assert "val_loss" in records.scalars  # the filterviz scalars sit beside the run's own metrics
    assert not list(tmp_path.rglob("weights/net.0/step_*.png"))


def test_tensorboard_wandb_mlflow_and_comet_at_once_hold_the_same_pixels_and_values(
    tmp_path, offline_wandb, offline_comet
):
    loggers = [
        pl.loggers.TensorBoardLogger(str(tmp_path), name="tb"),
        wandb_logger(tmp_path),
        mlflow_logger(tmp_path),
        comet_logger(tmp_path),
    ]
    fit(tmp_path, loggers)
    loggers[1].experiment.finish()
    loggers[3].experiment.end()
    tensorboard = read_events(loggers[0].log_dir)
    wandb_records = read_wandb_run(loggers[1].experiment)
    mlflow_records = read_mlflow_run(loggers[2]._tracking_uri, loggers[2].run_id)
    comet_records = read_comet_archive(tmp_path / "comet")
    image_tags = {tag for tag in tensorboard.images if tag.startswith("filterviz/")}
    assert CONTRACT_IMAGE_TAGS <= image_tags
    for records in (wandb_records, mlflow_records, comet_records):
        assert_holds_every_snapshot(records)
        assert set(records.images) == image_tags
        for tag in image_tags:
            assert records.images[tag].keys() == tensorboard.images[tag].keys(), tag
            for step, pixels in tensorboard.images[tag].items():
                np.testing.assert_array_equal(records.images[tag][step], pixels, err_msg=f"{tag} at step {step}")
        for tag in CONTRACT_SCALAR_TAGS | {"filterviz/drift/net.0", "filterviz/dormant_fraction/net.3"}:
            assert records.scalars[tag] == pytest.approx(tensorboard.scalars[tag]), tag


class FinishWandbRunAt(pl.Callback):
    """Ends the W&B run in the middle of training, as a user's code or a lost session would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.loggers[1].experiment.finish()


def test_a_logger_that_fails_mid_run_gives_one_warning_and_the_others_get_every_snapshot(tmp_path, offline_wandb):
    loggers = [pl.loggers.TensorBoardLogger(str(tmp_path), name="tb"), wandb_logger(tmp_path), mlflow_logger(tmp_path)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, loggers, model=NoValidation(), callbacks=[FinishWandbRunAt(step=3)])
    failures = [str(warning.message) for warning in caught if "failed, so it gets no more" in str(warning.message)]
    assert len(failures) == 1 and failures[0].startswith("filterviz: writing to WandbLogger failed")
    assert sorted(read_events(loggers[0].log_dir).images["filterviz/weights/net.0"]) == SNAPSHOT_STEPS
    assert_holds_every_snapshot(read_mlflow_run(loggers[2]._tracking_uri, loggers[2].run_id))
    # What W&B got before its run ended (the snapshots the writer had finished by then); not step 4.
    assert set(read_wandb_run(loggers[1].experiment).images.get("filterviz/weights/net.0", {})) <= {0, 2}


def test_csv_logger_gets_the_scalars_in_its_metrics_file_and_the_images_as_png_files(tmp_path):
    logger = pl.loggers.CSVLogger(str(tmp_path), name="csv")
    fit(tmp_path, [logger])
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for tag in CONTRACT_SCALAR_TAGS:
        steps = sorted(int(row["step"]) for row in rows if row.get(tag))
        assert steps == SNAPSHOT_STEPS, tag
    assert len(list((Path(logger.log_dir) / "filterviz" / "weights" / "net.0").glob("step_*.png"))) == 3


class MetricsOnlyLogger(pl.loggers.Logger):
    """A logger with no image API, like the ones the monitor does not draw for yet."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[dict, int]] = []

    @property
    def name(self) -> str:
        return "metrics-only"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((dict(metrics), step))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_a_logger_without_images_gets_the_scalars_a_message_and_png_files(tmp_path):
    logger = MetricsOnlyLogger()
    with pytest.warns(UserWarning, match="MetricsOnlyLogger cannot take the snapshot images"):
        fit(tmp_path, [logger])
    steps = sorted(step for metrics, step in logger.logged if "filterviz/dead_fraction/net.0" in metrics)
    assert steps == SNAPSHOT_STEPS
    assert list(tmp_path.rglob("filterviz/weights/net.0/step_00000000.png"))


def test_importing_the_package_its_callback_and_every_sink_imports_no_logger_package():
    code = (
        "import sys, lightning_filterviz; from lightning_filterviz import FilterMonitor, FilterVisualizer; "
        "from lightning_filterviz.publishing.sinks.registry import registered_sinks; registered_sinks(); "
        "print(sorted(name for name in ('wandb', 'mlflow', 'comet_ml') if name in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
