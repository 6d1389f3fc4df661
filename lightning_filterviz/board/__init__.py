"""The Filters tab: a TensorBoard plugin that shows every filter of a run over every snapshot.

TensorBoard finds it through the ``tensorboard_plugins`` entry point, which names
:class:`FilterVizLoader`. The loader imports the plugin when TensorBoard starts; should that
fail, the tab stays out and TensorBoard says so in one log line, and runs on.
"""

from __future__ import annotations

import logging
from typing import Optional

from tensorboard.plugins import base_plugin

__all__ = ["FilterVizLoader"]

logger = logging.getLogger(__name__)


class FilterVizLoader(base_plugin.TBLoader):
    """Loads :class:`~lightning_filterviz.board.plugin.FilterVizPlugin`; never lets it break TensorBoard."""

    def load(self, context: base_plugin.TBContext) -> Optional[base_plugin.TBPlugin]:
        try:
            from lightning_filterviz.board.plugin import FilterVizPlugin

            return FilterVizPlugin(context)
        except Exception as error:  # any failure: TensorBoard goes on without the tab
            logger.warning("lightning_filterviz: the Filters tab is off: %s: %s", type(error).__name__, error)
            return None
