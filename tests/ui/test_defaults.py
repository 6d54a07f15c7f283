"""One default per setting: the panel starts where the CLI does (core/defaults.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")


def test_the_panel_and_the_cli_share_the_overlap_default(make_napari_viewer, tmp_path, monkeypatch) -> None:
    from seg_studio.cli import build_parser
    from seg_studio.core.defaults import OVERLAP
    from seg_studio.core.inference import PredictOptions
    from seg_studio.ui.model_section import ModelSection

    monkeypatch.setenv("SEG_STUDIO_HOME", str(tmp_path))
    args = build_parser().parse_args(["predict", "x.nii.gz", "--model", "m.segmodel", "--out", "y.nii.gz"])
    section = ModelSection()
    assert section.predict_options()["overlap"] == args.overlap == PredictOptions().overlap == OVERLAP
    section.deleteLater()


def test_attention_maps_are_offered_only_for_models_with_gates(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """A plain U-Net has no gates: the box is not offered and predicting says nothing about it (it
    popped up "unet has no attention gates" on every predict); an Attention U-Net gets its maps."""
    from napari.utils.notifications import notification_manager

    from seg_studio.core import io
    from seg_studio.core.samples import make_sample_2d
    from seg_studio.ui.model_section import bundled_model_dirs
    from seg_studio.ui.panel import SegStudioPanel

    monkeypatch.setenv("SEG_STUDIO_HOME", str(tmp_path / "home"))
    image, _ = make_sample_2d()
    scan = io.write(image, tmp_path / "case" / "scan2d.nii.gz")
    viewer = make_napari_viewer(show=True)
    panel = SegStudioPanel(viewer)
    qtbot.waitUntil(lambda: bool(panel.models.variants()), timeout=60_000)
    qtbot.waitUntil(panel.warmed_up, timeout=60_000)
    viewer.open(str(scan), plugin="seg-studio")
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        plain = next(d / "demo2d_unet.segmodel" for d in bundled_model_dirs())
        panel.select_checkpoint(plain)
        assert panel.models.current_choice().variant == "unet"
        assert panel.models.want_attention.isHidden() and not panel.models.predict_options()["attention"]
        with qtbot.waitSignal(panel.run.finished, timeout=120_000) as done:
            assert panel.predict()
        assert done.args == ["done"], panel.run.last_error
        assert not any("attention" in str(n.message) for n in seen), [str(n.message) for n in seen]
        gated = next(d / "isbi2012_attention_unet.segmodel" for d in bundled_model_dirs())
        panel.select_checkpoint(gated)
        assert not panel.models.want_attention.isHidden() and panel.models.predict_options()["attention"]
        panel.models.select_variant("attention_unet", untrained=True)
        assert not panel.models.want_attention.isHidden()
        panel.models.select_variant("unet", untrained=True)
        assert panel.models.want_attention.isHidden()
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
        panel.shutdown()
