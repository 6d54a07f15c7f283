"""How responsive the app stays: the longest event-loop stall while inference and fine-tuning run,
and the time from launch to a ready window. Not a test: it prints measured figures.

    xvfb-run -a -s "-screen 0 1400x900x24" env QT_QPA_PLATFORM=xcb \\
        .venv/bin/python benchmarks/ui_responsiveness.py [--dims 3] [--budget 20] [--trace] [--profile]

Stall: a 5 ms QTimer runs on the main thread while the panel's ``predict()`` and ``finetune()`` run
in their workers; the gap between two ticks minus 5 ms is how long the UI could not react (a user
sees a stall above ~100 ms). The same timer also runs for 2 s with nothing to do (the baseline of
this machine under its current load). Launch: a fresh ``python`` process builds the real app window
(``build_window``: napari, our panel, the sample) and reports when the window is first painted
(panel and empty canvas), when it is exposed with the sample drawn, when the model list is ready (torch
imported in the worker) and when the start-up warm-up is done, with the times ``build_window`` reached
each of its steps (``phase_*``). ``--baseline DIR`` (an older checkout) alternates its launches with
this tree's, so that before and after see the same load. Each stall is reported twice more: "while_computing" (the worker runs) and
"landing" (the result is turned into layers on the main thread). After the first prediction it
shows one map (a layer made on the user's click) and predicts again (the result lands in the layers
that exist). ``max_turn_cpu_ms`` is the most CPU time the main thread itself spent between two ticks
(``time.thread_time``): what the longest stall would be on an idle machine, where wall-clock stalls
also hold waits for the GIL and for a core. ``--trace`` prints the main thread's stack during every
stall over 100 ms; ``--profile`` prints a cProfile of the main thread from each landing on, and
``--profile-turns MS`` one of each turn longer than MS ms (each turn profiled on its own).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import faulthandler
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICK_MS = 5


class StackSampler:
    """Samples the main thread's Python stack every few ms from a side thread (``--trace``).

    It uses ``faulthandler.dump_traceback``, which writes every thread's stack as text without making
    frame objects: holding the main thread's frames from another thread keeps their locals alive, and
    a QPainter that then dies in the sampler thread crashes Qt (seen: a segfault after "Cannot destroy
    paint device that is being painted"). The sampler needs the GIL, so C code that holds the GIL
    shows as the Python line that called it.
    """

    def __init__(self, interval_s: float = 0.004) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._main = f"Thread 0x{threading.main_thread().ident:016x}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with tempfile.TemporaryFile("w+") as fh:
            while not self._stop.wait(self.interval_s):
                fh.seek(0)
                fh.truncate()
                faulthandler.dump_traceback(fh, all_threads=True)
                fh.flush()
                fh.seek(0)
                stack = self._main_stack(fh.read())
                if stack:
                    self.samples.append((time.perf_counter(), stack))

    def _main_stack(self, text: str) -> tuple[str, ...]:
        """The main thread's frames, outermost first, from a ``dump_traceback`` text."""
        frames: list[str] = []
        inside = False
        for line in text.splitlines():
            if line.startswith(("Thread 0x", "Current thread 0x")):
                inside = self._main in line
                continue
            if inside and line.strip().startswith("File "):
                m = re.match(r'\s*File "(.*)", line (\d+) in (.*)', line)
                if m:
                    path = Path(m.group(1))
                    frames.append(f"{path.parent.name}/{path.name}:{m.group(2)} {m.group(3)}")
        return tuple(reversed(frames))[-14:]

    def explain(self, t0: float, t1: float, top: int = 3) -> list[tuple[int, tuple[str, ...]]]:
        """The most frequent stacks sampled between ``t0`` and ``t1``, with their counts."""
        counts = collections.Counter(s for t, s in self.samples if t0 <= t <= t1)
        return [(n, s) for s, n in counts.most_common(top)]

    def stop(self) -> None:
        self._stop.set()


class StallMeter:
    """Records the gaps between ticks of a fast main-thread timer."""

    def __init__(self, sampler: StackSampler | None = None, profile_over_ms: float | None = None) -> None:
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        #: the main thread's CPU time in each gap: what the stall would be on an idle machine
        self.cpu: list[float] = []
        self.ticks: list[float] = []
        self.sampler = sampler
        self.stalls: list[tuple[float, float]] = []
        #: ``--profile-turns MS``: each turn is profiled on its own; those over MS ms are kept
        self.profile_over_ms = profile_over_ms
        self._turn_prof: cProfile.Profile | None = None
        self.turn_profiles: list[tuple[float, float, pstats.Stats]] = []
        self._last = self.started = time.perf_counter()
        self._last_cpu = time.thread_time()
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        gap = (now - self._last) * 1000 - TICK_MS
        self.gaps.append(gap)
        self.cpu.append((cpu - self._last_cpu) * 1000)
        self._last_cpu = cpu
        self.ticks.append(now)
        if gap > 100:
            self.stalls.append((self._last, now))
        self._last = now
        if self._turn_prof is not None:
            self._turn_prof.disable()
            if gap > self.profile_over_ms:
                self.turn_profiles.append((gap, self.cpu[-1], pstats.Stats(self._turn_prof)))
                # the profiler's own bookkeeping is not the app's: the next gap starts after it
                self._last, self._last_cpu = time.perf_counter(), time.thread_time()
            self._turn_prof = cProfile.Profile()
            self._turn_prof.enable()

    def report_stalls(self, label: str) -> None:
        """Print what the main thread was doing in each stall over 100 ms (``--trace``) and in each turn
        over the ``--profile-turns`` threshold."""
        self.report_turn_profiles(label)
        if self.sampler is None:
            return
        for t0, t1 in self.stalls:
            at = (t0 - self.started) * 1000
            print(f"--- {label}: stall of {(t1 - t0) * 1000:.0f} ms at +{at:.0f} ms", file=sys.stderr)
            for n, stack in self.sampler.explain(t0, t1):
                print(f"  {n} samples:", file=sys.stderr)
                for line in stack:
                    print(f"    {line}", file=sys.stderr)

    def report_turn_profiles(self, label: str, top: int = 30) -> None:
        """``--profile-turns``: what the main thread did in each turn over the threshold (cProfile)."""
        for gap, cpu, stats in self.turn_profiles:
            print(f"--- {label}: a turn of {gap:.0f} ms ({cpu:.0f} ms CPU, profiled)", file=sys.stderr)
            stats.stream = sys.stderr
            stats.sort_stats("cumulative").print_stats(top)
        self.turn_profiles.clear()

    def start(self) -> None:
        self.gaps.clear()
        self.cpu.clear()
        self.ticks.clear()
        self.stalls.clear()
        self._last = self.started = time.perf_counter()
        self._last_cpu = time.thread_time()
        if self.profile_over_ms is not None:
            self._turn_prof = cProfile.Profile()
            self._turn_prof.enable()
        self.timer.start()

    def stop(self, landed_at: float | None = None) -> dict[str, float]:
        """Summary of the gaps; with ``landed_at``, also split at that moment (result handed to the UI)."""
        self.timer.stop()
        if self._turn_prof is not None:
            self._turn_prof.disable()
            self._turn_prof = None
        out = self._summary(self.gaps, self.cpu)
        if landed_at is not None:
            # a gap that ends after the result arrived holds landing work (the result's handler runs
            # between two ticks), so split by where each gap ends
            n = sum(1 for t in self.ticks if t < landed_at)
            out["while_computing"] = self._summary(self.gaps[:n], self.cpu[:n])
            out["landing"] = self._summary(self.gaps[n:], self.cpu[n:])
        return out

    @staticmethod
    def _summary(gaps: list[float], cpu: list[float]) -> dict[str, float]:
        g = sorted(gaps) or [0.0]
        return {
            "max_turn_cpu_ms": round(max(cpu or [0.0]), 1),
            "max_stall_ms": round(max(g), 1),
            "p99_stall_ms": round(g[min(len(g) - 1, int(0.99 * len(g)))], 1),
            "median_gap_ms": round(statistics.median(g), 2),
            "ticks": len(g),
            "stalls_over_100ms": sum(1 for x in g if x > 100),
        }


#: ``--profile``: a cProfile of the main thread from each landing until the meter stops
PROFILER: list[cProfile.Profile] = []


def dump_profile(label: str) -> None:
    """``--profile``: print what the main thread spent its time on since the profiler was enabled."""
    if not PROFILER:
        return
    prof = PROFILER.pop()
    prof.disable()
    print(f"--- {label}: the main thread from the landing on (cProfile)", file=sys.stderr)
    pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(45)
    PROFILER.append(cProfile.Profile())


def mark_landing(section) -> list[float]:  # noqa: ANN001
    """Record when ``section``'s worker result reaches the main thread (its ``_done`` handler runs):
    before it, the UI waits on a worker; after it, the UI turns the result into layers."""
    times: list[float] = []
    handler = section._done

    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        times.append(time.perf_counter())
        if PROFILER:
            PROFILER[0].enable()  # cProfile follows the thread that enables it: the main thread
        return handler(*args, **kwargs)

    section._done = wrapped
    return times


def settle(app, seconds: float = 0.5) -> None:  # noqa: ANN001
    """Keep the event loop (and the meter) running a little after a job ends: the turn that lands
    its result often also emits ``finished``, and its gap only ends at the next tick."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.001)


def wait_until(app, cond, timeout_s: float) -> None:  # noqa: ANN001
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("timed out")


def measure_stalls(
    dims: int, budget_s: float, features: int, trace: bool = False, profile_over_ms: float | None = None
) -> dict[str, object]:
    from qtpy.QtWidgets import QApplication

    from seg_studio.core import checkpoint
    from seg_studio.core import io as sio
    from seg_studio.core.models import create_model
    from seg_studio.core.samples import make_sample_2d, make_sample_3d
    from seg_studio.ui.app import build_window

    tmp = Path(tempfile.mkdtemp(prefix="seg-ui-bench-"))
    os.environ["SEG_STUDIO_HOME"] = str(tmp / "home")
    image, labels = (make_sample_2d if dims == 2 else make_sample_3d)()
    scan = sio.write(image, tmp / f"scan{dims}d.nii.gz")
    classes = [labels.labels[v] for v in sorted(labels.labels)]
    model = create_model(
        "attention_unet", spatial_dims=dims, in_channels=1, out_channels=len(classes), features=features
    )
    meta = checkpoint.new_meta(
        model,
        "attention_unet",
        {"features": features},
        classes=[checkpoint.ClassInfo(c.value, c.name, tuple(c.color)) for c in classes],
        patch_size=(32, 64, 64) if dims == 3 else (128, 128),
    )
    ckpt = checkpoint.save(tmp / f"bench{dims}d.segmodel", model, meta)

    viewer, panel = build_window(scan)
    app = QApplication.instance()
    wait_until(app, lambda: bool(panel.models.variants()), 120)
    wait_until(app, panel.warmed_up, 120)  # a user clicks Run seconds after the window opens
    panel.open_checkpoint(ckpt)
    meter = StallMeter(StackSampler() if trace else None, profile_over_ms)
    out: dict[str, object] = {"dims": dims, "features": features, "shape": list(image.spatial_shape)}

    meter.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        app.processEvents()
        time.sleep(0.001)
    out["idle"] = meter.stop()

    done: list[str] = []
    landed = mark_landing(panel.run)
    panel.run.finished.connect(done.append)
    meter.start()
    t0 = time.perf_counter()
    panel.predict()
    wait_until(app, lambda: bool(done), 600)
    settle(app)
    out["predict"] = {
        **meter.stop(landed[0] if landed else None),
        "seconds": round(time.perf_counter() - t0, 2),
        "outcome": done[0],
    }
    meter.report_stalls("predict")
    dump_profile("predict")

    # the maps are not layers until shown: the first show of one (a user's click) costs its layer
    names = panel.run.map_names()
    out["maps_offered"] = len(names)
    if names:
        meter.start()
        t0 = time.perf_counter()
        if PROFILER:
            PROFILER[0].enable()
        panel.run.show_map(names[0])
        while time.perf_counter() - t0 < 1.0:
            app.processEvents()
            time.sleep(0.001)
        out["show_first_map"] = {**meter.stop(), "name": names[0]}
        meter.report_stalls("show first map")
        dump_profile("show first map")

    # a second prediction lands in the layers that exist (the mask and the shown map)
    done.clear()
    landed = mark_landing(panel.run)
    meter.start()
    t0 = time.perf_counter()
    panel.predict()
    wait_until(app, lambda: bool(done), 600)
    settle(app)
    out["predict_again"] = {
        **meter.stop(landed[0] if landed else None),
        "seconds": round(time.perf_counter() - t0, 2),
        "outcome": done[0],
    }
    meter.report_stalls("predict again")
    dump_profile("predict again")

    mask = panel.mask_layer()
    truth = labels.array.astype(mask.data.dtype)
    import numpy as np

    idx = np.nonzero(truth != mask.data)
    with mask.block_history():
        mask.data_setitem(idx, truth[idx])
    done.clear()
    landed = mark_landing(panel.finetune_section)
    panel.finetune_section.finished.connect(done.append)
    meter.start()
    t0 = time.perf_counter()
    panel.finetune(budget_s=budget_s, only_changed=False)
    wait_until(app, lambda: bool(done), 600)
    settle(app)
    out["finetune"] = {
        **meter.stop(landed[0] if landed else None),
        "seconds": round(time.perf_counter() - t0, 2),
        "outcome": done[0],
    }
    meter.report_stalls("finetune")
    dump_profile("finetune")
    if meter.sampler is not None:
        meter.sampler.stop()
    panel.shutdown()
    viewer.close()
    return out


def launch_child(t_start: float) -> None:
    """Child process: build the app window and report when it is ready."""
    from qtpy.QtWidgets import QApplication

    from seg_studio.ui import app as seg_app

    t_import = time.time()
    viewer, panel = seg_app.build_window(None)
    marks = getattr(seg_app, "MILESTONES", {})  # absent in builds before it was recorded
    app = QApplication.instance()
    win = viewer.window._qt_window
    wait_until(app, lambda: win.isVisible() and len(viewer.layers) > 0, 120)
    app.processEvents()
    win.grab()  # forces a paint of the window with the sample drawn
    t_window = time.time()
    wait_until(app, lambda: bool(panel.models.variants()), 120)
    t_models = time.time()
    wait_until(app, panel.warmed_up, 120)
    t_warm = time.time()
    print(
        json.dumps(
            {
                "python_start_to_app_code_s": round(t_import - t_start, 2),
                # the window (panel, empty canvas) painted, before the sample is opened into it
                **(
                    {"launch_to_first_paint_s": round(marks["window_drawn"] - t_start, 2)}
                    if "window_drawn" in marks
                    else {}
                ),
                "launch_to_window_s": round(t_window - t_start, 2),
                **{f"phase_{k}_s": round(v - t_start, 2) for k, v in marks.items()},
                "launch_to_models_listed_s": round(t_models - t_start, 2),
                "launch_to_warmed_up_s": round(t_warm - t_start, 2),
            }
        )
    )
    panel.shutdown()
    viewer.close()


def _launch_once(tree: Path) -> dict[str, float]:
    """One launch of the app as ``tree`` (a checkout) has it, in a fresh process and a fresh home."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "SEG_STUDIO_HOME": home, "PYTHONPATH": str(tree)}
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, str(tree / "benchmarks" / "ui_responsiveness.py"), "--launch-child", repr(t0)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"launch run of {tree} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def measure_launch(runs: int, baseline: Path | None = None) -> dict[str, list[dict[str, float]]]:
    """``runs`` launches of this tree, alternating with ``baseline`` (an older checkout) when given,
    so that both see the same load."""
    out: dict[str, list[dict[str, float]]] = {"this": [], "baseline": []}
    for _ in range(runs):
        out["this"].append(_launch_once(REPO))
        if baseline is not None:
            out["baseline"].append(_launch_once(baseline))
    return out


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in runs for k in r}
    return {k: statistics.median(r[k] for r in runs if k in r) for k in sorted(keys)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, default=3, choices=(2, 3))
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--budget", type=float, default=20.0, help="fine-tune budget in seconds")
    ap.add_argument("--launch-runs", type=int, default=3)
    ap.add_argument("--trace", action="store_true", help="print the main thread's stack in each stall")
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of an earlier commit (git archive REV | tar -x -C DIR): its launches alternate "
        "with this tree's, for a before/after under the same load",
    )
    ap.add_argument("--no-stalls", dest="stalls", action="store_false", help="measure the launch only")
    ap.add_argument("--profile", action="store_true", help="cProfile the main thread as results land")
    ap.add_argument(
        "--profile-turns",
        type=float,
        default=None,
        metavar="MS",
        help="cProfile each event-loop turn on its own and print those longer than MS ms",
    )
    ap.add_argument("--launch-child", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    if args.launch_child is not None:
        launch_child(args.launch_child)
        return
    if not os.environ.get("DISPLAY"):
        sys.exit("needs a display: run it under xvfb-run (see the docstring)")
    if args.profile:
        PROFILER.append(cProfile.Profile())
    load_before = os.getloadavg()
    launch = measure_launch(args.launch_runs, args.baseline) if args.launch_runs > 0 else {"this": []}
    stalls = (
        measure_stalls(args.dims, args.budget, args.features, args.trace, args.profile_turns)
        if args.stalls
        else {}
    )
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "launch": launch["this"],
        "launch_median": _medians(launch["this"]) if launch["this"] else {},
        **(
            {"baseline": str(args.baseline), "baseline_launch_median": _medians(launch["baseline"])}
            if launch.get("baseline")
            else {}
        ),
        "stalls": stalls,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
