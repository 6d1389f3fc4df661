"""What each constructor argument of FilterMonitor and FilterVisualizer means, written once.

Both classes' docstrings take their ``Args:`` section from :data:`ARGUMENTS`
(:func:`with_args_section`), and the tests hold both signatures and README's argument
table against it. An argument the two classes share has one text, true for both; the
others are marked with the one class that takes them. FilterMonitor's docstring is
written here too, :data:`MONITOR_DOCSTRING_WITHOUT_ARGS`, for its two flavours (one per
Lightning package) to share. No torch, no Lightning here.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from dataclasses import dataclass
from typing import Callable, Iterable

__all__ = [
    "ARGUMENTS",
    "MONITOR",
    "MONITOR_DOCSTRING_WITHOUT_ARGS",
    "OWNERS",
    "VISUALIZER",
    "WIDTH",
    "Argument",
    "args_section",
    "parameter_names",
    "render_argument",
    "with_args_section",
]

MONITOR = "FilterMonitor"
VISUALIZER = "FilterVisualizer"
OWNERS = frozenset({MONITOR, VISUALIZER})
# Rendered docstring lines stay within this many characters, indentation included.
WIDTH = 92
# Inline literals (``...``) are never broken across lines; this stands for their spaces while wrapping.
_KEPT_SPACE = "\x00"


@dataclass(frozen=True)
class Argument:
    """One constructor argument: its description (one paragraph of docstring prose) and
    the classes that take it."""

    text: str
    owners: frozenset[str] = OWNERS


def _only(owner: str, text: str) -> Argument:
    return Argument(text, frozenset({owner}))


ARGUMENTS: dict[str, Argument] = {
    "sink": _only(
        VISUALIZER,
        "a ``SummaryWriter``, a directory path (PNG files), or any :class:`~lightning_filterviz.publishing.sinks.base.Sink`.",
    ),
    "layers": Argument(
        'module names or fnmatch patterns (``"features.*"``) over the model\'s ``named_modules()`` '
        "(for FilterMonitor, the LightningModule's); ``None`` watches every ``nn.Conv2d`` (an empty "
        "list is refused: it would watch nothing). A name or "
        "pattern that matches no conv layer raises ``ValueError`` when the model is first watched "
        "(FilterMonitor: at setup, before any step), naming the closest conv layers."
    ),
    "every_n_epochs": _only(MONITOR, "take a snapshot every this many epochs."),
    "every_n_steps": _only(
        MONITOR,
        "take a snapshot every this many optimizer steps (``global_step``). At most one cadence "
        "may be set; with neither, a snapshot is taken every epoch. A snapshot is always taken "
        "at global step 0, before the first optimizer step.",
    ),
    "probe_size": _only(MONITOR, "number of samples in the fixed probe batch."),
    "probe_split": _only(
        MONITOR,
        'where the probe comes from when ``probe`` is not given: ``"val"`` (falls back to '
        '``"train"`` when there is no validation data) or ``"train"``. The first ``probe_size`` '
        "samples are taken from the dataset by index and collated with the loader's "
        "``collate_fn``; no loader is iterated.",
    ),
    "max_filters": Argument(
        "filters (and activation channels) drawn per layer; statistics still cover all of them."
    ),
    "dead_threshold": Argument('a post-activation value ``<=`` this counts as "off".'),
    "dead_patience": Argument("consecutive snapshots a filter must be off to be reported dead."),
    "log_weights": Argument("log the filter images."),
    "log_activations": Argument(
        "run the probe forward and log feature maps and dead- and dormant-filter statistics."
    ),
    "probe": _only(
        MONITOR,
        "a probe batch to use instead of one taken from the data: a tensor, or a batch shaped "
        "like the training batches (tuple, list or dict); a list of same-size images ``(C, H, W)`` "
        "is stacked into one batch. A model input (see ``batch_key``) that is one image (a 3-d "
        "tensor with the channels of the model's first ``nn.Conv2d``) or one value per sample "
        "(the labels, say) fails at setup, before any step, unless ``forward_fn`` is given.",
    ),
    "batch_key": Argument(
        "where the model input is in a batch: an index into a tuple/list (negative ones count "
        "from the end, as in Python), a key into a dict, or "
        "a function of the batch that returns the input (for a model of several inputs: "
        "``lambda batch: (batch[0], batch[1])`` with "
        "``forward_fn=lambda module, inputs: module(*inputs)``). ``None``: the batch itself, or "
        "the first element of a tuple/list; a dict batch needs a key."
    ),
    "forward_fn": Argument(
        "how to run the model on the probe input, ``forward_fn(module, input)``, when "
        "``module(input)`` (the default) is not the way."
    ),
    "max_images": Argument("probe images whose feature maps are drawn."),
    "weight_normalization": Argument(
        '``"filter"`` (each filter\'s own min..max, the default), ``"layer"`` (the layer\'s '
        'min..max) or ``"symmetric"`` (a fixed ``+-max|w|`` range taken at the first snapshot, '
        "which shows growth in magnitude)."
    ),
    "colormap": Argument("matplotlib colormap for the feature maps."),
    "dormant_tau": Argument(
        "a filter is dormant when its mean ``|activation|`` on the probe, divided by its layer's "
        "average, is ``<=`` this (ReDo's score; any activation function); logged as "
        "``filterviz/dormant_fraction/<layer>`` and kept in :attr:`dormant_filters`."
    ),
    "grad_dormant_tau": Argument(
        "a filter is gradient-dormant when the mean ``|dL/dW_c|`` of its weights at the optimizer "
        "step before a snapshot, divided by its layer's average, is ``<=`` this (GraMa's score, "
        "Liu et al. 2025, arXiv 2505.24061); logged as ``filterviz/grad_dormant_fraction/<layer>`` "
        "and kept in :attr:`grad_dormant_filters`. The default 0 flags only filters whose weights "
        "got no gradient at all: they cannot learn, whatever their activations (it is the default of the "
        "code the authors released with the paper, ``--grad-redo-tau``); 0.1, say, also flags "
        "those getting a tenth of the layer's average or less. A conv whose weight does not require "
        "grad is frozen, never gradient-dormant. FilterMonitor reads the gradients at "
        "``on_before_optimizer_step`` of each step followed by a snapshot (after AMP's unscaling, "
        "gradient accumulation and DDP's averaging); FilterVisualizer, where "
        ":meth:`FilterVisualizer.read_gradients` is called."
    ),
    "track_training_batches": _only(
        MONITOR,
        "also watch every training forward pass (per-channel maxima only, no activation kept), "
        "so that a filter that fires on some training batch but never on the probe is not called "
        "dead. Costs a little on every step; not for compiled models.",
    ),
    "filmstrip_layers": Argument(
        "layers (names or fnmatch patterns) that get a filmstrip, one row of filters per "
        "snapshot in one image; ``None``: the first watched conv; ``[]``: none."
    ),
    "views_every": Argument(
        "write the drift-strip, filmstrip, peak-patch and through-the-layers images at the 1st, "
        "2nd, 4th, 8th ... snapshot and every this many snapshots, and at the trained state at "
        "the end (FilterMonitor's at the end of ``fit``, however it ends; FilterVisualizer's at "
        ":meth:`~FilterVisualizer.finish`): they cost more than the rest, and the filmstrip grows."
    ),
    "response_layers": Argument(
        "layers (names or fnmatch patterns) whose filters are drawn beside the probe patch where "
        "each peaks (``filterviz/responses/<layer>``); ``None``: the first watched conv; ``[]``: "
        "none. Their receptive fields are measured once, by gradient, at the first snapshot."
    ),
    "examples_layers": Argument(
        "layers (names or fnmatch patterns) whose dataset examples are collected: per drawn "
        "filter, the ``examples_k`` images where it fires most, with the receptive-field patch "
        "there (``filterviz/examples/<layer>`` and :attr:`dataset_examples`); ``None``: the first "
        "watched conv; ``[]``: none. Only convs whose ReLU-family activation a module's output "
        'shows (the layer table says "hook on ..."). FilterMonitor collects them from the '
        "validation images at each validation run of ``fit``; with FilterVisualizer, a pass of "
        ":meth:`FilterVisualizer.dataset_examples_pass` does."
    ),
    "examples_k": Argument("dataset examples kept per filter."),
    "featvis_layers": Argument(
        "convs whose drawn filters get a feature visualization: per filter, an input optimized to "
        "raise its mean rectified response (the ReLU of the conv's output through normalization; "
        "256 steps of a Fourier-space, "
        "colour-decorrelated image with small random jitter, scale and rotation, at the probe's "
        "size and input range), drawn beside the filter as ``filterviz/feature_vis/<layer>`` and "
        "kept in :attr:`feature_visualizations` and the history. Default ``()`` (or ``[]``): none (it costs "
        "seconds to minutes per layer, see ``benchmarks/feature_vis.py``); ``None``: the first "
        "watched conv; or names or fnmatch patterns. FilterMonitor makes them at the end of each "
        "validation run of ``fit``; with FilterVisualizer, :meth:`FilterVisualizer.visualize_features` "
        "does. Training is not changed: the model's modes, gradients, buffers and random "
        "generators are left as they were."
    ),
    "save_history": _only(
        MONITOR,
        "save each snapshot's small arrays as ``<log_dir>/filterviz/history/step_<step>.npz`` "
        "(for ``filterviz-report``), and each validation run's dataset examples as "
        "``validation_examples_<step>.npz`` beside them.",
    ),
    "history_dir": _only(
        VISUALIZER,
        "save each snapshot's small arrays (capped filters, statistics, one probe image's feature "
        "maps) there as NPZ, readable with ``allow_pickle=False`` (and each pass's dataset "
        "examples as ``validation_examples_<step>.npz``); ``None``: none are saved.",
    ),
    "background": _only(
        VISUALIZER,
        "judge, render and write in a background thread, so that :meth:`snapshot` returns as "
        "soon as the probe pass is done. Call :meth:`flush` (or :meth:`close`) before reading the "
        "logs. An error there is reported as one warning at the next call, and writing stops; "
        "statistics go on.",
    ),
    "max_pending": _only(
        VISUALIZER,
        "snapshots that may wait for the background writer; when that many wait, "
        ":meth:`snapshot` blocks until one is written, so nothing is dropped and memory stays "
        "bounded however slow the disk.",
    ),
}


# FilterMonitor's docstring; with_args_section puts the Args section before its Raises.
MONITOR_DOCSTRING_WITHOUT_ARGS = """Watch a CNN learn: conv filters, feature maps and dead filters in TensorBoard.

    At global step 0, before the first optimizer step, and then every ``every_n_epochs``
    epochs or every ``every_n_steps`` optimizer steps, the monitor runs a fixed probe batch
    through the model (eval mode, no autograd, every flag and hook restored) and logs these
    (``<layer>`` is each watched conv's name in ``named_modules()``; the activation of a conv
    is the first activation function after it, through normalization layers):

    <logged tags>

    Each snapshot's small arrays are also saved under ``<log_dir>/filterviz/history`` for
    ``filterviz-report``.

    A filter is dead when its activation is ``<= dead_threshold`` everywhere on the probe
    batch for ``dead_patience`` consecutive snapshots; dead filters are framed in red.
    Every attached logger gets them: TensorBoard, W&B and MLflow in their own records,
    the others (CSV, any other) the scalars through ``log_metrics`` and the images as PNG
    files under the log dir; a logger that fails gets one warning and the others go on.
    Nothing is logged during the sanity check or a
    ``fast_dev_run``. An error while taking a snapshot during training gives one warning
    and switches the monitor off; it never stops the run.

    Raises:
        ValueError: at construction, for an argument outside its allowed values; at setup,
            for a layer name or pattern that matches no conv layer, or a probe whose model
            input is not a batch (one image, or one value per sample); both before any step.

    Example::

        from lightning.pytorch import Trainer
        from lightning_filterviz import FilterMonitor

        monitor = FilterMonitor(every_n_steps=100, probe_size=8)
        trainer = Trainer(max_epochs=10, callbacks=[monitor])
        trainer.fit(model, datamodule=datamodule)
        monitor.dead_filters  # {"features.3": [5, 17], ...}
