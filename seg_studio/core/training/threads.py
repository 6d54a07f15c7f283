"""Torch's CPU thread count, tuned to the load this process actually gets while it fine-tunes.

Torch starts one intra-op thread per core. When other processes hold the cores, every OpenMP barrier
waits for a thread whose core is busy elsewhere: on this 2-core EPYC at load average 13, a forward pass
of the app's width-8 U-Net on a 224x224 X-ray took 0.2-3 s on two threads and 0.07 s on one, and one
training step on two threads took 8.6 s against 0.8 s on one. The load average cannot say how much of
the machine *this* process will get, so ``ThreadTuner`` measures it with a forward pass of one patch
(cheap next to a training step): before anything heavy runs it times the current count and halves of it
and keeps the fastest; during training it times the current count against a neighbouring one now and
then (less often while nothing better turns up), dropping a neighbour whose first call is already much
slower. ``restore`` gives the process its own count back.

The count it starts from is what this process may use now: the CPUs of its affinity mask (a container's
cpuset or ``taskset`` can leave fewer than ``os.cpu_count()``) and, of those, how many were idle over a
quarter of a second of ``/proc/stat`` (``free_cpus``). On a busy machine it then starts on one thread
and never spends a timed call on two threads that must wait for each other.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .plan import LoopHook, LoopState

log = logging.getLogger(__name__)


PROC_STAT = Path("/proc/stat")


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; all of ``os.cpu_count()`` where the OS has none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cpu_times(text: str) -> dict[int, tuple[int, int]]:
    """Per CPU, (idle, total) jiffies from the text of ``/proc/stat`` (idle counts iowait too)."""
    out: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()) or len(fields) < 4:
            continue
        values = [int(v) for v in fields[:8]]
        out[int(name[3:])] = (values[3] + (values[4] if len(values) > 4 else 0), sum(values))
    return out


def idle_between(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: Sequence[int]
) -> float:
    """How many of ``cpus`` were idle between two ``cpu_times`` snapshots (0 to ``len(cpus)``)."""
    free = 0.0
    for c in cpus:
        if c in before and c in after:
            idle, total = after[c][0] - before[c][0], after[c][1] - before[c][1]
            free += idle / total if total > 0 else 0.0
    return free


def free_cpus(interval_s: float = 0.25) -> float | None:
    """How many of this process's CPUs sat idle over the next ``interval_s`` (None without ``/proc/stat``)."""
    try:
        before = cpu_times(PROC_STAT.read_text())
        time.sleep(interval_s)
        after = cpu_times(PROC_STAT.read_text())
    except OSError:
        return None
    return idle_between(before, after, usable_cpus())


def start_count(max_threads: int, free: float | None) -> int:
    """Threads to start on: one per CPU that is (nearly) free, at least one; ``max_threads`` when unknown."""
    if free is None:
        return max_threads
    return max(1, min(max_threads, int(free + 0.3)))


def _timed(run: Callable[[], object]) -> float:
    t = time.perf_counter()
    run()
    return time.perf_counter() - t


class ThreadTuner(LoopHook):
    """Keeps the torch thread count under which ``run`` (a forward pass of one patch) is fastest.

    A count replaces the current one only when ``gain`` times faster; a neighbour whose first call
    takes ``abort`` times the current time is dropped without a second call. In the loop, a check comes
    every ``recheck`` steps, twice as late after each check that changed nothing.
    """

    def __init__(
        self,
        run: Callable[[], object],
        max_threads: int | None = None,
        recheck: int = 60,
        gain: float = 0.9,
        abort: float = 3.0,
        free: float | None = None,
    ) -> None:
        """``max_threads``: at most this many (default: torch's count, capped by the usable CPUs);
        ``free``: idle CPUs now (default: measured by ``probe``; give it to decide without measuring)."""
        self.run = run
        self.original = torch.get_num_threads()
        self.max_threads = max(1, max_threads or min(self.original, len(usable_cpus())))
        self.current = min(self.original, self.max_threads)
        self.free = free
        self.recheck, self.gain, self.abort = recheck, gain, abort
        self.next_check = recheck
        self.direction = -1  # the next check tries half (-1) or twice (+1) the count
        self.measured: list[dict[str, Any]] = []

    @property
    def enabled(self) -> bool:
        return self.max_threads > 1

    def probe(self) -> int:
        """Before training: time the current count and halves of it (one untimed call each first: a new
        count builds new kernels), down to one thread or a count slower than the best; keep the fastest."""
        if not self.enabled:
            torch.set_num_threads(self.current)
            return self.current
        if self.free is None:
            self.free = free_cpus()
        seconds: dict[int, float] = {}
        count = self.current = min(self.current, start_count(self.max_threads, self.free))
        while True:
            torch.set_num_threads(count)
            self.run()
            seconds[count] = _timed(self.run)
            if count == 1 or seconds[count] > min(seconds.values()) / self.gain:
                break
            count = max(1, count // 2)
        self.current = min(seconds, key=seconds.__getitem__)
        torch.set_num_threads(self.current)
        self.measured.append({"step": 0, "seconds": {str(k): round(v, 4) for k, v in seconds.items()}})
        return self.current

    def after_step(self, state: LoopState, seconds: float) -> None:
        if self.enabled and state.step >= self.next_check:
            self.check_neighbour(state.step)

    def check_neighbour(self, step: int) -> None:
        """Time the current count against half or twice it; keep the neighbour only if it is faster."""
        options = {-1: max(1, self.current // 2), 1: min(self.max_threads, self.current * 2)}
        if options[self.direction] == self.current:
            self.direction = -self.direction
        other = options[self.direction]
        here = _timed(self.run)
        torch.set_num_threads(other)
        first = _timed(self.run)
        there = _timed(self.run) if first < self.abort * here else first
        self.measured.append(
            {"step": step, "seconds": {str(self.current): round(here, 4), str(other): round(there, 4)}}
        )
        if there < here * self.gain:
            log.info("%d torch threads: %.3f s per patch against %.3f s on %d; keeping %d",
                     other, there, here, self.current, other)  # fmt: skip
            self.current = other
        else:
            torch.set_num_threads(self.current)
            self.recheck *= 2
            self.direction = -self.direction
        self.next_check = step + self.recheck

    def restore(self) -> None:
        """The process's own thread count again."""
        torch.set_num_threads(self.original)

    def record(self) -> dict[str, Any]:
        """For the provenance: the count it started with, the one it ended on, and what it measured."""
        free = None if self.free is None else round(self.free, 2)
        return {"start": self.original, "free_cpus": free, "kept": self.current, "measured": self.measured}
