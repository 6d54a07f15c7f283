"""Worker threads run below the UI thread, and the start-up warm-up leaves nothing to import later."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from seg_studio.ui.warmup import warm_imports
from seg_studio.ui.workers import WORKER_NICE, lower_thread_priority


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is a Linux feature")
def test_worker_thread_runs_below_the_ui_thread() -> None:
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    seen: list[tuple[int | None, int | None, int]] = []

    def work() -> None:
        first = lower_thread_priority()
        again = lower_thread_priority()  # a reused pool thread must not sink further
        seen.append((first, again, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    expected = min(19, base + WORKER_NICE)
    assert seen == [(expected, expected, expected)]
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == base  # the UI thread keeps its priority


def test_warm_up_imports_what_the_first_run_would() -> None:
    gen = warm_imports()
    steps = 0
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)  # one step per module: quitting the app stops it between two imports
            steps += 1
    assert stop.value.value == [] and steps > 1
    # torch builds its first optimizer under torch._dynamo: imported here, not in the fine-tune
    assert "torch._dynamo" in sys.modules
    assert "skimage.color.colorconv" in sys.modules
