"""The engine without Lightning: a plain PyTorch training loop logging to a SummaryWriter."""

from __future__ import annotations

import gc

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

from conftest import FunctionalNet, conv_bn_relu_stack, count_hooks, read_events
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


def test_a_new_model_at_a_freed_models_address_is_watched_afresh(tmp_path):
    # CPython gives a freed object's address to the next object of its size, so a new model
    # often has the id() of the one before it; the engine must still see the new model.
    visualizer = FilterVisualizer(str(tmp_path))
    first = conv_bn_relu_stack()
    visualizer.snapshot(first, torch.randn(2, 3, 8, 8), step=0)
    freed_address = id(first)
    del first
    gc.collect()
    candidates = []
    for _ in range(200):  # keep the non-matching candidates alive so their addresses are not retried
        model = conv_bn_relu_stack()
        if id(model) == freed_address:
            break
        candidates.append(model)
    with torch.no_grad():
        model[0].weight.fill_(0.5)
    snapshot = visualizer.snapshot(model, torch.randn(2, 3, 8, 8), step=1)
    assert torch.equal(snapshot.layers["0"].weight, model[0].weight.detach())
    assert snapshot.layers["0"].maps is not None and snapshot.layers["3"].maps is not None
