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
