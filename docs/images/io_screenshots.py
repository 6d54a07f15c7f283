"""Screenshots of napari opening shared-data scans through seg_studio's reader (run under Xvfb).

xvfb-run -a -s "-screen 0 1280x900x24" env QT_QPA_PLATFORM=xcb .venv/bin/python docs/images/io_screenshots.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
import numpy as np

DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "data"
OUT = Path(__file__).resolve().parent


def shot(viewer: napari.Viewer, name: str) -> None:
    viewer.window._qt_window.resize(1280, 860)
    viewer.reset_view()
    napari.qt.get_qapp().processEvents()
    viewer.screenshot(str(OUT / name), canvas_only=False)
    print("wrote", OUT / name)  # noqa: T201 - a script


def main() -> None:
    viewer = napari.Viewer(title="seg_studio: NIfTI", show=True)
    ct = DATA / "totalsegmentator_ct_examples"
    (img,) = viewer.open(ct / "images" / "example_ct.nii.gz", plugin="seg-studio")
    img.contrast_limits = (-160, 240)
    viewer.dims.order = (1, 0, 2)  # coronal, 3 mm isotropic
    viewer.scene.camera.orientation2d = ("up", "right")  # superior at the top, as radiologists look at it
    viewer.dims.set_point(1, img.translate[1] + img.scale[1] * 50)
    shot(viewer, "io_napari_nifti_ct.png")
    viewer.close()

    # A real CT DICOM series (TotalSegmentator's test files, Apache-2.0) with its organ labels as NIfTI;
    # the TCIA series are not pictured: their terms do not clearly allow redistribution.
    viewer = napari.Viewer(title="seg_studio: DICOM folder", show=True)
    (series,) = viewer.open(ct / "dicom" / "example_ct_dicom", plugin="seg-studio")
    (organs,) = viewer.open(ct / "labels" / "example_ct_dicom.nii.gz", plugin="seg-studio")
    series.contrast_limits = (-160, 240)
    z = int(np.argmax((np.asarray(organs.data) > 0).reshape(organs.data.shape[0], -1).sum(1)))
    viewer.dims.set_point(0, series.translate[0] + series.scale[0] * z)
    shot(viewer, "io_napari_dicom_axial.png")
    viewer.dims.order = (1, 0, 2)  # coronal: 20 slices 2 mm apart vs 0.977 mm pixels
    viewer.scene.camera.orientation2d = ("up", "right")
    viewer.dims.set_point(1, series.translate[1] + series.scale[1] * 256)
    shot(viewer, "io_napari_dicom_coronal.png")
    viewer.close()


if __name__ == "__main__":
    main()
