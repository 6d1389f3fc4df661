"""The engine's settings: one frozen object, validated once, read by every stage.

Each check fails with one line naming the argument, what it got and what it accepts. A
number may be any integral or real number (NumPy's too, as configs and sweeps give them);
it is held as a plain ``int`` or ``float``, so checkpoints and hyperparameters stay plain.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from lightning_filterviz.core.filters import WEIGHT_NORMALIZATIONS, WeightNormalization

__all__ = [
    "BatchKey",
    "VisualizerSettings", "check_bool", "check_cadence", "check_layer_names", "check_positive_int", "plain_int_key"]

# Where the model input is in a batch: an index, a key, a function of the batch, or None (the batch itself).
BatchKey = Union[int, str, Callable[[Any], Any], None]


@dataclass(frozen=True)
class VisualizerSettings:
    """What :class:`~lightning_filterviz.FilterVisualizer` was asked to do.

    Built from keyword arguments, each passed by name by the engine's constructor (and,
    through it, by FilterMonitor's), and validated here only. The attributes are the
    engine's keyword arguments of the same names (see its docstring); a list of layer
    names or patterns is held as a tuple.

    Raises:
        ValueError: for a value outside an argument's range.
        TypeError: for a value of the wrong type.
    """

    layers: Optional[Sequence[str]] = None
    max_filters: int = 64
    max_images: int = 2
    dead_threshold: float = 0.0
    dead_patience: int = 2
    dormant_tau: float = 0.025
    grad_dormant_tau: float = 0.0
    weight_normalization: WeightNormalization = "filter"
    log_weights: bool = True
    log_activations: bool = True
    batch_key: BatchKey = None
    forward_fn: Optional[Callable[..., Any]] = None
    colormap: str = "viridis"
    filmstrip_layers: Optional[Sequence[str]] = None
    views_every: int = 10
    response_layers: Optional[Sequence[str]] = None
    examples_layers: Optional[Sequence[str]] = None
    examples_k: int = 9
    featvis_layers: Optional[Sequence[str]] = ()
    max_pending: int = 2

    def __post_init__(self) -> None:
        for name in ("max_filters", "max_images", "dead_patience", "views_every", "examples_k", "max_pending"):
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
        for name in ("log_weights", "log_activations"):
            check_bool(name, getattr(self, name))
        for name in ("layers", "filmstrip_layers", "response_layers", "examples_layers", "featvis_layers"):
            object.__setattr__(self, name, check_layer_names(name, getattr(self, name)))
        if self.layers == ():
            raise ValueError(
                "`layers` is an empty list, so no layer would be watched. Pass None to watch every nn.Conv2d, "
                "or the names or fnmatch patterns of the layers to watch, e.g. ['features.*']."
            )
        object.__setattr__(self, "dead_threshold", _finite_number("dead_threshold", self.dead_threshold))
        for name in ("dormant_tau", "grad_dormant_tau"):
            tau = _finite_number(name, getattr(self, name))
            if tau < 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {getattr(self, name)!r}.")
            object.__setattr__(self, name, tau)
        if self.weight_normalization not in WEIGHT_NORMALIZATIONS:
            raise ValueError(
                f"`weight_normalization` must be one of {WEIGHT_NORMALIZATIONS}, got {self.weight_normalization!r}."
            )
        object.__setattr__(self, "batch_key", plain_int_key(self.batch_key))
        if self.forward_fn is not None and not callable(self.forward_fn):
            raise TypeError(f"`forward_fn` must be callable as forward_fn(module, input), got {self.forward_fn!r}.")
        import matplotlib

        if not isinstance(self.colormap, str) or self.colormap not in matplotlib.colormaps:
            raise ValueError(f"`colormap` must be a matplotlib colormap name such as 'viridis', got {self.colormap!r}.")


def check_cadence(every_n_epochs: Any, every_n_steps: Any) -> tuple[Optional[int], Optional[int]]:
    """The two cadences as plain ints (or ``None``).

    Raises:
        ValueError: unless at most one of the two is set, to an integer >= 1.
    """
    if every_n_epochs is not None and every_n_steps is not None:
        raise ValueError(
            f"Set at most one of `every_n_epochs` ({every_n_epochs}) and `every_n_steps` ({every_n_steps})."
        )
    cadences = []
    for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
        if value is not None and (not _is_integer(value) or value < 1):
            raise ValueError(f"`{name}` must be None or an integer >= 1, got {value!r}.")
        cadences.append(None if value is None else int(value))
    return cadences[0], cadences[1]


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as a plain ``int``.

    Raises:
        ValueError: unless ``value`` is an integral number (``int``, NumPy's, not a ``bool``) of at least 1.
    """
    if not _is_integer(value) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    return int(value)


def plain_int_key(key: Any) -> BatchKey:
    """A ``batch_key`` as held: an integral index (NumPy's too) as a plain ``int``.

    Raises:
        TypeError: unless ``key`` is None, an integral index, a str key or a function of the batch.
    """
    if key is None or callable(key) or isinstance(key, str):
        return key
    if _is_integer(key):
        return int(key)
    raise TypeError(f"`batch_key` must be None, an int index, a str key or a function of the batch, got {key!r}.")


def check_bool(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")


def check_layer_names(name: str, value: Optional[Sequence[str]]) -> Optional[tuple[str, ...]]:
    """``None`` or a sequence of names/patterns as a tuple; a lone string is refused, not iterated."""
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(
            f"`{name}` must be a list of module names or patterns, got the string {value!r}: use [{value!r}]."
        )
    try:
        names = tuple(value)
    except TypeError:
        raise TypeError(f"`{name}` must be None or a list of module names or patterns, got {value!r}.") from None
    bad = [item for item in names if not isinstance(item, str)]
    if bad:
        raise TypeError(f"`{name}` must hold module names or patterns (strings), got {bad[0]!r}.")
    return names


def _is_integer(value: Any) -> bool:
    # numbers.Integral covers int and NumPy's integers; a bool is one too, but never meant as a count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite_number(name: str, value: Any) -> float:
    # numbers.Real covers int, float and NumPy's numbers (np.float32 from a config, say).
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    return float(value)
