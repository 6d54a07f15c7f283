"""Take the README's screenshot of the domain banner: a model on a scan it is not made for.

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb .venv/bin/python docs/screenshot_domain.py

The real app opens a real abdominal MRI from ../shared/data (TotalSegmentator's test MR, Apache-2.0:
117 x 91 x 20 voxels of 3 mm; the TCIA series are not shown because their terms do not clearly allow
redistribution). With no model chosen the panel finds that no shipped model fits it and says so; the
script then picks ``hippocampus_unet`` (trained on 40 x 56 x 40 mm crops around the hippocampus) as a
user would, presses Predict, and saves the window with the banner that lists what does not fit,
before and after the prediction:

- docs/images/domain_banner.png
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from screenshots import REPO, run_job, save, settle, wait  # noqa: E402

SCAN = REPO.parent / "shared" / "data" / "totalsegmentator_ct_examples" / "images" / "example_mr_sm.nii.gz"
MODEL = REPO / "resources" / "models" / "hippocampus_unet.segmodel"


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    os.environ["SEG_STUDIO_HOME"] = tempfile.mkdtemp(prefix="seg-studio-shots-")
    if not os.environ.get("DISPLAY"):
        sys.exit("needs a display: run it under xvfb-run (see the docstring)")
    if not SCAN.is_file():
        sys.exit(f"{SCAN} is not here: the screenshot needs ../shared/data")

    from qtpy.QtWidgets import QApplication

    from seg_studio.ui.app import build_window

    viewer, panel = build_window(None)
    app = QApplication.instance()
    viewer.window.resize(1500, 940)
    wait(app, lambda: bool(panel.models.variants()), 120)
    for layer in list(viewer.layers):  # the start-up sample: only the real scan in the picture
        viewer.layers.remove(layer)
    viewer.open(str(SCAN), plugin="seg-studio")
    settle(app, 1.0)
    print("default:", panel.domain_warnings()[:1])  # noqa: T201 - "no model fits this scan"
    panel.select_checkpoint(MODEL)
    panel.models.want_attention.setChecked(False)  # a plain U-Net has no attention maps
    assert run_job(app, panel.predict, panel.run.finished) == "done", panel.run.last_error
    for line in panel.domain_warnings():
        print("banner:", line)  # noqa: T201 - a script reporting what it shows
    viewer.dims.set_current_step(0, 10)  # a slice through the middle of the volume
    panel.mask_layer().opacity = 0.5
    panel.show_section(panel.models)  # the card beside the banner
    viewer.reset_view()
    save(viewer, "domain_banner.png", app)
    panel.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
