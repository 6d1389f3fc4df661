"""Train the example CNN with FilterMonitor attached, from a LightningCLI config.

    python examples/train.py fit --config configs/default.yaml
    tensorboard --logdir lightning_logs --samples_per_plugin images=1000
"""

from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")

from lightning.pytorch import LightningDataModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cnn_example import ImageClassifier  # noqa: E402


def main(args: list[str] | None = None) -> LightningCLI:
    cli = LightningCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )
    if cli.trainer.state.fn == "fit":
        report(cli)
    return cli


def report(cli: LightningCLI) -> None:
    accuracy = cli.trainer.callback_metrics.get("val_acc")
    classes = cli.model.hparams.num_classes
    if accuracy is not None:
        print(f"validation accuracy: {float(accuracy):.3f} (chance: {1 / classes:.3f})")
    for callback in cli.trainer.callbacks:
        if hasattr(callback, "dead_filters"):
            dead = {layer: indices for layer, indices in callback.dead_filters.items() if indices}
            print(f"dead filters: {dead or 'none'}")
    if cli.trainer.logger is not None:
        print(f"logs: {cli.trainer.logger.log_dir}")


if __name__ == "__main__":
    main()
