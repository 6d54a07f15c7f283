"""Torch's CPU thread count, tuned to the load this process actually gets while it trains.

Torch starts one intra-op thread per core. When other processes hold some of the cores, every OpenMP
barrier waits for a thread whose core is busy elsewhere, and a step on two threads can take far longer
than on one: the same 50 s fine-tune made anywhere from 9 to 121 steps depending on the load. The
load average cannot say how much of the machine *this* process will get, so ``ThreadTuner`` measures
it: it times a few steps at the current count, tries the neighbouring count (half as many threads, or
twice as many when it had come down), and keeps whichever ran more steps per second. It checks again
later, since the load changes, backing off while nothing better turns up, and gives the process its
own thread count back when the loop ends.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import torch

from .plan import LoopHook, LoopState

log = logging.getLogger(__name__)


class ThreadTuner(LoopHook):
    """A loop hook that keeps the torch thread count with the shortest median step time.

    ``window`` steps measure one count; a trial count must be ``gain`` times faster to be kept;
    the next trial comes ``recheck`` steps later, twice as late after each trial that changed nothing.
    """

    def __init__(
        self, max_threads: int | None = None, window: int = 4, recheck: int = 60, gain: float = 0.9
    ) -> None:
        self.original = torch.get_num_threads()
        self.max_threads = max(1, max_threads or self.original)
        self.current = min(self.original, self.max_threads)
        self.window, self.recheck, self.gain = window, recheck, gain
        self.trial: int | None = None
        self.baseline_s: float | None = None
        self.next_trial_step = window
        self.went_down_last = False
        self.times: list[float] = []
        self.measured: list[dict[str, Any]] = []

    @property
    def enabled(self) -> bool:
        return self.max_threads > 1

    def after_step(self, state: LoopState, seconds: float) -> None:
        if not self.enabled:
            return
        self.times.append(seconds)
        if len(self.times) < self.window:
            return
        per_step, self.times = statistics.median(self.times), []
        threads = self.trial if self.trial is not None else self.current
        self.measured.append({"step": state.step, "threads": threads, "s_per_step": round(per_step, 4)})
        if self.trial is None:
            self.baseline_s = per_step
            if state.step >= self.next_trial_step:
                self._start_trial()
        else:
            self._end_trial(per_step, state.step)

    def _start_trial(self) -> None:
        down = max(1, self.current // 2)
        up = min(self.max_threads, self.current * 2)
        want_up = up != self.current and (self.went_down_last or down == self.current)
        trial = up if want_up else down
        if trial == self.current:
            return
        self.went_down_last = trial < self.current
        self.trial = trial
        torch.set_num_threads(trial)

    def _end_trial(self, per_step: float, step: int) -> None:
        assert self.trial is not None and self.baseline_s is not None
        if per_step < self.baseline_s * self.gain:
            log.info("%d torch threads run %.2f s/step against %.2f s on %d: keeping %d",
                     self.trial, per_step, self.baseline_s, self.current, self.trial)  # fmt: skip
            self.current, self.baseline_s = self.trial, per_step
            self.next_trial_step = step + self.recheck
        else:
            torch.set_num_threads(self.current)
            self.next_trial_step = step + self.recheck
            self.recheck *= 2
        self.trial = None

    def on_end(self, state: LoopState) -> None:
        torch.set_num_threads(self.original)

    def record(self) -> dict[str, Any]:
        """For the provenance: the count it started with, the one it ended on, and what it measured."""
        return {"start": self.original, "kept": self.current, "measured": self.measured}
