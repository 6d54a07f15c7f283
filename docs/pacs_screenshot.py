"""Take the README's PACS screenshot by clicking through the real app against a real, local Orthanc.

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb .venv/bin/python docs/pacs_screenshot.py

Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) is started on free 127.0.0.1 ports with a temp
storage folder, the TCIA T1post series PGBM-008 is stored in it, and the script clicks *PACS...*,
*Find series* and *Open selected*. The mask is the same study's TCIA MaskTumor series (standing in
for a corrected prediction: no shipped model is trained on brain MR), so the Measurements table
shows a real tumour's volume and T1 intensities. *Send labels as DICOM SEG* pushes it back and the
dialog is refreshed to show the SEG in Orthanc. Saves docs/images/pacs.png (the whole screen).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEG_STUDIO_DATA", REPO.parent / "shared" / "data"))
CASE = "PGBM-008_19930610"


def wait(app, cond, timeout_s: float = 300.0) -> None:  # noqa: ANN001
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("the app did not finish in time")


def main() -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from orthanc_server import start_orthanc

    tmp = Path(tempfile.mkdtemp(prefix="seg_studio_pacs_shot_"))
    os.environ["SEG_STUDIO_HOME"] = str(tmp / "home")
    os.environ["SEG_STUDIO_PACS_CACHE"] = str(tmp / "cache")
    server = start_orthanc(tmp / "orthanc")
    try:
        server.store(sorted((DATA / "tcia_brain_tumor_progression_dicom" / "images" / CASE).glob("*.dcm")))
        return shoot(server)
    finally:
        server.stop()


def shoot(server) -> int:  # noqa: ANN001
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from seg_studio.core import io
    from seg_studio.core.volume import LabelInfo
    from seg_studio.ui.panel import SegStudioPanel
    from seg_studio.ui.reader import volume_layer_data

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window._qt_window.setGeometry(0, 0, 1600, 1000)
    panel = SegStudioPanel(viewer)
    viewer.window.add_dock_widget(panel, name="seg_studio", area="right")
    wait(app, panel.warmed_up)
    dlg = panel.open_pacs()
    dlg.url.setText(server.dicomweb)
    dlg.find()
    wait(app, lambda: not dlg.busy)
    dlg.select_row(0)
    dlg.open_selected()
    wait(app, lambda: not dlg.busy and len(viewer.layers) == 1)
    scan_layer = panel.scan_layer()
    truth = io.read(DATA / "tcia_brain_tumor_progression_dicom" / "labels" / CASE)
    mask = truth.array > 0
    truth = truth.with_array(mask.astype(np.uint8), labels={1: LabelInfo(1, "tumour", (230, 25, 75))})
    data, kwargs, _ = volume_layer_data(truth, name="tumour (TCIA MaskTumor)", kind="labels")
    kwargs.update(scale=scan_layer.scale, translate=scan_layer.translate, opacity=0.6)
    viewer.add_labels(data, **kwargs)
    viewer.dims.set_point(
        0, scan_layer.translate[0] + scan_layer.scale[0] * int(np.argmax(mask.sum(axis=(1, 2))))
    )
    panel.measure_section.measure_now()
    wait(app, lambda: panel.measurements() is not None and not panel.measure_section.busy)
    dlg.send_labels()
    wait(app, lambda: not dlg.busy)
    status = dlg.status.text()
    dlg.find()
    wait(app, lambda: not dlg.busy)
    dlg.status.setText(f"{status}; the list now shows it")
    panel.ensureWidgetVisible(panel.measure_section)
    dlg.move(40, 520)
    dlg.resize(900, 420)
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)
    out = REPO / "docs" / "images" / "pacs.png"
    QApplication.primaryScreen().grabWindow(0).save(str(out))
    print(f"saved {out.relative_to(REPO)}; {status}")  # noqa: T201 - a script reporting its output
    panel.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
