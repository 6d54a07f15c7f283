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
