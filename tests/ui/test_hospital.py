"""The hospital round trip by clicking: PACS... finds and opens a series from a real Orthanc, Predict
segments it, the measurement table follows an edit, and the mask goes back to Orthanc as a DICOM SEG
that highdicom reads to the mask's voxels. Save labels... offers DICOM SEG for a DICOM scan."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from qtpy.QtCore import Qt  # noqa: E402

CASE = ("tcia_brain_tumor_progression_dicom", "images", "PGBM-008_19930610")
MODEL = Path(__file__).resolve().parents[2] / "seg_studio" / "resources" / "models" / "demo3d_unet.segmodel"
TIMEOUT_MS = 180_000


@pytest.fixture(autouse=True)
def _app_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("SEG_STUDIO_HOME", str(home))
    return home


@pytest.fixture
def panel(make_napari_viewer, qtbot):  # noqa: ANN001, ANN201
    from seg_studio.ui.panel import SegStudioPanel

    viewer = make_napari_viewer(show=True)
    p = SegStudioPanel(viewer)
    viewer.window.add_dock_widget(p, name="seg_studio", area="right")
    qtbot.waitUntil(lambda: bool(p.models.variants()), timeout=60_000)
    qtbot.waitUntil(p.warmed_up, timeout=60_000)
    yield p
    if p.pacs is not None:
        qtbot.waitUntil(lambda: not p.pacs.busy, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: not (p.measure_section.job and p.measure_section.job.running), timeout=TIMEOUT_MS)


def _series_uid(folder: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


def _click(qtbot, button) -> None:  # noqa: ANN001
    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_pacs_dialog_round_trip_with_measurements(
    panel, qtbot, orthanc, pacs_cache, data_dir, tmp_path
) -> None:  # noqa: ANN001
    src = data_dir.joinpath(*CASE)
    orthanc.store(sorted(src.glob("*.dcm")))
    series_uid = _series_uid(src)
    viewer = panel.viewer

    _click(qtbot, panel.pacs_button)
    dlg = panel.pacs
    dlg.url.setText(orthanc.dicomweb)
    _click(qtbot, dlg.find_button)
    qtbot.waitUntil(lambda: not dlg.busy and dlg.table.rowCount() > 0, timeout=TIMEOUT_MS)
    uids = [dlg.table.item(i, 5).text() for i in range(dlg.table.rowCount())]
    assert series_uid in uids and dlg.table.item(uids.index(series_uid), 2).text() == "MR"
    dlg.select_row(uids.index(series_uid))
    _click(qtbot, dlg.open_button)
    qtbot.waitUntil(lambda: not dlg.busy and len(viewer.layers) == 1, timeout=TIMEOUT_MS)
    assert (pacs_cache / series_uid / ".complete").is_file()
    assert panel.scan_layer().name == "MR T1post"  # not the UID of the cache folder it sits in

    panel.select_checkpoint(MODEL)
    _click(qtbot, panel.run.predict_button)
    qtbot.waitUntil(lambda: panel.mask_layer() is not None and not panel.run.busy, timeout=TIMEOUT_MS)
    mask = panel.mask_layer()
    ms = panel.measure_section
    qtbot.waitUntil(lambda: ms.report is not None and not ms.busy, timeout=TIMEOUT_MS)
    first = {c.value: c.voxels for c in ms.report.classes}
    assert first == {int(v): int((mask.data == v).sum()) for v in np.unique(mask.data) if v}
    assert ms.table.rowCount() == len(first)

    # an edit (a filled block of class 1) is followed by the table, with little time on the GUI thread
    before = ms.updates
    block = np.zeros(mask.data.shape, bool)
    block[5:8, 100:140, 100:140] = True
    mask.data_setitem(np.nonzero(block), 1)
    qtbot.waitUntil(lambda: ms.updates > before and not ms.busy, timeout=TIMEOUT_MS)
    assert ms.report.classes[0].voxels == int((np.asarray(mask.data) == 1).sum())
    assert ms.gui_seconds < 0.1

    def seg_series() -> dict[str, dict]:
        return {
            s["ID"]: s
            for s in orthanc.get_json("/series?expand")
            if s["MainDicomTags"].get("Modality") == "SEG"
        }

    earlier = seg_series()  # the Orthanc fixture is shared with the CLI round-trip tests
    _click(qtbot, dlg.send_button)
    qtbot.waitUntil(lambda: not dlg.busy, timeout=TIMEOUT_MS)
    assert "stored 1" in dlg.status.text(), dlg.status.text()
    segs = [s for sid, s in seg_series().items() if sid not in earlier]
    assert len(segs) == 1
    inst = segs[0]["Instances"][0]
    tags = orthanc.get_json(f"/instances/{inst}/tags?simplify")
    assert tags["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == series_uid
    seg_file = tmp_path / "from_orthanc.dcm"
    seg_file.write_bytes(orthanc._request(f"/instances/{inst}/file"))
    import highdicom as hd

    from seg_studio.ui import layers as L

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.segread(str(seg_file))
    uids_in_order = L.layer_volume(panel.scan_layer()).meta["sop_instance_uids"]
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids_in_order, combine_segments=True)
    assert np.array_equal(got, np.asarray(mask.data))
    alg = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (
        alg.AlgorithmName == "demo3d_unet" and seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    )
    assert not list((pacs_cache / "outgoing").glob("*.dcm"))  # the temp SEG is gone


def test_save_labels_offers_dicom_seg_for_a_dicom_scan(panel, qtbot, data_dir, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from qtpy.QtWidgets import QFileDialog

    from seg_studio.core import io

    src = data_dir.joinpath(*CASE)
    panel.viewer.open(str(src), plugin="seg-studio")
    scan = io.read(src)
    truth = io.read(data_dir / "tcia_brain_tumor_progression_dicom" / "labels" / CASE[-1]).array > 0
    panel.viewer.add_labels(
        truth.astype(np.uint8),
        name="tumour",
        scale=panel.scan_layer().scale,
        translate=panel.scan_layer().translate,
    )
    offered: list[str] = []
    out = tmp_path / "tumour_seg.dcm"

    def fake_dialog(parent, title, start, filters):  # noqa: ANN001, ANN202
        offered.append(filters)
        return str(out), filters.split(";;")[0]

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(fake_dialog))
    _click(qtbot, panel.correct.save_button)
    assert offered and offered[0].startswith("DICOM SEG (*.dcm)")
    back = io.read(out)
    assert back.meta["format"] == "DICOM SEG" and np.array_equal(back.array > 0, truth)
    assert back.same_geometry(scan, atol=1e-4)
    from seg_studio.core.io.dicom_seg import seg_summary

    # no prediction of the panel made this mask: the SEG names no algorithm and says so
    assert {s["algorithm_type"] for s in seg_summary(out)["segments"]} == {"MANUAL"}
