"""The fine-tune's torch thread count starts from the CPUs this process may use and finds idle."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from seg_studio.core.training.threads import (
    ThreadTuner,
    cpu_times,
    free_cpus,
    idle_between,
    start_count,
    usable_cpus,
)

STAT_BEFORE = """cpu  300 0 100 600 0 0 0 0 0 0
cpu0 100 0 50 300 0 0 0 0 0 0
cpu1 200 0 50 300 0 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""
# over the interval cpu0 was busy 90 of 100 jiffies, cpu1 idle 80 of 100 (10 of them waiting on I/O)
STAT_AFTER = """cpu  400 0 110 680 10 0 0 0 0 0
cpu0 180 0 60 310 0 0 0 0 0 0
cpu1 220 0 50 370 10 0 0 0 0 0
intr 12399 0 0
"""


def test_idle_cpus_are_read_per_cpu_from_proc_stat_for_the_cpus_given() -> None:
    before, after = cpu_times(STAT_BEFORE), cpu_times(STAT_AFTER)
    assert set(before) == {0, 1}  # the "cpu" total line and the other counters are not CPUs
    assert idle_between(before, after, [0, 1]) == pytest.approx(0.1 + 0.8)
    assert idle_between(before, after, [1]) == pytest.approx(0.8)  # a CPU outside the mask does not count
    assert idle_between(before, after, [0, 7]) == pytest.approx(0.1)  # nor one the file does not list


def test_start_count_is_one_thread_per_free_cpu_and_never_zero() -> None:
    assert start_count(2, 0.05) == 1  # a busy machine: one thread, not two waiting at barriers
    assert start_count(2, 1.2) == 1
    assert start_count(2, 1.8) == 2
    assert start_count(2, 5.0) == 2
    assert start_count(4, None) == 4  # nothing measured: as many as allowed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="affinity and /proc/stat are Linux's")
def test_usable_cpus_follow_the_affinity_mask_and_free_cpus_are_measured() -> None:
    assert usable_cpus() == sorted(os.sched_getaffinity(0))
    free = free_cpus(0.05)
    assert free is not None and 0.0 <= free <= len(usable_cpus()) + 1e-6


def test_a_busy_machine_starts_the_tuner_on_one_thread_without_timing_two() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    counts: list[int] = []

    def run() -> None:
        counts.append(torch.get_num_threads())

    try:
        busy = ThreadTuner(run, max_threads=2, free=0.2)
        assert busy.probe() == 1 and torch.get_num_threads() == 1
        assert set(counts) == {1} and list(busy.record()["measured"][0]["seconds"]) == ["1"]
        assert busy.record()["free_cpus"] == 0.2
        torch.set_num_threads(2)
        counts.clear()
        quiet = ThreadTuner(run, max_threads=2, free=1.9)
        quiet.probe()
        assert counts[0] == 2  # an idle machine still tries both cores first
    finally:
        torch.set_num_threads(before)
