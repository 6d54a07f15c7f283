"""The Clicks section on real data: clicks on an MSD hippocampus held-back crop improve the mask, land as
one undo step each, and never change a voxel the user painted."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "msd_task04_hippocampus"
MODEL = REPO / "resources" / "models" / "hippocampus_clicks.segmodel"
CASE = "hippocampus_014"  # held back by the model's split

pytestmark = pytest.mark.skipif(
    not DATA.is_dir() or not MODEL.exists(), reason="needs ../shared/data and the model"
)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_clicks_improve_the_mask_as_one_undo_step_and_keep_painted_voxels(make_napari_viewer, qtbot) -> None:  # noqa: ANN001
    from seg_studio.core import io
    from seg_studio.core.interactive import next_click
    from seg_studio.ui.clicks_section import ClicksSection

    viewer = make_napari_viewer()
    viewer.open(str(DATA / "images" / f"{CASE}.nii.gz"), plugin="seg-studio")
    scan = viewer.layers[-1]
    truth = np.asarray(io.read(DATA / "labels" / f"{CASE}.nii.gz").array) == 1

    def mask_layer():  # noqa: ANN202
        return next((ly for ly in viewer.layers if ly.name.endswith("mask")), None)

    section = ClicksSection(viewer, lambda: scan, mask_layer)
    section.fill_models([MODEL.parent])
    section.model_combo.setCurrentIndex(section.model_combo.findData(str(MODEL)))
    section.value.setValue(1)

    def click(positive_voxel: tuple[bool, tuple[int, ...]]) -> None:
        before = section.last_step
        assert section.add_click(positive_voxel[1], positive_voxel[0])
        qtbot.waitUntil(lambda: section.last_step is not before and not section.job.running, timeout=180_000)

    click(next_click(np.zeros_like(truth), truth))  # the first click makes the mask
    mask = mask_layer()
    first = _dice(np.asarray(mask.data) == 1, truth)
    assert first > 0.5
    # the user paints one missed voxel as class 2: no click may change it
    missed = np.argwhere(truth & (np.asarray(mask.data) != 1))
    painted = tuple(int(v) for v in missed[0]) if len(missed) else (0, 0, 0)
    mask.data_setitem(tuple(np.array([v]) for v in painted), 2)
    for _ in range(2):
        click(next_click(np.asarray(mask.data) == 1, truth))
    assert int(np.asarray(mask.data)[painted]) == 2
    after = _dice(np.asarray(mask.data) == 1, truth)
    assert after > first and after > 0.8, (first, after)
    # one click = one undo step
    before_last = np.array(mask.data, copy=True)
    before_last[section.last_step.region] = section.last_step.before
    mask.undo()
    assert np.array_equal(np.asarray(mask.data), before_last)
    # a Ctrl+click through the mouse callback is a negative click
    points = section.points_layer(1)
    section.click_button.setChecked(True)
    far = np.argwhere(~truth)[0]
    event = SimpleNamespace(
        type="mouse_press",
        button=1,
        modifiers=("Control",),
        position=tuple(points.data_to_world(far.astype(float))),
    )
    section._on_mouse(points, event)
    qtbot.waitUntil(lambda: not section.job.running, timeout=180_000)
    assert section.clicks[-1].positive is False and section.clicks[-1].voxel == tuple(int(v) for v in far)
    assert len(points.data) == 4


def test_clicks_are_saved_beside_the_labels(make_napari_viewer, tmp_path: Path) -> None:  # noqa: ANN001
    from seg_studio.core.interactive import Click, read_clicks
    from seg_studio.ui.clicks_section import ClicksSection

    viewer = make_napari_viewer()
    section = ClicksSection(viewer, lambda: None, lambda: None)
    assert section.save_beside(tmp_path / "mask.nii.gz") is None
    section.clicks = [Click(1, True, (1, 2, 3)), Click(1, False, (4, 5, 6))]
    path = section.save_beside(tmp_path / "mask.nii.gz")
    assert path == tmp_path / "mask.clicks.json" and read_clicks(path) == section.clicks


def test_a_new_scan_of_the_same_name_gets_its_own_session() -> None:
    """The click session (the normalised scan) is keyed by the layer, not its name: a scan reopened or
    another one named alike must not be predicted with the first one's image."""
    from napari.layers import Image

    from seg_studio.ui.clicks_section import scan_id

    a, b = Image(np.zeros((8, 8)), name="scan"), Image(np.ones((8, 8)), name="scan")
    assert scan_id(a) != scan_id(b) and scan_id(a) == scan_id(a)


def test_a_scan_unlike_the_click_models_training_scans_keeps_a_note_in_view(make_napari_viewer) -> None:  # noqa: ANN001
    """Trust: the Clicks tab says so when the click model was not trained on scans like this one (a
    whole-head DICOM series for the hippocampus-crop model), and says nothing on a crop it was made for."""
    from seg_studio.ui.clicks_section import ClicksSection

    tcia = (
        REPO.parent
        / "shared"
        / "data"
        / "tcia_brain_tumor_progression_dicom"
        / "images"
        / "PGBM-003_19950329"
    )
    viewer = make_napari_viewer()
    viewer.open(str(DATA / "images" / f"{CASE}.nii.gz"), plugin="seg-studio")
    viewer.open(str(tcia), plugin="seg-studio")
    crop, head = viewer.layers[0], viewer.layers[1]
    current = [head]
    section = ClicksSection(viewer, lambda: current[0], lambda: None)
    section.fill_models([MODEL.parent])
    section.model_combo.setCurrentIndex(section.model_combo.findData(str(MODEL)))
    lines = section.check_fit()
    assert lines and section.fit_warnings() == lines and not section.fit_note.isHidden()
    assert any("field of view" in ln or "spacing" in ln for ln in lines)
    current[0] = crop
    assert section.check_fit() == [] and section.fit_note.isHidden()
