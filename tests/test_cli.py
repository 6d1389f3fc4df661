"""The callback built by LightningCLI from the YAML files in configs/."""

from __future__ import annotations


import pytest
import yaml

from conftest import REPO, read_events
from lightning_filterviz import FilterMonitor


def test_smoke_config_trains_and_logs_through_lightning_cli(tmp_path, monkeypatch, capsys):
    import train

    monkeypatch.chdir(tmp_path)
    cli = train.main(["fit", "--config", str(REPO / "configs/smoke.yaml")])
    monitors = [callback for callback in cli.trainer.callbacks if isinstance(callback, FilterMonitor)]
    assert len(monitors) == 1
    assert (monitors[0].every_n_steps, monitors[0].probe_size, monitors[0].engine.settings.max_filters) == (2, 4, 16)
    events = read_events(cli.trainer.logger.log_dir)
    assert set(events.images["filterviz/weights/net.0"]) == {0, 2, 4, 6}
    assert "validation accuracy:" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["default.yaml", "resnet18.yaml", "cifar10.yaml"])
def test_every_config_parses_and_builds_its_monitor(name, tmp_path, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    import train

    monkeypatch.chdir(tmp_path)
    cli = LightningCLI(
        train.ImageClassifier,
        train.LightningDataModule,
        subclass_mode_data=True,
        run=False,
        args=["--config", str(REPO / "configs" / name)],
    )
    monitor = next(callback for callback in cli.trainer.callbacks if isinstance(callback, FilterMonitor))
    settings = yaml.safe_load((REPO / "configs" / name).read_text())["trainer"]["callbacks"][0]["init_args"]
    for key in ("every_n_epochs", "every_n_steps", "probe_size"):
        if key in settings:
            assert getattr(monitor, key) == settings[key]


@pytest.mark.parametrize("logger_config", ["wandb.yaml", "mlflow.yaml"])
def test_the_logger_configs_add_their_logger_beside_tensorboard(logger_config, tmp_path, monkeypatch):
    import train
    from logger_records import read_mlflow_run, read_wandb_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    # W&B's service process, started by an earlier test, resolves relative paths from its own
    # working directory: the logger config is used as written, with its directories made absolute.
    config = yaml.safe_load((REPO / "configs" / logger_config).read_text())
    for logger in config["trainer"]["logger"]:
        for key in ("save_dir", "artifact_location"):
            if key in logger["init_args"]:
                logger["init_args"][key] = str(tmp_path / logger["init_args"][key])
    (tmp_path / logger_config).write_text(yaml.safe_dump(config))
    configs = ["--config", str(REPO / "configs/smoke.yaml"), "--config", str(tmp_path / logger_config)]
    cli = train.main(["fit", *configs])
    tensorboard, other = cli.trainer.loggers
    if logger_config == "wandb.yaml":
        other.experiment.finish()
        records = read_wandb_run(other.experiment)
    else:
        records = read_mlflow_run(other._tracking_uri, other.run_id)
    expected = read_events(tensorboard.log_dir).images["filterviz/weights/net.0"]
    assert set(records.images["filterviz/weights/net.0"]) == set(expected) == {0, 2, 4, 6}


def test_the_feature_vis_config_adds_feature_visualization_to_the_first_configs_monitor(tmp_path, monkeypatch):
    import train

    monkeypatch.chdir(tmp_path)
    configs = ["--config", str(REPO / "configs/smoke.yaml"), "--config", str(REPO / "configs/feature_vis.yaml")]
    cli = train.main(["fit", *configs])
    monitors = [callback for callback in cli.trainer.callbacks if isinstance(callback, FilterMonitor)]
    assert len(monitors) == 1  # merged into the first config's monitor, not a second one
    monitor = monitors[0]
    assert (monitor.every_n_steps, monitor.probe_size, monitor.engine.settings.max_filters) == (2, 4, 16)
    assert set(monitor.feature_visualizations) == {"net.0", "net.4"}
    events = read_events(cli.trainer.logger.log_dir)
    # Made at the end of each validation run: after the 3 training steps of each of the 2 epochs.
    for layer in ("net.0", "net.4"):
        assert set(events.images[f"filterviz/feature_vis/{layer}"]) == {3, 6}
