"""The correction loop in the panel, on real scans: where to check first, and the next scan of the series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from seg_studio.core import checkpoint  # noqa: E402
from seg_studio.core import io as sio  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "seg_studio" / "resources" / "models"
JOB_TIMEOUT_MS = 180_000


@pytest.fixture(autouse=True)
def _app_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("SEG_STUDIO_HOME", str(home))
    return home


@pytest.fixture
def make_panel(docked_panel):  # noqa: ANN001, ANN201
    return docked_panel


def predict_and_rank(panel, qtbot) -> None:
    with qtbot.waitSignal(panel.review.ready, timeout=JOB_TIMEOUT_MS):
        with qtbot.waitSignal(panel.run.finished, timeout=JOB_TIMEOUT_MS) as blocker:
            assert panel.predict()
        assert blocker.args == ["done"], panel.run.last_error


def core_order(scan: Path, model_path: Path):
    from seg_studio.core.inference import PredictOptions, predict
    from seg_studio.core.review import review_order

    model, meta = checkpoint.load(model_path)
    pred = predict(sio.read(scan), model, meta, PredictOptions(device="cpu", probabilities=True))
    return review_order(pred.probabilities)


def test_next_slice_to_check_jumps_to_the_most_unsure_slice_of_a_real_mri(
    data_dir, tmp_path, make_panel, qtbot
):
    scan = data_dir / "msd_task04_hippocampus" / "images" / "hippocampus_014.nii.gz"
    model = MODELS / "hippocampus_unet.segmodel"
    viewer, panel = make_panel(scan)
    panel.open_checkpoint(model)
    predict_and_rank(panel, qtbot)
    review = panel.review
    want = core_order(scan, model)
    assert [it.index for it in review.items[:3]] == [it.index for it in want[:3]]
    assert f"slice {want[0].index}" in review.label.text() and review.jump_button.isEnabled()
    layer = panel.scan_layer()
    for k in range(2):
        shown = review.jump_next()
        assert shown.index == want[k].index
        data_point = layer.world_to_data(viewer.dims.point[-3:])
        assert round(data_point[0]) == want[k].index  # the viewer shows that slice
    assert f"slice {want[2].index}" in review.label.text()  # and says which one is next


def test_next_region_to_check_centres_the_most_unsure_region_of_a_real_xray(
    data_dir, tmp_path, make_panel, qtbot
):
    scan = data_dir / "jsrt_chest_xray_heart_lungs" / "images" / "JPCNN013.png"
    model = MODELS / "isbi2012_unet.segmodel"  # another domain: unsure in many places, which is the point
    viewer, panel = make_panel(scan)
    panel.open_checkpoint(model)
    predict_and_rank(panel, qtbot)
    want = core_order(scan, model)
    assert len(panel.review.items) == 16 and panel.review.items[0].bounds == want[0].bounds
    viewer.reset_view()
    camera = viewer.scene.camera
    zoom = camera.zoom
    shown = panel.review.jump_next()
    (y0, y1), (x0, x1) = shown.bounds
    layer = panel.scan_layer()
    centre = layer.world_to_data(camera.center[-2:])
    assert y0 <= centre[0] < y1 and x0 <= centre[1] < x1
    assert camera.zoom > 2 * zoom  # zoomed in on a region a quarter of the image wide


def test_after_a_kept_finetune_the_next_scan_is_one_click_away_and_the_chart_records_the_effort(
    data_dir, tmp_path, make_panel, qtbot
):
    """Three real chest X-rays in a folder; start from an untrained U-Net, correct the first (lungs and
    heart as one foreground), fine-tune, then Next scan: the second opens, predicted by the child."""
    folder = tmp_path / "series"
    folder.mkdir()
    names = ["JPCNN013", "JPCNN020", "JPCNN025"]
    jsrt = data_dir / "jsrt_chest_xray_heart_lungs"
    for n in names:
        shutil.copy(jsrt / "images" / f"{n}.png", folder / f"{n}.png")
    viewer, panel = make_panel(folder / f"{names[0]}.png")
    panel.select_variant("unet", untrained=True)
    assert panel.series.next_path() == folder / f"{names[1]}.png"
    with qtbot.waitSignal(panel.run.finished, timeout=JOB_TIMEOUT_MS):
        assert panel.predict()
    mask = panel.mask_layer()
    predicted = np.array(mask.data, copy=True)
    truth = (np.asarray(sio.read(jsrt / "labels" / f"{names[0]}.png").array) > 0).astype(mask.data.dtype)
    idx = np.nonzero(truth != predicted)
    with mask.block_history():
        mask.data_setitem(idx, truth[idx])
    with qtbot.waitSignal(panel.finetune_section.finished, timeout=JOB_TIMEOUT_MS) as blocker:
        assert panel.finetune(budget_s=40, only_changed=False)
    assert blocker.args == ["done"], panel.finetune_section.last_error
    result = panel.finetune_section.last_result

    rec = panel.series.records[-1]
    assert rec.corrected == int((truth != predicted).sum()) and rec.foreground == int(truth.sum())
    from seg_studio.core.metrics import dice

    assert rec.dice == pytest.approx(dice(predicted, truth, classes=[1])[1], abs=1e-6)
    assert panel.series.chart.records == [rec] and rec.kept == result.better
    assert "Dice" in panel.series.status.text()

    first_scan = panel.scan_layer()
    with qtbot.waitSignal(panel.run.finished, timeout=JOB_TIMEOUT_MS) as blocker:
        assert panel.series.next_scan()
    assert blocker.args == ["done"], panel.run.last_error
    assert panel.scan_layer().name == names[1] and not first_scan.visible
    assert panel.mask_layer() is not mask and panel.mask_layer().data.shape == truth.shape
    np.testing.assert_array_equal(mask.data, truth)  # the corrected mask of scan 1 is kept as it was
    if result.better:  # a loaded machine can end the budget first: then the parent stays selected
        assert panel.models.current_choice().checkpoint == Path(result.path).resolve()
    assert panel.series.next_path() == folder / f"{names[2]}.png"


def write_mr_series(nifti: Path, out: Path, description: str) -> Path:
    """A real MSD hippocampus MRI as a DICOM MR series (SimpleITK, one int16 slice per file, its
    geometry in the position and orientation tags), as a scanner's export folder holds it."""
    import SimpleITK as sitk
    from pydicom.uid import generate_uid

    img = sitk.Cast(sitk.ReadImage(str(nifti)), sitk.sitkInt16)
    out.mkdir(parents=True)
    series, study, d = generate_uid(), generate_uid(), img.GetDirection()
    orient = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(img.GetDepth()):
        sl = img[:, :, z]
        pos = "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, z)))
        tags = {"0008|0060": "MR", "0020|000e": series, "0020|000d": study, "0008|103e": description,
                "0010|0020": "HIPPO", "0010|0010": "HIPPO", "0020|0037": orient, "0020|0032": pos,
                "0020|0013": str(z + 1), "0020|0011": "1", "0008|0018": generate_uid(),
                "0018|0050": f"{img.GetSpacing()[2]:.6f}"}  # fmt: skip
        for k, v in tags.items():
            sl.SetMetaData(k, v)
        writer.SetFileName(str(out / f"{z:03d}.dcm"))
        writer.Execute(sl)
    return out


