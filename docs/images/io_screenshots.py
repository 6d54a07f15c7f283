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

    viewer = napari.Viewer(title="seg_studio: DICOM folder", show=True)
    tcia = DATA / "tcia_brain_tumor_progression_dicom"
    (t1,) = viewer.open(tcia / "images" / "PGBM-003_19950329", plugin="seg-studio")
    (mask,) = viewer.open(tcia / "labels" / "PGBM-003_19950329", plugin="seg-studio")
    z = int(np.argmax(mask.data.reshape(mask.data.shape[0], -1).sum(1)))
    viewer.dims.set_point(0, t1.translate[0] + t1.scale[0] * z)
    shot(viewer, "io_napari_dicom_axial.png")
    ys = np.nonzero(mask.data.sum(axis=(0, 2)))[0]
    viewer.dims.order = (1, 0, 2)  # coronal: 22 slices 6.5 mm apart vs 0.6875 mm pixels
    viewer.scene.camera.orientation2d = ("up", "right")
    viewer.dims.set_point(1, t1.translate[1] + t1.scale[1] * int(np.median(ys)))
    shot(viewer, "io_napari_dicom_coronal.png")
    viewer.close()


if __name__ == "__main__":
    main()
