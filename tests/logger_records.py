"""Read back what each logger's own records hold (a W&B offline run, an MLflow store, a Comet
offline archive, a CSV logger's metrics file, a directory of PNG files), in its own format;
and the loggers themselves, made to write locally."""

from __future__ import annotations

import csv
import io
import json
import re
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import pl

# A W&B run file: a 7-byte header, then LevelDB-log records in 32 KiB blocks.
WANDB_HEADER = 7
WANDB_BLOCK = 32768
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
STEP_KEY = "trainer/global_step"


@dataclass
class LoggedRecords:
    """What one logger holds: images decoded to (H, W, 3) uint8, scalars and tables, by tag and step."""

    images: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    scalars: dict[str, dict[int, float]] = field(default_factory=dict)
    tables: dict[str, dict[int, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------- loggers, writing locally


@pytest.fixture
def offline_wandb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield wandb
    wandb.finish()


@pytest.fixture
def offline_comet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # In Lightning 2.6.6 CometLogger(online=False) disables the experiment (Lightning#21617);
    # Comet's own setting starts it offline.
    monkeypatch.setenv("COMET_START_ONLINE", "0")
    yield
    import comet_ml

    experiment = comet_ml.get_global_experiment()
    if experiment is not None:  # a test that failed before ending its experiment
        experiment.end()


def wandb_logger(tmp_path: Path) -> Any:
    return pl.loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="filterviz-tests")


def mlflow_logger(tmp_path: Path) -> Any:
    return pl.loggers.MLFlowLogger(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "mlflow-artifacts")
    )


def comet_logger(tmp_path: Path) -> Any:
    """An offline CometLogger (under the ``offline_comet`` fixture) whose archive goes to
    ``<tmp_path>/comet`` when its experiment ends; it logs no code, environment or console."""
    return pl.loggers.CometLogger(
        offline_directory=str(tmp_path / "comet"),
        project="filterviz-tests",
        log_code=False,
        log_git_metadata=False,
        log_git_patch=False,
        log_env_details=False,
        auto_output_logging=False,
        display_summary_level=0,
    )


# ---------------------------------------------------------------- reading back


def read_wandb_run(run: Any) -> LoggedRecords:
    """Every history row of a finished offline ``wandb`` run (``WandbLogger.experiment``), keyed by
    the trainer's step."""
    run_file = _finished_run_file(Path(run.dir).parent)
    records = LoggedRecords()
    for row in _history_rows(run_file):
        if STEP_KEY not in row:
            continue
        step = int(row[STEP_KEY])
        for key, value in row.items():
            if isinstance(value, dict) and value.get("_type") == "image-file":
                records.images.setdefault(key, {})[step] = _rgb(run_file.parent / "files" / value["path"])
            elif isinstance(value, dict) and value.get("_type") == "table-file":
                table = json.loads((run_file.parent / "files" / value["path"]).read_text())
                records.tables.setdefault(key, {})[step] = table
            elif isinstance(value, (int, float)) and key.startswith("filterviz/"):
                records.scalars.setdefault(key, {})[step] = float(value)
    return records


def _finished_run_file(run_dir: Path, timeout: float = 30.0) -> Path:
    # `run.finish()` can return while W&B's service process still writes the run file:
    # look again until the file holds the run's exit record.
    deadline = time.monotonic() + timeout
    while True:
        run_files = list(run_dir.glob("run-*.wandb"))
        if run_files and any(record.WhichOneof("record_type") == "exit" for record in _wandb_records(run_files[0])):
            return run_files[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no finished W&B run in {run_dir} after {timeout} s")
        time.sleep(0.05)


def _history_rows(run_file: Path) -> list[dict[str, Any]]:
    records = _wandb_records(run_file)
    return [_history_row(record.history.item) for record in records if record.WhichOneof("record_type") == "history"]


def _wandb_records(run_file: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    records = []
    try:
        chunks = _leveldb_log_records(run_file.read_bytes(), run_file.name)
    except ValueError:  # caught in the middle of a write
        return []
    for data in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        records.append(record)
    return records


def _history_row(items: Any) -> dict[str, Any]:
    # A logged dict (a wandb.Image's JSON, say) arrives as one item per leaf, under a nested key.
    row: dict[str, Any] = {}
    for item in items:
        *parents, leaf = list(item.nested_key) or [item.key]
        place = row
        for parent in parents:
            place = place.setdefault(parent, {})
        place[leaf] = json.loads(item.value_json)
    return row


def _leveldb_log_records(data: bytes, run_file_name: str) -> list[bytes]:
    records, pending, position = [], b"", WANDB_HEADER
    while position + RECORD_HEADER <= len(data):
        left_in_block = WANDB_BLOCK - position % WANDB_BLOCK
        if left_in_block < RECORD_HEADER:  # a block's tail too short for a header is padding
            position += left_in_block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + RECORD_HEADER])
        chunk = data[position + RECORD_HEADER : position + RECORD_HEADER + length]
        if kind == 0 and length == 0:  # zero padding at the end of what has been written
            break
        if zlib.crc32(bytes([kind]) + chunk) != checksum:
            raise ValueError(f"W&B run file {run_file_name}: bad checksum at byte {position}")
        position += RECORD_HEADER + length
        if kind == FULL:
            records.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            records.append(pending + chunk)
    return records