"""


def render_argument(name: str, indent: str = " " * 8) -> str:
    """``name``'s entry of an ``Args:`` section, Google style: ``indent`` before the first
    line, four more spaces before the others, wrapped at :data:`WIDTH` and ending in a newline."""
    if name not in ARGUMENTS:
        raise ValueError(f"The argument `{name}` has no description in lightning_filterviz/arguments.py.")
    text = re.sub(r"``.*?``", lambda literal: literal.group().replace(" ", _KEPT_SPACE), ARGUMENTS[name].text)
    lines = textwrap.wrap(
        f"{name}: {text}",
        width=WIDTH,
        initial_indent=indent,
        subsequent_indent=indent + " " * 4,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return "".join(line.replace(_KEPT_SPACE, " ") + "\n" for line in lines)


def args_section(names: Iterable[str], owner: str, indent: str = " " * 4) -> str:
    """An ``Args:`` section (header at ``indent``) for ``owner``'s arguments ``names``, in that order.

    Raises:
        ValueError: for a name without a description, or one that ``owner`` does not take.
    """
    entries = []
    for name in names:
        argument = ARGUMENTS.get(name)
        if argument is not None and owner not in argument.owners:
            raise ValueError(f"The argument `{name}` is described for {sorted(argument.owners)}, not {owner}.")
        entries.append(render_argument(name, indent + " " * 4))
    return f"{indent}Args:\n" + "".join(entries)


def parameter_names(function: Callable[..., object]) -> list[str]:
    """The named parameters of ``function`` (a method: without ``self``), in order."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = inspect.signature(function).parameters.values()
    return [parameter.name for parameter in parameters if parameter.name != "self" and parameter.kind not in variadic]


def with_args_section(docstring: str, function: Callable[..., object], owner: str) -> str:
    """``docstring`` with an ``Args:`` section for ``function``'s parameters, put before its
    ``Raises:`` section and indented like it.

    Raises:
        ValueError: if ``docstring`` has no ``Raises:`` line, or as :func:`args_section` does.
    """
    found = re.search(r"^( *)Raises:$", docstring, flags=re.MULTILINE)
    if found is None:
        raise ValueError(f"The {owner} docstring has no `Raises:` section to put its `Args:` before.")
    section = args_section(parameter_names(function), owner, indent=found.group(1))
    return docstring[: found.start()] + section + "\n" + docstring[found.start() :]
