"""Take the README's screenshots by driving the real app, the way a user clicks through it.

    xvfb-run -a -s "-screen 0 1400x900x24" env QT_QPA_PLATFORM=xcb .venv/bin/python docs/screenshots.py

The app opens with the bundled synthetic 2D sample (no real patient data in the README). With no
trained checkpoint in resources/models, the loop starts from an untrained Attention U-Net: Predict
gives noise, the script "paints" the correct classes into the mask (what a radiologist's edits add
up to; here the sample's known labels) and presses Fine-tune. It saves:

- docs/images/finetune.png   the panel with the live loss/Dice plot after fine-tuning;
- docs/images/app_3d.png     the 3D sample with its mask in the 3D view.

The picture of the app on a real scan (docs/images/app.png) is taken by docs/app_screenshot.py.

The model is fine-tuned on the very image it then segments, so the second mask says that the loop
works, not how well the model generalises. Models and autosaves go to a temporary folder.
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


def main() -> int:
    ap = argparse.ArgumentParser(description="take the README screenshots")
    ap.add_argument("--budget", type=float, default=400.0, help="fine-tune budget (s)")
    ap.add_argument("--variant", default="attention_unet")
    ap.add_argument("--features", type=int, default=8, help="width of the untrained start")
    args = ap.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    os.environ["SEG_STUDIO_HOME"] = tempfile.mkdtemp(prefix="seg-studio-shots-")
    if not os.environ.get("DISPLAY"):
        sys.exit("needs a display: run it under xvfb-run (see the docstring)")

    import numpy as np
    from qtpy.QtWidgets import QApplication

    from seg_studio.core.samples import make_sample_2d, make_sample_3d
    from seg_studio.ui.app import build_window

    viewer, panel = build_window(None)
    app = QApplication.instance()
    viewer.window.resize(1400, 900)  # the screen the panel is laid out for
    wait(app, lambda: bool(panel.models.variants()), 120)

    from seg_studio.ui.reader import volume_layer_data

    # 1. the class names come from a label map the user opens (here the sample's own); an
    #    untrained variant predicts noise with those classes
    _, truth_vol = make_sample_2d()
    data, kw, _ = volume_layer_data(truth_vol, name="sample 2D labels", kind="labels")
    truth_layer = viewer.add_labels(data, **kw)
    panel.select_variant(args.variant, untrained=True, features=args.features, depth=3)
    assert run_job(app, panel.predict, panel.run.finished) == "done", panel.run.last_error
    viewer.layers.remove(truth_layer)
    mask = panel.mask_layer()

    # 2. the user's corrections (here: the sample's known classes, painted in one stroke)
    truth = np.asarray(truth_vol.array).astype(mask.data.dtype)
    idx = np.nonzero(truth != np.asarray(mask.data))
    with mask.block_history():
        mask.data_setitem(idx, truth[idx])

    # 3. Fine-tune with one click, live plot
    out = run_job(
        app, lambda: panel.finetune(budget_s=args.budget, only_changed=False), panel.finetune_section.finished
    )
    assert out == "done", panel.finetune_section.last_error
    panel.show_section(panel.finetune_section)  # the plot and the Re-run offer
    save(viewer, "finetune.png", app)

    # 4. the 3D sample in the 3D view
    for ly in list(viewer.layers):
        viewer.layers.remove(ly)
    image3, labels3 = make_sample_3d()
    data, kw, _ = volume_layer_data(image3, name="sample 3D")
    viewer.add_image(data, **kw)
    data, kw, _ = volume_layer_data(labels3, name="sample 3D labels", kind="labels")
    viewer.add_labels(data, **kw)
    panel.set_view(3)
    viewer.reset_view()
    settle(app, 0.3)
    viewer.camera.angles = (15, -35, 70)
    viewer.camera.zoom *= 0.8
    save(viewer, "app_3d.png", app)

    panel.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
