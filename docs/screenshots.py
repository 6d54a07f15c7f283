"""Take the README's fine-tune and 3D pictures by driving the real app, the way a user clicks through it.

    xvfb-run -a -s "-screen 0 1400x900x24" env QT_QPA_PLATFORM=xcb .venv/bin/python docs/screenshots.py

Both on real scans from ../shared/data whose terms allow a picture in this README (the data is not shipped):

- docs/images/finetune.png: an MSD Task04 hippocampus crop the shipped models held back (CC BY-SA 4.0).
  The panel picks its model, *Predict*; the script then replaces the mask on three slices by the
  expert's labels (what a radiologist's corrections there add up to) and presses *Fine-tune* with the
  default budget. The Fine-tune tab shows the live loss/Dice plot and whether the child beat its parent
  on the same held-back voxels (kept, or not and why).
- docs/images/app_3d.png: TotalSegmentator's small CT example (Apache-2.0) with its organ labels, in the
  3D view.

The picture of the app on a real scan (docs/images/app.png) is taken by docs/app_screenshot.py.
Models and autosaves go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"


def wait(app, cond, timeout_s: float = 600.0) -> None:  # noqa: ANN001
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("the app did not finish in time")


def settle(app, seconds: float = 0.5) -> None:  # noqa: ANN001
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def save(viewer, name: str, app) -> Path:  # noqa: ANN001
    settle(app, 0.8)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    viewer.window.screenshot(str(path), flash=False, canvas_only=False)
    print(f"saved {path.relative_to(REPO)}")  # noqa: T201 - a script reporting its output
    return path


def run_job(app, start, finished_signal) -> str:  # noqa: ANN001
    outcome: list[str] = []
    finished_signal.connect(outcome.append)
    if not start():
        raise RuntimeError("the action did not start (see the notification)")
    wait(app, lambda: bool(outcome))
    finished_signal.disconnect(outcome.append)
    return outcome[0]


DATA = REPO.parent / "shared" / "data"
SCAN = DATA / "msd_task04_hippocampus" / "images" / "hippocampus_014.nii.gz"
CT = DATA / "totalsegmentator_ct_examples"


def main() -> int:
    ap = argparse.ArgumentParser(description="take the README screenshots")
    ap.add_argument("--budget", type=float, default=None, help="fine-tune budget (s); default: the app's")
    ap.add_argument("--slices", type=int, default=3, help="how many slices get the expert's labels")
    args = ap.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    os.environ["SEG_STUDIO_HOME"] = tempfile.mkdtemp(prefix="seg-studio-shots-")
    if not os.environ.get("DISPLAY"):
        sys.exit("needs a display: run it under xvfb-run (see the docstring)")
    if not SCAN.is_file() or not CT.is_dir():
        sys.exit("the screenshots need ../shared/data (MSD hippocampus and the TotalSegmentator examples)")

    import numpy as np
    from qtpy.QtWidgets import QApplication

    from seg_studio.core import io
    from seg_studio.ui.app import build_window

    viewer, panel = build_window(SCAN)
    app = QApplication.instance()
    viewer.window.resize(1400, 900)  # the screen the panel is laid out for
    wait(app, lambda: bool(panel.models.variants()), 120)
    wait(app, panel.warmed_up, 120)
    settle(app, 1.0)
    assert run_job(app, panel.predict, panel.run.finished) == "done", panel.run.last_error
    mask = panel.mask_layer()

    # the corrections: the expert's labels on a few slices around the middle
    truth = np.asarray(io.read(DATA / "msd_task04_hippocampus" / "labels" / SCAN.name).array)
    truth = truth.astype(mask.data.dtype)
    mid = truth.shape[0] // 2
    for z in range(mid - args.slices // 2, mid - args.slices // 2 + args.slices):
        idx = np.nonzero(truth[z] != np.asarray(mask.data[z]))
        mask.data_setitem((np.full(idx[0].shape, z), *idx), truth[z][idx])
    viewer.dims.set_current_step(0, mid)

    out = run_job(app, lambda: panel.finetune(budget_s=args.budget), panel.finetune_section.finished)
    assert out == "done", panel.finetune_section.last_error
    panel.show_section(panel.finetune_section)  # the plot, the verdict and the Re-run offer
    print("fine-tune:", panel.finetune_section.status.text())  # noqa: T201 - a script reporting what it shows
    save(viewer, "finetune.png", app)

    # the CT example with its organ labels in the 3D view
    for ly in list(viewer.layers):
        viewer.layers.remove(ly)
    viewer.open(str(CT / "images" / "example_ct_sm.nii.gz"), plugin="seg-studio")
    viewer.open(
        str(CT / "labels" / "example_ct_sm.nii.gz"),
        plugin="seg-studio",
        layer_type="labels",
        name="example_ct_sm organs (TotalSegmentator)",
    )
    panel.set_view(3)
    viewer.reset_view()
    settle(app, 0.3)
    viewer.camera.angles = (15, -35, 70)
    save(viewer, "app_3d.png", app)

    panel.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
