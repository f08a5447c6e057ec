"""Turn SIGTERM / SIGUSR1 (SLURM preemption, ``scancel``, a cluster drain) into a clean stop.

The handler only sets a flag; the training loop checks it at a step boundary, where a
checkpoint is consistent, saves, and returns. Ranks receive the signal at slightly different
moments, so the loop agrees on the stop collectively (see ``Trainer._agree``).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionHandler:
    """Context manager that records a stop request instead of dying on the signals above."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)
        log.warning("received %s: checkpointing at the end of this step, then stopping", self.received.name)

    def __enter__(self) -> PreemptionHandler:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
