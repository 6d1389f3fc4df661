"""What a run remembers from one snapshot to the next, and what it makes of each new one.

Dead-filter streaks, dormant and gradient-dormant filters, the symmetric normalization
ranges, the initial filters drift is measured from, the first features the health signals
compare with, the filmstrip rows, which layers were warned about, the latest dataset
examples and feature visualizations, and the checkpoint state of all of it (examples and
visualizations aside). Each
captured snapshot comes in frozen and goes out as a new frozen
:class:`~lightning_filterviz.core.records.Snapshot` with the verdicts; nothing it was given
is changed. With ``background=True`` every method here runs on the writer thread, so the
training thread pays none of it; messages for the user are queued and emitted on the
training thread (see :meth:`RunState.take_messages`).
"""

from __future__ import annotations

import collections
from typing import Any, Optional

import numpy as np
from torch import Tensor

from lightning_filterviz.state.health import HealthTracker
from lightning_filterviz.state.progress import ProgressTracker
from lightning_filterviz.core.layer_table import layer_table
from lightning_filterviz.core.records import (
    CapturedSnapshot,
    DatasetExamples,
    FeatureVisualizations,
    LayerHealth,
    RunEnding,
    Snapshot,
)
from lightning_filterviz.core.settings import VisualizerSettings
from lightning_filterviz.state.stats import DeadFilterTracker, dormant_indices, grad_dormant_verdict

__all__ = ["DEAD_FRACTION_WARNING", "Message", "RunState"]

# Past this dead fraction a layer is in trouble; say so once.
DEAD_FRACTION_WARNING = 0.5

# ("warn" or "info", text)
Message = tuple[str, str]


