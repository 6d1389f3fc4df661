"""The monitor's code that runs inside a user's own forward passes never raises into them.

Training-batch tracking and dataset examples hook the model's training and validation
forwards. A failure there (a model shaped in a way nobody foresaw, a bug of ours) would
end the step, and with it the run. Instead, a :class:`HookGuard` keeps the first failure
and turns every later guarded call into a no-op; whoever owns the guard reads
:attr:`HookGuard.error` outside the forward and switches its feature off with a warning.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

__all__ = ["HookGuard"]


class HookGuard:
    """Keeps the first exception raised by guarded code; after it, guarded code does not run.

    Attributes:
        error: the first exception caught, or ``None``.

    Example::

        guard = HookGuard()
        module.register_forward_hook(guard.wrap(hook))
        model(batch)  # runs to its end whatever the hook does
        if guard.error is not None:
            ...  # stop watching, warn once
    """

    def __init__(self) -> None:
        self.error: Optional[Exception] = None

    @property
    def failed(self) -> bool:
        """Whether guarded code has raised."""
        return self.error is not None

    def keep(self, error: Exception) -> None:
        """Keep ``error`` if it is the first."""
        if self.error is None:
            self.error = error

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        """Run the block, keeping an exception instead of raising it."""
        try:
            yield
        except Exception as error:  # monitoring must never end a training run
            self.keep(error)

    def wrap(self, hook: Callable[..., None]) -> Callable[..., None]:
        """``hook`` as a forward hook that never raises, and does nothing once anything failed."""

        def guarded(*args: Any) -> None:
            if not self.failed:
                with self.catching():
                    hook(*args)

        return guarded
