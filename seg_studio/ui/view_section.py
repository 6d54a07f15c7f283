"""Look: window/level presets for CT and MR, and the 2D/3D view switch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtWidgets import QGridLayout, QGroupBox, QPushButton, QWidget

#: (window, level) in Hounsfield units, as radiology workstations define them.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}
#: MR has no absolute scale: a percentile window of the voxels.
MR_PERCENTILES = (1.0, 99.5)
PRESETS = (*CT_PRESETS, "MR (percentile)")


def window_limits(preset: str, data: np.ndarray) -> tuple[float, float]:
    """Contrast limits of ``preset`` for an image with voxels ``data``."""
    if preset in CT_PRESETS:
        width, level = CT_PRESETS[preset]
        return level - width / 2, level + width / 2
    if preset.startswith("MR"):
        sample = np.asarray(data).ravel()
        if sample.size > 2_000_000:  # a strided sample is plenty for percentiles
            sample = sample[:: sample.size // 1_000_000]
        lo, hi = np.percentile(sample, MR_PERCENTILES)
        return float(lo), float(max(hi, lo + 1e-6))
    raise ValueError(f"unknown window preset {preset!r}; choose one of {', '.join(PRESETS)}")


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
                f"CT window {CT_PRESETS[name][0]:g} / level {CT_PRESETS[name][1]:g} HU"
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
        lo, hi = window_limits(preset, layer.data)
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
