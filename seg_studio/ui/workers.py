"""The one place where core generators meet napari's ``thread_worker``.

A ``Job`` runs a core generator (``Generator[Progress, None, T]``) in a worker thread. The
generator is *built* inside the thread too, so heavy imports and model loading never block the
event loop. Progress, results and errors come back as Qt signals, delivered on the main thread,
which is the only thread that touches layers. Cancelling sets the core ``CancelToken`` (the core
loop stops at its next check and raises ``Cancelled``); a result that arrives after a cancel is
dropped, so a cancelled prediction never lands.

Closing the window must not let a job report into what is gone: a job whose widget (the owner of
its bound-method callbacks) was deleted is cancelled and stays silent, and quitting the
application (or the interpreter) cancels every job and waits for its thread, so no worker emits
into a torn-down Qt ("RuntimeError: Signal source has been deleted").
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator
from typing import Any

from ..core.errors import Cancelled, SegStudioError
from ..core.progress import CancelToken, Progress

log = logging.getLogger(__name__)

#: Minimum time between two forwarded progress records without metrics (keeps the queue short).
PROGRESS_INTERVAL_S = 0.05

#: How much lower than the UI thread a worker thread runs (Linux ``nice`` steps, per thread).
WORKER_NICE = 10
#: The same for a fine-tune, which must also hold its own against other programs: at +10 its weight
#: is a tenth of a normal process's, and with two CPU-bound processes beside it on the 2-core machine
#: it made 1 training step in a 30 s budget where the same fine-tune at the process's priority made
#: 9-19 (``benchmarks/busy_finetune.py``). At +3 the UI thread still outweighs it two to one.
FINETUNE_NICE = 3

#: How long quitting waits for running jobs, cancelled first, to end: a prediction or fine-tune stops at
#: its next step, but imports (the start-up warm-up) cannot be interrupted and took up to ~40 s under load.
QUIT_WAIT_MS = 90_000

GenFactory = Callable[[CancelToken], Generator[Progress, None, Any]]

#: Jobs whose thread has not ended (the main thread learns of the end through a queued signal).
_RUNNING: set[Job] = set()
_quit_hook: list[bool] = []


def await_jobs(msecs: int = QUIT_WAIT_MS) -> bool:
    """Cancel every running job and wait up to ``msecs`` for the worker threads; True if all ended."""
    from qtpy.QtCore import QThreadPool

    jobs = [job for job in list(_RUNNING) if job.running]
    if not jobs:
        return True
    for job in jobs:
        job.cancel()
        job.worker.quit()  # a generator stops at its next yield
    log.info("waiting for %s to end", ", ".join(job.name for job in jobs))
    done = bool(QThreadPool.globalInstance().waitForDone(msecs))
    if done:
        _RUNNING.difference_update(jobs)
    else:
        log.warning("background work (%s) still ran after %d ms", ", ".join(j.name for j in jobs), msecs)
    return done


def _install_quit_hook() -> None:
    """Once per process: quitting the app, or the interpreter, first waits for the jobs (``await_jobs``).

    A plain function, not a widget's method: the panel may be deleted (napari's ``Window.close``)
    before the application quits, and Qt drops connections to deleted receivers.
    """
    if _quit_hook:
        return
    _quit_hook.append(True)
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(await_jobs)
    atexit.register(await_jobs)


def _owner_of(callbacks: list[Callable[..., Any] | None]) -> Any:
    """The QObject whose bound method is one of ``callbacks`` (the widget the job reports to), or None."""
    from qtpy.QtCore import QObject

    for fn in callbacks:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, QObject):
            return owner
    return None


def lower_thread_priority(step: int = WORKER_NICE) -> int | None:
    """Run the calling thread, and the OpenMP threads it starts later, ``step`` nice levels below the
    process's main thread; return the new nice value (None where the OS has no per-thread priority).

    On a 2-core machine torch's threads otherwise take both cores from the UI thread: the event loop
    then stalls for hundreds of ms while a prediction runs. Linux gives each thread its own nice value
    and new threads inherit it, so torch's thread team, created on the worker's first parallel op,
    runs below the UI too. The value is absolute (process nice + step), so a reused pool thread
    does not sink further with each job. Elsewhere this is a no-op: on macOS and the BSDs the call
    takes a process id, and a thread id that happened to be one would renice another program.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + step)
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as exc:  # e.g. a sandbox that forbids setpriority
        log.debug("could not lower the worker thread's priority: %s", exc)
        return None