def read_mlflow_run(tracking_uri: str, run_id: str) -> LoggedRecords:
    """Images from the run's artifact store (as MLflow's image view finds them), metrics from the client."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    records = LoggedRecords()
    for key in client.get_run(run_id).data.metrics:
        records.scalars[key] = {metric.step: metric.value for metric in client.get_metric_history(run_id, key)}
    artifact_root = Path(client.download_artifacts(run_id, ""))
    pattern = re.compile(r"^(?P<key>.+?)[%+]step[%+](?P<step>\d+)[%+]timestamp[%+]\d+[%+][0-9a-f-]+\.png$")
    for path in (artifact_root / "images").glob("*.png"):
        match = pattern.match(path.name)
        if match is not None:  # not a "+compressed" thumbnail
            key = re.sub(r"[~#]", "/", match["key"])
            records.images.setdefault(key, {})[int(match["step"])] = _rgb(path)
    for path in (artifact_root / "filterviz").rglob("step_*.md"):
        tag = path.parent.relative_to(artifact_root).as_posix()
        records.tables.setdefault(tag, {})[int(path.stem.removeprefix("step_"))] = path.read_text()
    return records


def read_comet_archive(offline_directory: Path) -> LoggedRecords:
    """What an ended offline Comet experiment's archive holds: the images logged with
    ``log_image`` (by name and step), every metric logged with a step, and the texts logged
    with a ``tag`` in their metadata (by tag and step)."""
    (archive,) = Path(offline_directory).glob("*.zip")
    records = LoggedRecords()
    with zipfile.ZipFile(archive) as zipped:
        for line in zipped.read("messages.json").splitlines():
            message = json.loads(line)
            payload = message["payload"]
            if message["type"] == "metric_msg" and payload["metric"]["step"] is not None:
                metric = payload["metric"]
                records.scalars.setdefault(metric["metricName"], {})[metric["step"]] = float(metric["metricValue"])
            elif message["type"] == "file_upload" and payload["upload_type"] == "visualization":
                params, data = payload["additional_params"], zipped.read(payload["file_path"])
                records.images.setdefault(params["figName"], {})[params["step"]] = _rgb(io.BytesIO(data))
            elif message["type"] == "file_upload" and "tag" in (payload.get("metadata") or {}):
                step, text = payload["additional_params"]["step"], zipped.read(payload["file_path"]).decode()
                records.tables.setdefault(payload["metadata"]["tag"], {})[step] = text
    return records


def read_csv_metrics(log_dir: str) -> LoggedRecords:
    """The scalars in a CSVLogger's ``metrics.csv``, by column and step."""
    records = LoggedRecords()
    with open(Path(log_dir) / "metrics.csv") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key != "step" and value:
                    records.scalars.setdefault(key, {})[int(row["step"])] = float(value)
    return records


def read_png_directory(root: Path) -> LoggedRecords:
    """What a DirectorySink wrote: ``<tag>/step_<step>.png`` files (the tag without its
    ``filterviz/`` prefix), ``scalars.csv`` and the Markdown of ``text.md``."""
    records = LoggedRecords()
    for path in root.rglob("step_*.png"):
        tag = "filterviz/" + path.parent.relative_to(root).as_posix()
        records.images.setdefault(tag, {})[int(path.stem.removeprefix("step_"))] = _rgb(path)
    if (root / "scalars.csv").exists():
        with open(root / "scalars.csv") as handle:
            for row in csv.DictReader(handle):
                records.scalars.setdefault(row["tag"], {})[int(row["step"])] = float(row["value"])
    if (root / "text.md").exists():
        sections = re.finditer(r"^## (?P<tag>.+) \(step (?P<step>\d+)\)\n\n(?P<text>.*?)\n\n(?=## |\Z)",
                               (root / "text.md").read_text(), flags=re.MULTILINE | re.DOTALL)
        for section in sections:
            records.tables.setdefault(section["tag"], {})[int(section["step"])] = section["text"]
    return records


def _rgb(file: Any) -> np.ndarray:
    return np.asarray(Image.open(file).convert("RGB"))