@pytest.mark.slow  # a real fine-tune in the panel (30-60 s): the locked suite runs it, the plain-env leg skips it
def test_next_scan_opens_the_next_dicom_series_of_the_folder_and_predicts_it_with_the_kept_model(
    data_dir, tmp_path, make_panel, qtbot
):
    """A folder of three DICOM MR series (real hippocampus MRIs written as series): open the first, predict
    with the shipped hippocampus U-Net, correct it to the truth, fine-tune; Next scan
    opens the second *series* (not the next slice file) and predicts it with the model now selected."""
    from seg_studio.core.inference import PredictOptions, predict
    from seg_studio.core.metrics import dice

    msd = data_dir / "msd_task04_hippocampus"
    folder = tmp_path / "exports"
    cases = ["hippocampus_014", "hippocampus_015", "hippocampus_044"]
    series = [
        write_mr_series(msd / "images" / f"{c}.nii.gz", folder / f"{k + 1}_{c}", f"T1 {c}")
        for k, c in enumerate(cases)
    ]
    viewer, panel = make_panel(series[0])
    panel.open_checkpoint(MODELS / "hippocampus_unet.segmodel")
    assert panel.series.next_path() == series[1]
    assert panel.series.next_button.text() == f"Next scan: {series[1].name}"
    with qtbot.waitSignal(panel.review.ready, timeout=JOB_TIMEOUT_MS):  # ranked, as a user sees it
        with qtbot.waitSignal(panel.run.finished, timeout=JOB_TIMEOUT_MS) as blocker:
            assert panel.predict()
    assert blocker.args == ["done"], panel.run.last_error
    mask = panel.mask_layer()
    predicted = np.array(mask.data, copy=True)
    truth = np.asarray(sio.read(msd / "labels" / f"{cases[0]}.nii.gz").array).astype(mask.data.dtype)
    assert truth.shape == predicted.shape  # the series reads in the NIfTI's voxel order
    idx = np.nonzero(truth != predicted)
    with mask.block_history():
        mask.data_setitem(idx, truth[idx])
    with qtbot.waitSignal(panel.finetune_section.finished, timeout=JOB_TIMEOUT_MS) as blocker:
        assert panel.finetune(budget_s=60, only_changed=False)
    assert blocker.args == ["done"], panel.finetune_section.last_error
    result = panel.finetune_section.last_result
    rec = panel.series.records[-1]
    assert rec.corrected == len(idx[0]) and rec.kept == result.better
    kept = "the fine-tuned model is selected" if result.better else "the model stays"
    assert kept in panel.series.status.text()

    first_scan = panel.scan_layer()
    with qtbot.waitSignal(panel.run.finished, timeout=JOB_TIMEOUT_MS) as blocker:
        assert panel.series.next_scan()
    assert blocker.args == ["done"], panel.run.last_error
    second = panel.scan_layer()
    assert second is not first_scan and not first_scan.visible and second.name.startswith(series[1].name)
    np.testing.assert_array_equal(mask.data, truth)  # scan 1's corrected mask is kept as it was
    used = panel.models.current_choice().checkpoint
    # a loaded machine can end the budget first: then the parent stays selected (and the status says so)
    assert used == Path(result.path if result.better else result.parent).resolve()
    model, meta = checkpoint.load(used)
    want = predict(sio.read(series[1]), model, meta, PredictOptions(device="cpu")).labels.array
    got = np.asarray(panel.mask_layer().data)
    assert got.shape == want.shape
    assert np.mean(list(dice(got, np.asarray(want), classes=[1, 2]).values())) >= 0.98
    assert panel.series.next_path() == series[2]