def user_message(exc: BaseException) -> str:
    """One line a user can act on, for any exception that reached the UI edge."""
    if isinstance(exc, SegStudioError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = str(exc)
    lowered = text.lower()
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in lowered or isinstance(exc, MemoryError):
        return (
            "out of memory: choose the CPU device, lower the overlap or close other programs, then try again"
        )
    first = text.splitlines()[0] if text else ""
    return f"unexpected {type(exc).__name__}: {first} (details in the log)"


def _drive(
    factory: GenFactory, token: CancelToken, nice: int = WORKER_NICE
) -> Generator[Progress, None, Any]:
    """Runs in the worker thread: builds the core generator and forwards throttled progress."""
    if threading.current_thread() is not threading.main_thread():
        lower_thread_priority(nice)
    gen = factory(token)
    last = 0.0
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            token.raise_if_cancelled()
            return stop.value
        now = time.perf_counter()
        if (
            item.metrics
            or item.done >= item.total
            or now - last >= PROGRESS_INTERVAL_S
            or not isinstance(item, Progress)
        ):
            last = now
            yield item


class Job:
    """A core generator running in a napari worker thread.

    Callbacks run on the main thread: ``on_progress(Progress)``, ``on_done(result)``,
    ``on_error(message, exc)``, ``on_cancelled()`` and finally ``on_finished()`` whatever happened.
    """

    def __init__(
        self,
        factory: GenFactory,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
        on_cancelled: Callable[[], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        name: str = "job",
        nice: int = WORKER_NICE,
    ) -> None:
        """``nice``: how many nice levels below the UI thread the worker runs (``lower_thread_priority``)."""
        from napari.qt.threading import GeneratorWorker

        self.name = name
        self.token = CancelToken()
        self.running = True
        self._on_progress = on_progress
        self._on_done = on_done
        self._on_error = on_error
        self._on_cancelled = on_cancelled
        self._on_finished = on_finished
        self._cancel_reported = False
        self._orphaned = False
        _install_quit_hook()
        owner = _owner_of([on_progress, on_done, on_error, on_cancelled, on_finished])
        if owner is not None:
            owner.destroyed.connect(lambda *_: self._orphan())
        # napari's GeneratorWorker, built directly: napari 0.9.2's create_worker adds a task-status
        # hook whose ``errored`` slot takes the wrong number of arguments (a TypeError on every error).
        self.worker = GeneratorWorker(_drive, factory, self.token, nice)
        # Lambdas, not bound methods: Qt holds bound methods weakly, and a Job nobody keeps must
        # still report; the running worker (kept by its thread pool) keeps the lambdas and so the Job.
        self.worker.yielded.connect(lambda item: self._yielded(item))
        self.worker.returned.connect(lambda value: self._returned(value))
        self.worker.errored.connect(lambda exc: self._errored(exc))
        self.worker.aborted.connect(lambda: self._report_cancelled())
        self.worker.finished.connect(lambda: self._finished())
        _RUNNING.add(self)
        self.worker.start()

    # --- control ---------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the core loop to stop at its next check; the job then reports ``on_cancelled``."""
        self.token.cancel()

    def _orphan(self) -> None:
        """The widget this job reports to was deleted: stop, and call nothing of it any more."""
        self._orphaned = True
        self.token.cancel()

    # --- signal handlers (main thread) -------------------------------------------------------------
    def _yielded(self, item: Progress) -> None:
        if self._on_progress and not self.token.cancelled and not self._orphaned:
            self._on_progress(item)

    def _returned(self, value: Any) -> None:
        if self._orphaned:
            return
        if self.token.cancelled:
            self._report_cancelled()
        elif self._on_done:
            self._call(self._on_done, value)

    def _errored(self, exc: BaseException) -> None:
        if self._orphaned:
            return
        if isinstance(exc, Cancelled) or self.token.cancelled:
            self._report_cancelled()
            return
        if not isinstance(exc, SegStudioError):
            log.error(
                "%s failed:\n%s",
                self.name,
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )
        if self._on_error:
            self._on_error(user_message(exc), exc)

    def _report_cancelled(self) -> None:
        if self._cancel_reported or self._orphaned:
            return
        self._cancel_reported = True
        if self._on_cancelled:
            self._on_cancelled()

    def _finished(self) -> None:
        self.running = False
        _RUNNING.discard(self)
        if self._on_finished and not self._orphaned:
            self._on_finished()

    def _call(self, fn: Callable[[Any], None], value: Any) -> None:
        # A failure while adding layers must not kill the app: report it like a worker error.
        try:
            fn(value)
        except Exception as exc:  # noqa: BLE001 - the UI edge
            log.exception("%s: handling the result failed", self.name)
            if self._on_error:
                self._on_error(user_message(exc), exc)
