"""The panel and a model's domain, on real scans from ../shared/data in a real napari viewer: the default
model is the one whose domain fits the scan; a scan no model fits says so and offers the untrained
variants; a chosen model that does not fit, or an unusual result, shows a banner that stays."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("napari")

from seg_studio.core.samples import make_sample_2d  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
MODELS = REPO / "resources" / "models"
MSD_EXTRA = DATA / "msd_task04_hippocampus_extra/images/hippocampus_001.nii.gz"
TCIA = DATA / "tcia_brain_tumor_progression_dicom/images/PGBM-003_19950329"
ISBI = DATA / "isbi2012_em_membrane/images/18.png"
JSRT = DATA / "jsrt_chest_xray_heart_lungs/images/JPCLN002.png"
SUNNYBROOK = DATA / "sunnybrook_cardiac_mri/dicom/SCD0000201/100.dcm"  # the held-back patient's
JOB_TIMEOUT_MS = 180_000

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")


@pytest.fixture(autouse=True)
def _app_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("SEG_STUDIO_HOME", str(home))
    return home


@pytest.fixture
def panel_on(docked_panel):  # noqa: ANN001, ANN201
    return docked_panel


def chosen(panel) -> str | None:
    choice = panel.models.current_choice()
    return None if choice is None else (choice.checkpoint.stem if choice.checkpoint else choice.label)


@pytest.mark.parametrize(
    "scan, model",
    [(MSD_EXTRA, "hippocampus_unet_245"), (ISBI, "isbi2012_unet"), (SUNNYBROOK, "sunnybrook_lv")],
    ids=["msd_crop", "isbi_slice", "sunnybrook_dicom"],
)
def test_the_default_model_is_the_one_made_for_the_scan(scan, model, panel_on) -> None:
    viewer, panel = panel_on(scan)
    assert chosen(panel) == model
    assert panel.domain_warnings() == []  # it fits: no banner
    card = panel.models.card.text()
    for words in ("validation Dice", "expects", "terms:", "data:", "trained on:"):
        assert words in card, words


def test_a_scan_no_model_fits_says_so_and_offers_untrained_variants(panel_on, qtbot, tmp_path) -> None:
    viewer, panel = panel_on(JSRT)
    assert chosen(panel) is None and panel.models.no_fit
    lines = panel.domain_warnings()
    assert lines[0] == "no model fits this scan" and len(lines) > 1
    assert panel.banner.offer.isVisibleTo(panel.banner) and "unet" in [
        panel.banner.variants.itemText(i) for i in range(panel.banner.variants.count())
    ]
    assert not panel.predict()  # nothing runs a demo model behind the user's back
    panel.banner.variants.setCurrentText("unet")
    panel.banner.use_untrained.click()
    choice = panel.models.current_choice()
    assert choice.untrained and choice.variant == "unet" and choice.config == {"features": 8}
    assert panel.domain_warnings() == []
    # a scan that fits, opened afterwards, keeps the user's choice: it was theirs
    path = tmp_path / "sample.nii.gz"
    from seg_studio.core import io

    io.write(make_sample_2d(seed=0)[0], path)
    viewer.open(str(path), plugin="seg-studio")
    assert panel.models.current_choice().untrained


def test_a_model_that_does_not_fit_shows_a_banner_that_stays(panel_on, qtbot) -> None:
    viewer, panel = panel_on(TCIA)
    assert chosen(panel) is None  # a whole head: neither hippocampus model (crops) nor any other fits
    panel.select_checkpoint(MODELS / "hippocampus_unet.segmodel")
    lines = panel.domain_warnings()
    assert panel.banner.isVisible()
    assert any("192 x 220 x 143 mm" in ln and "32-42 x 40-58 x 26-43 mm" in ln for ln in lines)
    assert "not made for this scan" in panel.banner.text.text()
    qtbot.wait(3000)  # not a toast: still there
    assert panel.banner.isVisible() and panel.domain_warnings() == lines


def test_an_unusual_result_adds_its_warnings_after_predict(panel_on, qtbot) -> None:
    """The EM membrane model on a 3D brain MRI crop: slice by slice, and a result unlike its validation."""
    viewer, panel = panel_on(MSD_EXTRA)
    panel.select_checkpoint(MODELS / "isbi2012_unet.segmodel")
    before = panel.domain_warnings()
    assert any("slice by slice" in ln for ln in before)
    with qtbot.waitSignal(panel.run.finished, timeout=JOB_TIMEOUT_MS) as blocker:
        assert panel.predict()
    assert blocker.args[0] == "done", panel.run.last_error
    after = panel.domain_warnings()
    assert len(after) > len(before) and after[: len(before)] == before
    assert any("membrane" in ln or "unsure" in ln for ln in after[len(before) :])
    assert "check this result" in panel.banner.text.text()


HC18 = DATA / "hc18_fetal_head_ultrasound"
HC18_HELD_BACK = "063_2HC"  # held back from hc18_fetal_head's training


def test_an_ultrasound_png_given_its_pixel_size_gets_the_hc18_model_and_its_head_circumference(
    panel_on, qtbot
) -> None:
    """The PNG stores no pixel size: no model fits and the Measure tab asks for it; given the CSV's,
    hc18_fetal_head becomes the default, and Predict gives the head with HC, BPD and OFD in mm."""
    from seg_studio.core.datasets import hc18

    ref = hc18.read_reference(HC18)[HC18_HELD_BACK]
    viewer, panel = panel_on(HC18 / "images" / f"{HC18_HELD_BACK}.png")
    ms = panel.measure_section
    assert chosen(panel) is None and not ms.pixel_size_row.isHidden()
    assert any("stores no pixel size" in ln for ln in panel.domain_warnings())
    ms.pixel_size.setValue(ref.pixel_mm)
    ms.pixel_size_button.click()
    assert chosen(panel) == "hc18_fetal_head" and panel.domain_warnings() == []
    assert ms.pixel_size_row.isHidden()
    assert panel.predict()
    qtbot.waitUntil(lambda: panel.mask_layer() is not None and not panel.run.busy, timeout=JOB_TIMEOUT_MS)
    ms.measure_now()
    qtbot.waitUntil(lambda: ms.report is not None and not ms.busy, timeout=JOB_TIMEOUT_MS)
    (head,) = ms.report.classes
    assert head.name == "head" and head.size_unit == "mm²"
    assert abs(head.extras["HC (mm)"] - ref.hc_mm) < 2.5, (head.extras, ref.hc_mm)
    columns = [ms.table.horizontalHeaderItem(i).text() for i in range(ms.table.columnCount())]
    assert {"HC (mm)", "BPD (mm)", "OFD (mm)"} <= set(columns)
    hc_cell = ms.table.item(0, columns.index("HC (mm)")).text()
    assert float(hc_cell) == pytest.approx(head.extras["HC (mm)"], abs=0.06)
