"""Take the README's picture of the app: a real scan, the model the panel picks for it, a correction.

    xvfb-run -a -s "-screen 0 1400x900x24" env QT_QPA_PLATFORM=xcb .venv/bin/python docs/app_screenshot.py

The real app on the 1400x900 screen the panel is laid out for opens an MSD Task04 hippocampus crop
from ../shared/data (CC BY-SA 4.0; the picture is for this README, the data is not shipped). With no
model chosen the panel picks the one whose domain fits (``hippocampus_unet``); *Predict*; the script
then paints one stroke of "anterior" with napari's brush on the slice in view, as a user correcting it
would, and presses *Predict* again: the stroke is kept (the status says so). The window is saved with
the Correct tab in front:

- docs/images/app.png
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from screenshots import REPO, run_job, save, settle, wait  # noqa: E402

SCAN = REPO.parent / "shared" / "data" / "msd_task04_hippocampus" / "images" / "hippocampus_003.nii.gz"


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    os.environ["SEG_STUDIO_HOME"] = tempfile.mkdtemp(prefix="seg-studio-shots-")
    if not os.environ.get("DISPLAY"):
        sys.exit("needs a display: run it under xvfb-run (see the docstring)")
    if not SCAN.is_file():
        sys.exit(f"{SCAN} is not here: the screenshot needs ../shared/data")

    import numpy as np
    from qtpy.QtWidgets import QApplication

    from seg_studio.ui.app import build_window

    viewer, panel = build_window(SCAN)
    app = QApplication.instance()
    viewer.window.resize(1400, 900)
    wait(app, lambda: bool(panel.models.variants()), 120)
    wait(app, panel.warmed_up, 120)
    settle(app, 1.0)
    choice = panel.models.current_choice()
    print("picked:", choice.label if choice else None)  # noqa: T201 - a script reporting what it shows
    assert run_job(app, panel.predict, panel.run.finished) == "done", panel.run.last_error

    mask = panel.mask_layer()
    z = mask.data.shape[0] // 2
    viewer.dims.set_current_step(0, z)
    rows, cols = np.nonzero(np.asarray(mask.data[z]) == 2)  # a voxel of the "posterior" part in view
    k = int(np.argmin(cols)) if cols.size else None
    at = (z, int(rows[k]), int(cols[k])) if k is not None else (z, mask.data.shape[1] // 2, 5)
    panel.select_class(1)  # click "1: anterior" in the class list: napari's brush paints it
    mask.brush_size = 3
    mask.paint(at, 1)
    assert run_job(app, panel.predict, panel.run.finished) == "done", panel.run.last_error
    print("status:", panel.run.status.text())  # noqa: T201
    mask.mode = "pan_zoom"
    panel.show_section(panel.correct)  # the classes to paint with, the clean-up helpers and Save
    viewer.reset_view()
    save(viewer, "app.png", app)
    panel.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
