"""Correct: the class list, the clean-up helpers Slicer/ITK-SNAP users expect, and saving.

Painting, filling and erasing are napari's own Labels tools; clicking a class here selects it as
the paint label. Each helper (remove small islands, fill holes, keep the largest component per
class) rewrites the mask as ONE undoable step. Saving writes the labels in the scan's geometry
through the atomic writer and never over the scan itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import layers as L


def _swatch(color: tuple[int, int, int]) -> QIcon:
    pm = QPixmap(14, 14)
    pm.fill(QColor(*[int(c) for c in color]))
    return QIcon(pm)


class CorrectSection(QGroupBox):
    """Class list + clean-up helpers + Save labels + the autosave restore offer."""

    #: emitted with the saved path
    saved = Signal(object)

    def __init__(
        self,
        viewer: Any,
        scan_layer: Callable[[], Any],
        mask_layer: Callable[[], Any],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__("Correct", parent)
        self.viewer = viewer
        self._scan_layer = scan_layer
        self._mask_layer = mask_layer
        #: who made the mask, for a DICOM SEG's algorithm identification (set by the panel)
        self.algorithm: Callable[[], Any] | None = None

        self.classes = QListWidget()
        self.classes.setMaximumHeight(110)
        self.classes.setToolTip("click a class to paint it (napari's brush, fill and eraser act on the mask)")
        self.min_size = QSpinBox()
        self.min_size.setRange(1, 10_000_000)
        self.min_size.setValue(64)
        self.min_size.setSuffix(" vox")
        self.islands_button = QPushButton("Remove small islands")
        self.holes_button = QPushButton("Fill holes")
        self.largest_button = QPushButton("Keep largest per class")
        self.save_button = QPushButton("Save labels...")
        self.autosave_label = QLabel("")
        self.autosave_label.setWordWrap(True)
        self.restore_button = QPushButton("Restore autosaved labels")
        self.discard_button = QPushButton("Discard")
        self.restore_button.setVisible(False)
        self.discard_button.setVisible(False)

        lay = QVBoxLayout(self)
        lay.addWidget(self.classes)
        grid = QGridLayout()
        grid.addWidget(self.islands_button, 0, 0)
        grid.addWidget(self.min_size, 0, 1)
        grid.addWidget(self.holes_button, 1, 0)
        grid.addWidget(self.largest_button, 1, 1)
        lay.addLayout(grid)
        lay.addWidget(self.save_button)
        lay.addWidget(self.autosave_label)
        row = QHBoxLayout()
        row.addWidget(self.restore_button, 2)
        row.addWidget(self.discard_button, 1)
        lay.addLayout(row)

        self.classes.itemClicked.connect(self._class_clicked)
        self.islands_button.clicked.connect(lambda: self._guard(lambda: self.remove_small_islands()))
        self.holes_button.clicked.connect(lambda: self._guard(self.fill_holes))
        self.largest_button.clicked.connect(lambda: self._guard(self.keep_largest))
        self.save_button.clicked.connect(self._save_dialog)

    # --- class list ----------------------------------------------------------------------------------
    def refresh_classes(self) -> None:
        """Show the classes of the current mask (name and colour)."""
        self.classes.clear()
        mask = self._mask_layer()
        if mask is None:
            return
        for c in L.layer_classes(mask):
            if int(c.value) == 0:
                continue
            item = QListWidgetItem(_swatch(c.color), f"{int(c.value)}: {c.name}")
            item.setData(Qt.ItemDataRole.UserRole, int(c.value))
            self.classes.addItem(item)

    def select_class(self, value: int) -> None:
        """Paint with class ``value`` on the mask (napari's brush)."""
        mask = self._require_mask()
        mask.selected_label = int(value)
        L.restore_tool_overlays(mask)  # a mask that just landed may still wait for its brush overlay
        mask.mode = "paint"
        self.viewer.layers.selection.active = mask

    def _class_clicked(self, item: QListWidgetItem) -> None:
        self.select_class(int(item.data(Qt.ItemDataRole.UserRole)))

    # --- helpers (one undo step each) ------------------------------------------------------------------
    def _require_mask(self) -> Any:
        mask = self._mask_layer()
        if mask is None:
            raise ValueError("no mask to correct: run Predict or open a label map first")
        return mask

    def _apply(self, fn: Callable[[np.ndarray], np.ndarray]) -> int:
        mask = self._require_mask()
        old = np.asarray(mask.data)
        return L.replace_labels(mask, np.asarray(fn(old.copy()), dtype=old.dtype))

    def remove_small_islands(self, min_size: int | None = None) -> int:
        """Drop connected pieces smaller than ``min_size`` voxels; returns the voxels changed."""
        from ..core.postprocess import remove_small_islands

        size = int(min_size if min_size is not None else self.min_size.value())
        return self._apply(lambda a: remove_small_islands(a, size))

    def fill_holes(self) -> int:
        from ..core.postprocess import fill_holes

        return self._apply(lambda a: fill_holes(a))

    def keep_largest(self) -> int:
        from ..core.postprocess import keep_largest_component

        return self._apply(lambda a: keep_largest_component(a))

    def _guard(self, action: Callable[[], int]) -> None:
        from napari.utils.notifications import show_error, show_info

        from .workers import user_message

        try:
            n = action()
        except Exception as exc:  # noqa: BLE001 - the UI edge: one line, no crash
            show_error(user_message(exc) if not isinstance(exc, ValueError) else str(exc))
            return
        show_info(f"{n} voxel(s) changed (Ctrl+Z on the mask undoes it)")

    # --- saving ----------------------------------------------------------------------------------------
    def save_labels(self, path: Path) -> Path:
        """Write the mask in the scan's geometry (atomic; refuses to overwrite the scan).
        A ``.dcm`` path on a DICOM scan writes a DICOM SEG on its series."""
        from ..core import io as sio

        if Path(path).suffix.lower() in (".dcm", ".dicom"):
            out = self.prepare_seg(Path(path))()
        else:
            scan_layer = self._scan_layer()
            mask = self._require_mask()
            if scan_layer is None:
                raise ValueError("the scan of this mask is not open; its geometry is needed to save")
            scan = L.layer_volume(scan_layer)
            vol = L.labels_volume(mask, scan)
            protected = [scan.source] if scan.source else []
            out = sio.write(vol, Path(path), protected=protected)
        self.saved.emit(out)
        return out

    def prepare_seg(self, path: Path) -> Callable[[], Path]:
        """Snapshot the mask (main thread) and return the call that writes it as a DICOM SEG on the
        scan's series (safe to run in a worker). The algorithm is the panel's current checkpoint."""
        from ..core.io.dicom_seg import write_seg

        scan_layer = self._scan_layer()
        mask = self._require_mask()
        if scan_layer is None:
            raise ValueError("the scan of this mask is not open; its series is needed for a DICOM SEG")
        scan = L.layer_volume(scan_layer)
        if not str(scan.meta.get("format", "")).startswith("DICOM") or scan.source is None:
            raise ValueError("a DICOM SEG needs a scan opened from a DICOM series; save as .nii.gz instead")
        vol = L.labels_volume(mask, scan)
        vol.array = np.array(vol.array, copy=True)  # the user may paint on while it is written
        algorithm = self.algorithm() if self.algorithm else None
        series, uid = Path(scan.source), scan.meta.get("series_uid")
        return lambda: write_seg(vol, series, path, algorithm, series_uid=uid or None)

    def _save_dialog(self) -> None:
        from napari.utils.notifications import show_error, show_info

        from .workers import user_message

        scan_layer = self._scan_layer()
        start = ""
        if scan_layer is not None:
            src = L._md(scan_layer).get("source")
            if src:
                p = Path(src)
                name = p.name.split(".")[0] if p.is_file() else p.name
                start = str((p.parent if p.is_file() else p.parent) / f"{name}_labels.nii.gz")
        filters = "Label maps (*.nii.gz *.nii *.nrrd *.mha *.png *.tif)"
        if scan_layer is not None and str(L._md(scan_layer).get("meta", {}).get("format", "")).startswith(
            "DICOM"
        ):
            filters = "DICOM SEG (*.dcm);;" + filters  # a DICOM scan: the SEG goes back to its PACS
            start = start.replace("_labels.nii.gz", "_seg.dcm")
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", start, filters)
        if not path:
            return
        try:
            out = self.save_labels(Path(path))
        except Exception as exc:  # noqa: BLE001 - the UI edge
            show_error(str(exc) if isinstance(exc, ValueError) else user_message(exc))
            return
        show_info(f"labels saved to {out}")
