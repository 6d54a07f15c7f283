"""The npe2 manifest: valid, every python_name imports, and the panel docks from the Plugins menu."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

npe2 = pytest.importorskip("npe2")


def _manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_distribution("seg-studio")


def test_manifest_is_valid_and_has_every_contribution_kind():
    pm = _manifest()
    pm.validate_imports()  # raises if a python_name does not import
    c = pm.contributions
    assert c.readers and c.writers and c.widgets and c.sample_data
    assert {s.key for s in c.sample_data} >= {"sample-2d", "sample-3d"}


@pytest.mark.parametrize("cmd", [c.python_name for c in _manifest().contributions.commands or []])
def test_every_python_name_imports(cmd):
    module, _, attr = cmd.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_npe2_validate_cli_passes():
    import subprocess
    import sys
    from pathlib import Path

    import seg_studio

    yaml = Path(seg_studio.__file__).with_name("napari.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(yaml)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_panel_docks_from_the_plugins_menu(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    monkeypatch.setenv("SEG_STUDIO_HOME", str(tmp_path))
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("seg-studio", "seg_studio")
    from seg_studio.ui.panel import SegStudioPanel

    assert isinstance(widget, SegStudioPanel)
    viewer.add_image(np.zeros((8, 8), "float32"), name="probe")
    assert widget.scan_layer().name == "probe"
    qtbot.waitUntil(lambda: bool(widget.models.variants()), timeout=60_000)
    assert "unet" in widget.models.variants()
