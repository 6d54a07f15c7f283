"""The window a scan opens with in napari, and the CT presets' warning on other scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

PLUGIN = "seg-studio"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEG_STUDIO_HOME", str(tmp_path / "home"))


@pytest.mark.parametrize(
    ("rel", "expect"),
    [
        ("msd_task04_hippocampus/images/hippocampus_003.nii.gz", "percentile"),
        ("totalsegmentator_ct_examples/images/example_ct_sm.nii.gz", (-160.0, 240.0)),
        ("jsrt_chest_xray_heart_lungs/images/JPCLN002.png", (0.0, 255.0)),
        ("tcia_brain_tumor_progression_dicom/images/PGBM-003_19950329", (924.0 - 930.0, 924.0 + 930.0)),
    ],
)
def test_scans_open_with_the_window_of_their_modality(make_napari_viewer, data_dir, rel, expect) -> None:
    viewer = make_napari_viewer()
    (layer,) = viewer.open(data_dir / rel, plugin=PLUGIN)
    lo, hi = layer.contrast_limits
    if expect == "percentile":
        want = np.percentile(np.asarray(layer.data), (1.0, 99.5))
        np.testing.assert_allclose((lo, hi), want, rtol=1e-3)
        assert hi < 0.5 * float(np.max(layer.data))  # napari's min-max opened it dim
    else:
        np.testing.assert_allclose((lo, hi), expect)
    rlo, rhi = layer.contrast_limits_range
    assert rlo <= lo and hi <= rhi  # the slider can reach the window


def test_a_ct_preset_on_an_mr_warns_and_on_a_ct_does_not(make_napari_viewer, data_dir, qtbot) -> None:
    from napari.utils.notifications import notification_manager

    from seg_studio.ui.panel import SegStudioPanel

    viewer = make_napari_viewer()
    panel = SegStudioPanel(viewer)
    qtbot.waitUntil(panel.warmed_up, timeout=60_000)
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer.open(data_dir / "msd_task04_hippocampus/images/hippocampus_003.nii.gz", plugin=PLUGIN)
        assert panel.apply_window("brain") == (0.0, 80.0)  # applied: the user asked for it...
        assert any("Hounsfield" in str(n.message) and "MR (percentile)" in str(n.message) for n in seen)
        seen.clear()
        viewer.open(data_dir / "totalsegmentator_ct_examples/images/example_ct_sm.nii.gz", plugin=PLUGIN)
        assert panel.scan_layer().name == "example_ct_sm"
        assert panel.apply_window("lung") == (-1350.0, 150.0)
        assert not any("Hounsfield" in str(n.message) for n in seen)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
        panel.shutdown()
