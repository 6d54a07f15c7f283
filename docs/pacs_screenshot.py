"""Take the README's PACS screenshot by clicking through the real app against a real, local Orthanc.

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb .venv/bin/python docs/pacs_screenshot.py

Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) is started on free 127.0.0.1 ports with a temp
storage folder. An MSD Task04 hippocampus crop (CC BY-SA 4.0; a case the shipped model never trained
on) is written as an MR DICOM series by SimpleITK and stored in it, and the script clicks *PACS...*,
*Find series* and *Open selected*, then *Predict* with the model the panel picks for the scan
(``hippocampus_unet``), *Measure*, and *Send labels as DICOM SEG*; the dialog is refreshed to show the
SEG in Orthanc. Saves docs/images/pacs.png (the whole screen). The TCIA series the PACS tests use are
not pictured: their terms do not clearly allow redistribution.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEG_STUDIO_DATA", REPO.parent / "shared" / "data"))
CASE = DATA / "msd_task04_hippocampus_extra" / "images" / "hippocampus_004.nii.gz"


def write_mr_series(nifti: Path, folder: Path) -> list[Path]:
    """The crop as an MR DICOM series (one file per slice, shared study/series UIDs): a PACS needs
    DICOM, and the MSD data is NIfTI."""
    import SimpleITK as sitk
    from pydicom.uid import generate_uid

    img = sitk.ReadImage(str(nifti))
    img = sitk.Cast(sitk.RescaleIntensity(img, 0, 4095), sitk.sitkUInt16)
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    direction = img.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[0:7:3], *direction[1:8:3]))
    writer, paths = sitk.ImageFileWriter(), []
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        tags = {
            "0008|0060": "MR", "0010|0010": "MSD^hippocampus_004", "0010|0020": "hippocampus_004",
            "0020|000d": study, "0020|000e": series, "0020|0052": frame, "0008|0018": generate_uid(),
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0020|0011": "1", "0020|0013": str(k + 1),
            "0008|103e": "T1 hippocampus crop (MSD Task04)", "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.4f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0018|0050": f"{img.GetSpacing()[2]:.4f}",
        }  # fmt: skip
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        paths.append(folder / f"{k:04d}.dcm")
        writer.SetFileName(str(paths[-1]))
        writer.Execute(sl)
    return paths


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
        server.store(write_mr_series(CASE, tmp / "series"))
        return shoot(server)
    finally:
        server.stop()


def shoot(server) -> int:  # noqa: ANN001
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from seg_studio.ui.panel import SegStudioPanel

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
    panel.predict()
    wait(app, lambda: panel.mask_layer() is not None and not panel.run.busy)
    mask = np.asarray(panel.mask_layer().data) > 0
    panel.mask_layer().opacity = 0.6
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
    panel.show_section(panel.measure_section)
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
