"""What the monitor prints stands on its own lines, never inside a progress bar."""

from __future__ import annotations

import logging
import sys

import torch
from lightning_utilities.core import rank_zero
from torch import nn
from tqdm import tqdm

from lightning_filterviz import FilterVisualizer, NullSink


def test_the_layer_table_is_printed_on_its_own_lines_while_a_progress_bar_runs(capsys):
    handler = logging.StreamHandler(sys.stderr)  # the stream the bar draws on, as in a terminal
    rank_zero.log.addHandler(handler)
    try:
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3))
        visualizer = FilterVisualizer(NullSink(), background=False)
        with tqdm(total=2, file=sys.stderr, mininterval=0, ascii=True, desc="training") as bar:
            bar.update(1)
            visualizer.snapshot(model, torch.randn(2, 3, 8, 8), step=0)
            visualizer.poll()
            bar.update(1)
    finally:
        rank_zero.log.removeHandler(handler)
    printed = capsys.readouterr().err
    lines = [line.split("\r")[-1] for line in printed.split("\n")]  # what each terminal line ends up showing
    start = next(i for i, line in enumerate(lines) if "watched conv layers" in line)
    assert lines[start] == "filterviz: watched conv layers and their activations"
    assert lines[start + 1].split() == ["conv", "filters", "activation", "dead", "judged", "training", "batches", "watched", "by", "weights"]
    assert set(lines[start + 2]) <= {"-", " "}
    # The table in aligned plain columns, not Markdown, and the bar drawn again below it.
    assert lines[start + 3].split()[:3] == ["0", "4", "relu"]
    assert "training" in printed.split("watched conv layers")[1]
