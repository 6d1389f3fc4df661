"""What stays behind when an object is pickled for another process, and is made anew there.

Launchers that spawn processes (``ddp_spawn``, notebooks' multiprocessing) pickle the
callback with everything it holds; locks cannot travel, and a watched model's weak
references and device tensors must not.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

__all__ = ["RebuiltWhenUnpickled"]


class RebuiltWhenUnpickled:
    """Pickles without the attributes named in :attr:`rebuilt_when_unpickled`, and sets each
    of them to what its factory returns when unpickled."""

    rebuilt_when_unpickled: ClassVar[dict[str, Callable[[], Any]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self.rebuilt_when_unpickled:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name, build in self.rebuilt_when_unpickled.items():
            setattr(self, name, build())
