"""DDP on CPU with two processes: one set of images, written by rank 0, no hang; gradient
dormancy judged on the gradients averaged across ranks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch import Tensor, nn

from conftest import Classifier, FilterMonitor, RandomImages, pl, trainer_kwargs


def test_ddp_two_processes_write_one_set_of_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = FilterMonitor(every_n_steps=1, probe_size=4)
    kwargs = trainer_kwargs(tmp_path, max_epochs=2, devices=2, strategy="ddp_spawn")
    trainer = pl.Trainer(callbacks=[monitor], **kwargs)
    trainer.fit(Classifier(), datamodule=RandomImages())

    log_dirs = list((tmp_path / "tb").iterdir())
    assert [path.name for path in log_dirs] == ["version_0"]
    accumulator = EventAccumulator(str(log_dirs[0]), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    steps_per_epoch = 32 // (8 * 2)
    expected = Counter(range(2 * steps_per_epoch + 1))
    for tag in ("filterviz/weights/net.0", "filterviz/activations/net.0", "filterviz/weights/net.3"):
        assert Counter(event.step for event in accumulator.Images(tag)) == expected, tag
    assert Counter(event.step for event in accumulator.Scalars("filterviz/dead_fraction/net.3")) == expected


def test_sync_batchnorm_model_needs_no_collective_for_the_probe_pass(tmp_path):
    """SyncBatchNorm all-reduces only in training mode; the probe pass runs in eval mode.

    There is no process group here: a collective would raise, so success proves none ran.
    (DDP with SyncBatchNorm needs GPUs, so this is the CPU check.)
    """
    from conftest import conv_bn_relu_stack
    from lightning_filterviz import FilterVisualizer

    model = nn.SyncBatchNorm.convert_sync_batchnorm(conv_bn_relu_stack()).train()
    assert isinstance(model[1], nn.SyncBatchNorm)
    snapshot = FilterVisualizer(str(tmp_path)).snapshot(model, torch.randn(2, 3, 8, 8), step=0)
    assert snapshot.layers["0"].activation == "relu"
    assert model.training and model[1].training


def test_ddp_spawn_hands_the_results_back_to_the_main_process(tmp_path):
    """The fit runs in spawned processes; the monitor the user holds gets rank 0's results."""
    import os

    from conftest import image_dataset

    model = Classifier()
    with torch.no_grad():
        model.net[3].bias[2] = -1e4  # planted: filter 2 of net.3 never fires
    monitor = FilterMonitor(every_n_steps=1, probe_size=4, dead_patience=2)
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, devices=2, strategy="ddp_spawn")
    pl.Trainer(callbacks=[monitor], **kwargs).fit(model, datamodule=RandomImages())

    assert monitor.dead_filters == {"net.0": [], "net.3": [2]}
    assert torch.equal(monitor.probe[0], image_dataset(16, seed=2).tensors[0][:4])  # type: ignore[attr-defined]
    examples = monitor.dataset_examples["net.0"]
    assert examples and all(index in range(16) for filter_examples in examples for index, _ in filter_examples)
    assert len(monitor.dataset_example_positions["net.0"]) == len(examples)
    assert not os.path.exists(monitor._worker_results.path)  # read once, then removed


class _SilencedChannel(nn.Module):
    """Multiplies one channel by zero, on every rank or only on rank 0: no gradient reaches
    its filter from the ranks where it is silenced."""

    def __init__(self, channel: int, only_rank_zero: bool) -> None:
        super().__init__()
        self.channel, self.only_rank_zero = channel, only_rank_zero

    def forward(self, x: Tensor) -> Tensor:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if self.only_rank_zero and rank != 0:
            return x
        mask = torch.ones(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device)
        mask[:, self.channel] = 0
        return x * mask


def test_ddp_gradient_dormancy_reads_the_gradients_averaged_across_ranks(tmp_path):
    """Filter 5 gets no gradient on either rank: gradient-dormant. Filter 2 gets none from rank 0
    but some from rank 1, so the averaged gradient the optimizer applies is not zero: a reading
    of rank 0's own gradient before the all-reduce would flag it. The feature visualizations
    made in the spawned process come back to the monitor the user holds."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        _SilencedChannel(5, only_rank_zero=False),
        _SilencedChannel(2, only_rank_zero=True),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    monitor = FilterMonitor(every_n_steps=1, probe_size=4, examples_layers=[], featvis_layers=["net.0"])
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, devices=2, strategy="ddp_spawn", limit_val_batches=1)
    pl.Trainer(callbacks=[monitor], **kwargs).fit(Classifier(net, lr=0.1), datamodule=RandomImages())

    assert monitor.grad_dormant_filters == {"net.0": [5], "net.4": []}
    images = monitor.feature_visualizations["net.0"]
    assert images.dtype == np.uint8 and images.shape == (8, 12, 12, 3)
