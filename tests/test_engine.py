"""The engine without Lightning: a plain PyTorch training loop logging to a SummaryWriter."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

from conftest import FunctionalNet, count_hooks, read_events
from lightning_filterviz import FilterVisualizer


def test_plain_training_loop_with_summary_writer(tmp_path):
    model = FunctionalNet()
    with torch.no_grad():
        model.conv2.bias[5] = -1e4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = (torch.randn(4, 3, 10, 10), torch.zeros(4, dtype=torch.long))
    writer = SummaryWriter(str(tmp_path))
    visualizer = FilterVisualizer(writer, dead_patience=1)
    hooks = count_hooks(model)
    model.train()
    for step in range(6):
        if step % 2 == 0:
            visualizer.snapshot(model, probe, step)
        images, labels = torch.randn(8, 3, 10, 10), torch.randint(0, 3, (8,))
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert model.training
    writer.close()

    assert count_hooks(model) == hooks
    assert visualizer.dead_filters == {"conv1": [], "conv2": [5]}
    events = read_events(tmp_path)
    for layer in ("conv1", "conv2"):
        assert set(events.images[f"filterviz/weights/{layer}"]) == {0, 2, 4}
        assert set(events.images[f"filterviz/activations/{layer}"]) == {0, 2, 4}
    assert events.scalars["filterviz/dead_fraction/conv2"][4] == 1 / 8
    assert "| conv2 | 1 / 8 | 5 |" in events.texts["filterviz/dead_filters"][4]
