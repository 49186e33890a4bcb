"""Stop on SIGTERM or Ctrl-C between two steps, never inside one.

A signal that lands mid-step would leave the weights stepped but the EMA target not yet updated. The
handler only records the request; the loop finishes the step, saves a checkpoint and stops, so the
resumed run continues exactly. A second Ctrl-C stops at once (the last checkpoint is kept).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """Context manager: while active, ``requested`` names the first stop signal received (else None).

    Handlers can only be installed from the main thread; elsewhere (and when ``enabled`` is false, as
    under torchrun, whose processes must stop at the same step) the signals keep their usual effect.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: the user wants out now
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> GracefulStop:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
