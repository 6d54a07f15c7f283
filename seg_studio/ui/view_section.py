"""Look: window/level presets for CT and MR, and the 2D/3D view switch.

The presets live in ``core.display``; a Hounsfield preset on a scan that is not a CT still applies
(the user asked for it) but says why the picture looks wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QGridLayout, QGroupBox, QPushButton, QWidget

from ..core.display import CT_PRESETS, MR_PERCENTILES, PRESETS, preset_fits, preset_window, scan_modality
from . import layers as L


class ViewSection(QGroupBox):
    """Buttons for the window presets and for 2D/3D."""

    def __init__(self, viewer: Any, scan_layer: Callable[[], Any], parent: QWidget | None = None) -> None:
        super().__init__("View", parent)
        self.viewer = viewer
        self._scan_layer = scan_layer
        grid = QGridLayout(self)
        self.buttons: dict[str, QPushButton] = {}
        for i, name in enumerate(PRESETS):
            b = QPushButton(name)
            b.setToolTip(
                f"CT only: window {CT_PRESETS[name][0]:g} / level {CT_PRESETS[name][1]:g} HU"
                if name in CT_PRESETS
                else f"{MR_PERCENTILES[0]:g}-{MR_PERCENTILES[1]:g} percentile of the scan"
            )
            b.clicked.connect(lambda _=False, n=name: self.apply_window(n))
            grid.addWidget(b, i // 3, i % 3)
            self.buttons[name] = b
        self.view_2d = QPushButton("2D view")
        self.view_3d = QPushButton("3D view")
        self.view_2d.clicked.connect(lambda: self.set_view(2))
        self.view_3d.clicked.connect(lambda: self.set_view(3))
        row = (len(PRESETS) + 2) // 3
        grid.addWidget(self.view_2d, row, 0)
        grid.addWidget(self.view_3d, row, 1)

    def apply_window(self, preset: str) -> tuple[float, float]:
        """Set the scan layer's contrast to ``preset``; returns the (low, high) limits."""
        layer = self._scan_layer()
        if layer is None:
            raise ValueError("open a scan first")
        lo, hi = preset_window(preset, layer.data)
        try:
            modality = scan_modality(L.layer_volume(layer))
        except ValueError:  # not 2D/3D: no modality to speak of
            modality = None
        if not preset_fits(preset, modality):
            from napari.utils.notifications import show_warning

            what = (
                f"an {modality}"
                if modality in ("MR", "X-ray")
                else (f"a {modality}" if modality else "not a CT")
            )
            show_warning(
                f"'{preset}' is a CT window in Hounsfield units; this scan is {what}, so it shows "
                "little: use 'MR (percentile)' for MR and other scans"
            )
        rlo, rhi = layer.contrast_limits_range
        if lo < rlo or hi > rhi:
            layer.contrast_limits_range = (min(lo, rlo), max(hi, rhi))
        layer.contrast_limits = (lo, hi)
        return lo, hi

    def set_view(self, ndisplay: int) -> None:
        """2 = slices, 3 = volume rendering (a 2D scan stays 2D)."""
        if ndisplay == 3 and self.viewer.dims.ndim < 3:
            from napari.utils.notifications import show_info

            show_info("this scan is 2D; the 3D view needs a volume")
            return
        self.viewer.dims.ndisplay = ndisplay
