"""``filterviz-report --feature-vis CHECKPOINT``: the example trained through LightningCLI,
its checkpoint turned into feature visualizations in the run's history and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from lightning_filterviz import load_history
from lightning_filterviz.__main__ import main
from lightning_filterviz.core.history import FEATURE_VIS_PATTERN, history_files

STEPS = 8  # optimization steps (256 by default): the test checks the wiring, benchmarks/feature_vis.py the cost


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """The smoke config's run, with a checkpoint: (log dir, checkpoint)."""
    import train

    root = tmp_path_factory.mktemp("offline")
    cli = train.main(
        [
            "fit", "--config", str(REPO / "configs/smoke.yaml"),
            "--trainer.enable_checkpointing", "true",
            "--trainer.logger.init_args.save_dir", str(root / "lightning_logs"),
            "--trainer.default_root_dir", str(root),
        ]
    )
    log_dir = Path(cli.trainer.logger.log_dir)
    checkpoints = sorted(Path(root).rglob("*.ckpt"))
    assert checkpoints, "the run saved no checkpoint"
    return log_dir, checkpoints[-1]


def _feature_vis_files(log_dir: Path) -> list[Path]:
    return history_files(log_dir / "filterviz" / "history", FEATURE_VIS_PATTERN)


def test_the_checkpoint_names_its_model_and_the_report_gets_its_visualizations(trained_run, capsys):
    log_dir, checkpoint = trained_run
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    monitor_state = next(value for key, value in state["callbacks"].items() if key.startswith("FilterMonitor"))
    assert monitor_state["model_class"] == "cnn_example:ImageClassifier"
    before = _feature_vis_files(log_dir)
    output = log_dir / "report.html"
    code = main(["report", str(log_dir), "-o", str(output), "--feature-vis", str(checkpoint), "--featvis-steps", str(STEPS)])
    assert code == 0, capsys.readouterr().err
    made = sorted(set(_feature_vis_files(log_dir)) - set(before))
    assert len(made) == 1
    arrays = load_history(made[0])
    assert int(arrays["step"]) == state["global_step"]
    assert arrays["layers"].tolist() == ["net.0"]  # the first conv by default
    images = arrays["net.0/images"]
    assert images.dtype == np.uint8 and images.shape[0] == 16 and images.shape[-1] == 3  # max_filters: 16
    assert images.shape[1:3] == (32, 32)  # the probe's size
    assert len({image.tobytes() for image in images}) == len(images)  # each filter its own picture
    assert output.is_file()


def test_a_model_given_as_a_file_and_chosen_layers(trained_run, capsys):
    log_dir, checkpoint = trained_run
    before = _feature_vis_files(log_dir)
    code = main(
        [
            "report", str(log_dir), "-o", str(log_dir / "report2.html"),
            "--feature-vis", str(checkpoint), "--featvis-steps", str(STEPS),
            "--model", str(REPO / "examples" / "cnn_example.py") + ":ImageClassifier",
            "--featvis-layers", "net.4",
        ]
    )
    assert code == 0, capsys.readouterr().err
    made = sorted(set(_feature_vis_files(log_dir)) - set(before))
    assert load_history(made[-1])["layers"].tolist() == ["net.4"]


def test_bad_input_says_what_to_do(trained_run, tmp_path, capsys):
    log_dir, checkpoint = trained_run
    assert main(["report", str(log_dir), "--feature-vis", str(tmp_path / "missing.ckpt")]) == 2
    assert "cannot read the checkpoint" in capsys.readouterr().err
    assert main(["report", str(log_dir), "--feature-vis", str(checkpoint), "--model", "no_such_module:Net"]) == 2
    assert "cannot import the model class no_such_module:Net" in capsys.readouterr().err
    assert main(["report", str(log_dir), "--feature-vis", str(checkpoint), "--featvis-layers", "nothing*"]) == 2
    assert "`featvis_layers` entry 'nothing*' matches none" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--feature-vis", str(checkpoint)]) == 2
    assert "needs the log dir of one run" in capsys.readouterr().err
