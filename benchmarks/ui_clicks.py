"""Click to correct in the real app, timed from the click to the drawn mask. Not a test: it prints figures.

    xvfb-run -a -s "-screen 0 1400x900x24" env QT_QPA_PLATFORM=xcb \\
        nice .venv/bin/python benchmarks/ui_clicks.py [--task hippocampus|isbi2012] [--clicks 6] [--no-warm]

A napari window with the docked panel opens a held-back case of the interactive model's own split
(the first of ``benchmarks/clicks.py``'s), the Clicks tab is brought into view (which compiles the model
for the scan in a worker, ``ClicksSection.warm_up``) and, once that is done, a simulated user clicks at
the centre of the largest error region (``core.interactive.next_click``) from an empty mask: the click
goes through the Points layer's mouse callback as napari delivers a press, on the slice of the click
(shown before the clock starts, as a user scrolls there first). One click's time runs from that
callback to the first canvas paint (vispy's draw event) after the Labels layer took the new mask.
``--no-warm`` skips the warm-up: the first click then compiles the crop itself. Compiled graphs go
to a fresh cache folder unless ``--keep-cache`` (a first run of the app on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "resources" / "recipes"))
MODELS = REPO / "resources" / "models"


def wait_until(app: Any, cond: Any, timeout_s: float = 300.0) -> float:
    """Run the event loop until ``cond()``; the seconds it took."""
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("the app did not get there in time")
        time.sleep(0.002)
    return time.perf_counter() - t0


def held_back_case(task: str) -> tuple[Path, np.ndarray]:
    """The first held-back case of the interactive model's split: its file and the structure's truth."""
    import clicks as bench

    from seg_studio.core import checkpoint
    from seg_studio.core.training import pairs_from_folders

    t = bench.TASKS[task]
    meta = checkpoint.read_meta(MODELS / f"{t['name']}.segmodel")
    name, _, truth = bench.held_back(meta, t)[0]
    src = next(s for s in pairs_from_folders(t["images"], t["labels"]) if s.name == name)
    return Path(src.image), truth == 1


def run(task: str, n_clicks: int, warm: bool) -> dict[str, Any]:
    import napari
    from qtpy.QtWidgets import QApplication

    from seg_studio.core.interactive import next_click
    from seg_studio.ui.panel import SegStudioPanel

    image, truth = held_back_case(task)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    panel = SegStudioPanel(viewer)
    viewer.window.add_dock_widget(panel, name="seg_studio", area="right")
    wait_until(app, lambda: bool(panel.models.variants()) and panel.warmed_up())
    viewer.open(str(image), plugin="seg-studio")
    wait_until(app, lambda: panel.scan_layer() is not None)
    section = panel.clicks
    model = MODELS / f"{task}_clicks.segmodel"
    wait_until(app, lambda: section.model_combo.findData(str(model)) >= 0)
    if not warm:
        section.warm_up = lambda: False  # type: ignore[method-assign]
    section.model_combo.setCurrentIndex(section.model_combo.findData(str(model)))
    panel.show_section(section)
    warm_s = wait_until(app, section.warmed_up) if warm else 0.0
    section.value.setValue(1)
    section.click_button.setChecked(True)
    points = section.points_layer(1)
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    draws: list[float] = []
    canvas.events.draw.connect(lambda e: draws.append(time.perf_counter()), position="last")
    out: list[dict[str, float]] = []
    for _ in range(n_clicks):
        mask = panel.mask_layer()
        current = np.zeros(truth.shape, bool) if mask is None else np.asarray(mask.data) == 1
        nxt = next_click(current, truth)
        if nxt is None:
            break
        positive, voxel = nxt
        if truth.ndim == 3:  # the user scrolls to the slice first (not timed)
            viewer.dims.set_current_step(0, voxel[0])
        wait_until(app, lambda: not section.job or not section.job.running)
        for _ in range(20):
            app.processEvents()
        before, landed = section.last_step, []
        event = SimpleNamespace(
            type="mouse_press",
            button=1,
            modifiers=() if positive else ("Control",),
            position=tuple(points.data_to_world(np.asarray(voxel, float))),
        )
        t0 = time.perf_counter()
        section._on_mouse(points, event)
        wait_until(app, lambda b=before: section.last_step is not b)
        landed.append(time.perf_counter())
        step = section.last_step
        try:  # a click that changed nothing draws nothing new
            wait_until(
                app, lambda t=landed[0]: bool(draws) and draws[-1] > t, 5.0 if not step.changed else 60.0
            )
            t_draw = next(d for d in draws if d > landed[0])
        except TimeoutError:
            t_draw = landed[0]
        out.append(
            {
                "seconds": round(t_draw - t0, 3),
                "core_seconds": round(step.seconds, 3),
                "landed_seconds": round(landed[0] - t0, 3),
                "positive": bool(positive),
                "changed": int(step.changed),
                "crop": [r.stop - r.start for r in step.region],
            }
        )
    viewer.close()
    return {"task": task, "case": image.name, "warm": warm, "warm_up_s": round(warm_s, 2), "clicks": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["hippocampus", "isbi2012"], action="append")
    ap.add_argument("--clicks", type=int, default=6)
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-up: the first click compiles")
    ap.add_argument("--keep-cache", action="store_true", help="use the compiled graphs already cached")
    ap.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if not args.keep_cache:
        os.environ["SEG_STUDIO_CACHE"] = tempfile.mkdtemp(prefix="seg-ui-clicks-")
    os.environ["SEG_STUDIO_HOME"] = tempfile.mkdtemp(
        prefix="seg-ui-clicks-home-"
    )  # autosaves: not the user's
    import torch

    from seg_studio.core.inference import describe_hardware

    load0 = os.getloadavg()[0]
    results = [run(t, args.clicks, not args.no_warm) for t in (args.task or ["hippocampus", "isbi2012"])]
    for r in results:
        secs = [c["seconds"] for c in r["clicks"]]
        r["first_click_s"] = secs[0] if secs else None
        r["later_clicks_median_s"] = statistics.median(secs[1:]) if len(secs) > 1 else None
        r["later_clicks_max_s"] = max(secs[1:]) if len(secs) > 1 else None
    info = {
        "cpu": describe_hardware(torch.device("cpu")),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_start": round(load0, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "command": "benchmarks/ui_clicks.py " + " ".join(sys.argv[1:]),
    }
    text = json.dumps({"machine": info, "results": results}, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    for r in results:
        secs = " ".join(f"{c['seconds']:.2f}" for c in r["clicks"])
        sys.stdout.write(f"{r['task']}: warm-up {r['warm_up_s']} s; click -> drawn mask (s): {secs}\n")
    sys.stdout.write(json.dumps(info) + "\n")


if __name__ == "__main__":
    main()
