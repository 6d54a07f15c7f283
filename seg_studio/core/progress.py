"""Progress records and a cancel token shared by the CLI and the UI.

Core loops are generators that ``yield Progress(...)`` between tiles or steps and call
``cancel.raise_if_cancelled()``; the CLI draws a bar from them and the UI worker forwards them to
the main thread. Neither side needs to know about the other.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """One step of a long job: ``done`` of ``total`` units of ``stage``."""

    done: int
    total: int
    stage: str = ""
    message: str = ""
    eta_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)


class CancelToken:
    """Thread-safe flag a UI sets and a worker checks between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        from .errors import Cancelled

        if self._event.is_set():
            raise Cancelled("cancelled by the user; nothing was written")


class EtaClock:
    """Estimates the time left from the mean time per unit so far."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.start = time.perf_counter()

    def eta(self, done: int) -> float | None:
        if done <= 0:
            return None
        elapsed = time.perf_counter() - self.start
        return elapsed / done * max(0, self.total - done)


def run_to_end(gen):  # type: ignore[no-untyped-def]
    """Drain a progress generator and return its ``StopIteration`` value (the plain-call form)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
