"""Fixtures shared by the UI tests (napari's ``make_napari_viewer`` and pytest-qt's ``qtbot``)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: cold imports and the warm-up job on a loaded 2-core machine
STARTUP_TIMEOUT_MS = 180_000


@pytest.fixture
def docked_panel(make_napari_viewer, qtbot):  # noqa: ANN001, ANN201
    """``make(scan=None) -> (viewer, panel)``: a shown viewer with the panel docked, the models probed
    and the start-up warm-up done (it must not outlive the viewer the fixture tears down), then the
    scan opened through our reader."""

    def make(scan: Path | None = None):  # noqa: ANN202
        from seg_studio.ui.panel import SegStudioPanel

        viewer = make_napari_viewer(show=True)
        panel = SegStudioPanel(viewer)
        viewer.window.add_dock_widget(panel, name="seg_studio", area="right")
        qtbot.waitUntil(lambda: bool(panel.models.variants()), timeout=STARTUP_TIMEOUT_MS)
        qtbot.waitUntil(panel.warmed_up, timeout=STARTUP_TIMEOUT_MS)
        if scan is not None:
            viewer.open(str(scan), plugin="seg-studio")
        return viewer, panel

    return make