class RunState:
    """The statistics and progress of one run, judged snapshot by snapshot.

    Args:
        settings: the engine's settings.
    """

    def __init__(self, settings: VisualizerSettings) -> None:
        self.settings = settings
        self.tracker = DeadFilterTracker(threshold=settings.dead_threshold, patience=settings.dead_patience)
        self.progress = ProgressTracker()
        self.health = HealthTracker()
        # The latest snapshot's step and health signals, which the last look at that step carries too.
        self.latest_health: tuple[Optional[int], dict[str, LayerHealth]] = (None, {})
        self.dormant: dict[str, list[int]] = {}
        # The latest gradient-dormant filters of each conv whose gradients were read.
        self.grad_dormant: dict[str, list[int]] = {}
        self.symmetric_ranges: dict[str, float] = {}
        self.warned_dead: set[str] = set()
        self.warned_non_finite_probe = False
        self.described = False
        # The latest snapshot, when its drift strips were not drawn with it (see ending()).
        self.undrawn_drift: Optional[Snapshot] = None
        # The step of the latest snapshot that drew the costlier views, and the run's probe images (see ending()).
        self.views_drawn_at: Optional[int] = None
        self.probe_images: Optional[Snapshot] = None  # the snapshot that carried them, its probe images only
        # The latest validation run's dataset examples, per conv and drawn filter, strongest first.
        self.dataset_examples: dict[str, list[list[tuple[Optional[int], float]]]] = {}
        self.dataset_example_positions: dict[str, list[list[tuple[int, int]]]] = {}
        # The latest feature visualizations, per conv, as displayed.
        self.feature_visualizations: dict[str, np.ndarray] = {}
        self._messages: collections.deque[Message] = collections.deque()

    def judge(self, captured: CapturedSnapshot) -> Snapshot:
        """Fold one captured snapshot into the run; return it with the run's verdicts."""
        self.tracker.update(captured)
        self.dormant = {
            name: dormant_indices(layer.channel_mean_abs, self.settings.dormant_tau)
            for name, layer in captured.layers.items()
            if layer.channel_mean_abs is not None
        }
        grad_scores = self._judge_gradients(captured)
        symmetric_ranges = self._symmetric_ranges_for(captured)
        drift, weight_norm_ratio = self.progress.update(captured, self.settings.weight_normalization, symmetric_ranges)
        describes_layers = not self.described and self.settings.log_activations
        snapshot = Snapshot(
            step=captured.step,
            layers=captured.layers,
            probe_images=captured.probe_images,
            probe_inputs=captured.probe_inputs,
            receptive_fields=captured.receptive_fields,
            draw_views=captured.draw_views,
            dead_filters={name: tuple(indices) for name, indices in self.tracker.dead_filters.items()},
            dormant_filters={name: tuple(indices) for name, indices in self.dormant.items()},
            symmetric_ranges=symmetric_ranges,
            drift=drift,
            weight_norm_ratio=weight_norm_ratio,
            filmstrips=self.progress.filmstrips() if captured.draw_views and self.settings.log_weights else {},
            describes_layers=describes_layers,
            health=self.health.update(captured),
            grad_scores=grad_scores,
            grad_dormant_filters={name: tuple(self.grad_dormant[name]) for name in grad_scores},
        )
        self.latest_health = (snapshot.step, dict(snapshot.health))
        # Kept (drift only: no maps stay alive) so that the end of the run can draw the last snapshot's drift strips.
        self.undrawn_drift = None if snapshot.draw_views else _drift_of(snapshot)
        if snapshot.draw_views:
            self.views_drawn_at = snapshot.step
        if snapshot.probe_images is not None:
            self.probe_images = Snapshot(step=snapshot.step, probe_images=snapshot.probe_images)
        if describes_layers:
            self._describe(snapshot)
        self._warn_on_dying_layers(snapshot.step)
        if captured.probe_non_finite is not None:
            self._warn_on_non_finite_probe(captured.probe_non_finite.tolist())
        return snapshot

    def look(self, captured: CapturedSnapshot) -> Snapshot:
        """The trained model's last look: ``captured`` with the verdicts as they stand and its
        drift from the initial filters, folded into nothing (no statistic, filmstrip row or
        warning counts it; it is not another snapshot)."""
        drift, weight_norm_ratio = self.progress.drift(captured)
        grad_scores = self._judge_gradients(captured)
        return Snapshot(
            step=captured.step,
            layers=captured.layers,
            probe_inputs=captured.probe_inputs,
            receptive_fields=captured.receptive_fields,
            draw_views=True,
            dead_filters={name: tuple(indices) for name, indices in self.tracker.dead_filters.items()},
            dormant_filters={name: tuple(indices) for name, indices in self.dormant.items()},
            symmetric_ranges={name: rng for name, rng in self.symmetric_ranges.items() if name in captured.layers},
            drift=drift,
            weight_norm_ratio=weight_norm_ratio,
            # The same model at the same step as the latest snapshot: the same features.
            health=self.latest_health[1] if self.latest_health[0] == captured.step else {},
            grad_scores=grad_scores,
            grad_dormant_filters={name: tuple(self.grad_dormant[name]) for name in grad_scores},
        )

    def _judge_gradients(self, captured: CapturedSnapshot) -> dict[str, Tensor]:
        """Each conv's gradient scores, for the convs whose gradients came with ``captured``;
        the gradient-dormant filters among them become the latest (see :attr:`grad_dormant`)."""
        scores = {}
        for name, layer in captured.layers.items():
            if layer.frozen:
                self.grad_dormant.pop(name, None)  # reported frozen, not gradient-dormant
            if layer.grad_magnitude is None or layer.frozen:
                continue
            verdict = grad_dormant_verdict(layer.grad_magnitude, self.settings.grad_dormant_tau)
            if verdict is not None:
                scores[name], self.grad_dormant[name] = verdict
        return scores

    def ending(self, step: int, final: Optional[Snapshot] = None) -> RunEnding:
        """What the end of the run at ``step`` draws: every filmstrip row (unless a snapshot
        at ``step`` drew it), the latest snapshot's drift strips when it did not draw them
        (they are drawn once), and the ``final`` look (see :meth:`look`), which draws the
        costlier views at ``step`` and the drift strips with them."""
        latest, self.undrawn_drift = self.undrawn_drift, None
        drawn_at_step = self.views_drawn_at == step  # that snapshot drew the filmstrip as it stands
        if final is not None:
            latest = final
            self.views_drawn_at = step
        filmstrips = {} if drawn_at_step else self.progress.filmstrips()
        shown = self.probe_images
        probe_images = shown.probe_images if shown is not None and shown.step != step else None
        return RunEnding(step=step, filmstrips=filmstrips, latest=latest, final=final, probe_images=probe_images)

    def _warn_on_non_finite_probe(self, counts: list[int]) -> None:
        """Say once per run which probe images hold NaN or Inf values (``counts`` per image)."""
        images = [index for index, count in enumerate(counts) if count]
        if not images or self.warned_non_finite_probe:
            return
        self.warned_non_finite_probe = True
        self.warn(
            f"filterviz: probe image(s) {images} hold NaN or Inf values ({sum(counts)} in all). Each conv's "
            "statistics (dead, dormant, maxima, means) leave the activation positions that are not finite out, "
            "no peak is found there, and they are drawn magenta; replace those values in the probe to use all of it."
        )

    def keep_examples(self, examples: DatasetExamples) -> None:
        """Keep a validation run's dataset examples (on the host) as lists."""
        self.dataset_examples = {name: found.as_lists() for name, found in examples.layers.items()}
        self.dataset_example_positions = {name: found.position_lists() for name, found in examples.layers.items()}

    def keep_feature_vis(self, visuals: FeatureVisualizations) -> None:
        """Keep the latest feature visualizations of each conv that has some."""
        self.feature_visualizations = {**self.feature_visualizations, **visuals.images}

    def warn(self, text: str) -> None:
        """Queue a warning for the user (shown on the training thread)."""
        self._messages.append(("warn", text))

    def take_messages(self) -> list[Message]:
        """The messages queued for the user since the last call (thread-safe)."""
        taken = []
        while self._messages:
            taken.append(self._messages.popleft())
        return taken

    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "symmetric_ranges": dict(self.symmetric_ranges),
            "warned_dead": sorted(self.warned_dead),
            "dormant": {name: list(indices) for name, indices in self.dormant.items()},
            "grad_dormant": {name: list(indices) for name, indices in self.grad_dormant.items()},
            "progress": self.progress.state_dict(),
            "health": self.health.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state.get("tracker", {}))
        self.symmetric_ranges = dict(state.get("symmetric_ranges", {}))
        self.warned_dead = set(state.get("warned_dead", []))
        self.dormant = {name: list(indices) for name, indices in state.get("dormant", {}).items()}
        self.grad_dormant = {name: list(indices) for name, indices in state.get("grad_dormant", {}).items()}
        self.progress.load_state_dict(state.get("progress", {}))
        self.health.load_state_dict(state.get("health"))

    def _symmetric_ranges_for(self, snapshot: CapturedSnapshot) -> dict[str, float]:
        if self.settings.weight_normalization != "symmetric":
            return {}
        for name, layer in snapshot.layers.items():
            # Fixed at the first snapshot, so later images show how the weights grew or shrank.
            if name not in self.symmetric_ranges:
                self.symmetric_ranges[name] = max(float(np.abs(layer.weight.numpy()).max(initial=0.0)), 1e-12)
        return {name: self.symmetric_ranges[name] for name in snapshot.layers}

    def _warn_on_dying_layers(self, step: int) -> None:
        for name in self.tracker.judged_layers:
            fraction = self.tracker.dead_fraction(name)
            if fraction > DEAD_FRACTION_WARNING and name not in self.warned_dead:
                self.warned_dead.add(name)
                self._messages.append((
                    "warn",
                    f"filterviz: {fraction:.0%} of the filters of `{name}` are dead at step {step} "
                    f"(ReLU output <= {self.tracker.threshold} on the whole probe for {self.tracker.patience} "
                    "snapshots in a row). A lower learning rate, a different init or a leaky activation may help.",
                ))

    def _describe(self, snapshot: Snapshot) -> None:
        self.described = True
        table = layer_table(snapshot).text()
        self._messages.append(("info", "filterviz: watched conv layers and their activations\n" + table))
        not_relu = [name for name, layer in snapshot.layers.items() if layer.activation and not layer.zeroing]
        if not_relu:
            self._messages.append((
                "info",
                f"filterviz: dead filters are not judged for {not_relu}: their activation is not of the ReLU "
                "family and never stays at exactly zero; their dormant fraction is logged.",
            ))


def _drift_of(snapshot: Snapshot) -> Optional[Snapshot]:
    if not snapshot.drift:
        return None
    return Snapshot(step=snapshot.step, drift=snapshot.drift, weight_norm_ratio=snapshot.weight_norm_ratio)
