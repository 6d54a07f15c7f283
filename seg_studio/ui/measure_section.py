"""Measurements: a per-class table (volume, extent, pieces, intensities) that follows the mask as it is edited.

Every paint, fill or clean-up restarts a short timer; when it fires ``core.measure`` runs in a worker
on the layer's own array (the GUI thread only fills the table). Edits that arrive while it runs
are measured right after, so the table always ends on the mask as it is.
Rows that biometry registers (``core.measure.register_2d_measure``, e.g. a head circumference)
appear as extra columns. A picture that stores no pixel size (a PNG) is measured in pixels until the
user gives its pixel size here (the row shows only then); the scan then carries it for predicting too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import layers as L

log = logging.getLogger(__name__)

BASE_COLUMNS = ("Class", "Size", "Voxels", "Mean ± SD", "p5–p95", "Extent (mm)", "Pieces (largest)")
DEBOUNCE_MS = 150


def _measure_job(labels: Any, image: Any) -> Generator[Any, None, Any]:
    from ..core.measure import measure

    if False:  # pragma: no cover - a generator for Job
        yield None
    t0 = time.perf_counter()
    report = measure(labels, image)
    return report, time.perf_counter() - t0


def _edit_events(layer: Any) -> list[Any]:
    """The Labels events that say the mask changed (brush, fill, undo, a clean-up, a re-run)."""
    names = ("data", "paint", "set_data", "labels_update")
    return [getattr(layer.events, n) for n in names if hasattr(layer.events, n)]


class MeasureSection(QGroupBox):
    def __init__(
        self,
        viewer: Any,
        scan_layer: Callable[[], Any],
        mask_layer: Callable[[], Any],
        parent: QWidget | None = None,
        on_geometry: Callable[[], None] | None = None,
    ) -> None:
        super().__init__("Measurements", parent)
        self.viewer = viewer
        self._scan_layer = scan_layer
        self._mask_layer = mask_layer
        self.table = QTableWidget(0, len(BASE_COLUMNS))
        self.table.setHorizontalHeaderLabels(BASE_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMaximumHeight(160)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table)
        lay.addWidget(self.note)
        lay.addWidget(self._pixel_size_row())
        self._on_geometry = on_geometry
        self.report: Any = None
        self.job: Any = None
        self.updates = 0
        #: main-thread time of the last update (copy + table), and the worker's compute time (s)
        self.gui_seconds = 0.0
        self.compute_seconds = 0.0
        self._pending = False
        self._watched: Any = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._start)

    def _pixel_size_row(self) -> QWidget:
        row = QWidget()
        h = QHBoxLayout(row)
        h.setContentsMargins(0, 0, 0, 0)
        h.addWidget(QLabel("Pixel size"))
        self.pixel_size = QDoubleSpinBox()
        self.pixel_size.setDecimals(5)
        self.pixel_size.setRange(0.001, 100.0)
        self.pixel_size.setValue(0.1)
        self.pixel_size.setSuffix(" mm")
        self.pixel_size.setToolTip("the picture stores none: sizes are in pixels until it is given")
        h.addWidget(self.pixel_size)
        self.pixel_size_button = QPushButton("Set")
        self.pixel_size_button.clicked.connect(lambda: self.set_pixel_size(self.pixel_size.value()))
        h.addWidget(self.pixel_size_button)
        self.pixel_size_row = row
        row.setVisible(False)
        return row

    def set_pixel_size(self, pixel_mm: float) -> None:
        """The scan in view (and its mask) gets this pixel size; the table, the default model and the
        domain banner follow."""
        scan = self._scan_layer()
        if scan is None:
            return
        try:
            L.set_pixel_size(self.viewer, scan, pixel_mm)
        except Exception as exc:  # noqa: BLE001 - SegStudioError or a layer error: one line
            self.note.setText(str(exc))
            return
        if self._on_geometry is not None:
            self._on_geometry()
        self.follow()

    def _show_pixel_size_row(self) -> None:
        from ..core.io import has_physical_spacing

        scan = self._scan_layer()
        try:
            lacking = scan is not None and not has_physical_spacing(L.layer_volume(scan))
        except ValueError:
            lacking = False
        self.pixel_size_row.setVisible(lacking)

    # --- which mask -----------------------------------------------------------------------------------
    def follow(self) -> None:
        """Watch the current mask (called when layers or the scan change) and measure it."""
        self._show_pixel_size_row()
        mask = self._mask_layer()
        if mask is not self._watched:
            self._disconnect()
            self._watched = mask
            if mask is not None:
                for ev in _edit_events(mask):
                    ev.connect(self._changed)
        self._changed()

    def _disconnect(self) -> None:
        old = self._watched
        if old is None:
            return
        for ev in _edit_events(old):
            try:
                ev.disconnect(self._changed)
            except (TypeError, RuntimeError, ValueError):
                pass

    def _changed(self, event: Any = None) -> None:
        self._timer.start()

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running or self._timer.isActive() or self._pending

    # --- measuring ------------------------------------------------------------------------------------
    def measure_now(self) -> None:
        """Measure at once (skips the debounce timer)."""
        self._timer.stop()
        self._start()

    def _start(self) -> None:
        from .workers import Job

        if self.job is not None and self.job.running:
            self._pending = True
            return
        self._pending = False
        mask, scan_layer = self._mask_layer(), self._scan_layer()
        if mask is None or scan_layer is None:
            self._show(None)
            return
        t0 = time.perf_counter()
        try:
            scan = L.layer_volume(scan_layer)
            labels = L.labels_volume(mask, scan)
        except ValueError as exc:
            self.note.setText(str(exc))
            return
        # no copy (a 512x512x300 mask is 75 MB: copying it took up to 0.4 s on the GUI thread): an edit
        # made while the worker reads marks the table stale and is measured right after
        labels.meta["format"] = scan.meta.get("format", "")
        labels.meta["pixel_size_given"] = bool(scan.meta.get("pixel_size_given"))
        self.gui_seconds = time.perf_counter() - t0
        self.job = Job(
            lambda token: _measure_job(labels, scan),
            on_done=self._landed,
            on_error=lambda msg, exc: self._alive() and self.note.setText(msg),
            on_finished=self._finished,
            name="measure",
        )

    def stop(self) -> None:
        """Before the window closes: no new measurement, and a running one's result is dropped."""
        self._timer.stop()
        self._pending = False
        if self.job is not None and self.job.running:
            self.job.cancel()

    def _alive(self) -> bool:
        """False once Qt deleted the widgets (a result may land after the window closed)."""
        try:
            self.table.objectName()
        except RuntimeError:
            return False
        return True

    def _landed(self, result: Any) -> None:
        if not self._alive():
            return
        t0 = time.perf_counter()
        report, self.compute_seconds = result
        self._show(report)
        self.gui_seconds += time.perf_counter() - t0
        self.updates += 1

    def _finished(self) -> None:
        if self._pending and self._alive():
            self._start()

    def _show(self, report: Any) -> None:
        self.report = report
        classes = report.classes if report is not None else []
        extras = sorted({k for c in classes for k in c.extras})
        columns = [*BASE_COLUMNS, *extras]
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setRowCount(len(classes))
        unit = report.intensity_unit if report is not None else ""
        for i, c in enumerate(classes):
            s = c.intensity
            cells = [
                f"{c.value}: {c.name}",
                f"{c.size:.4g} {c.size_unit}",
                str(c.voxels),
                "" if s is None else f"{s.mean:.1f} ± {s.sd:.1f} {unit}".strip(),
                "" if s is None else f"{s.percentiles['p5']:.0f}–{s.percentiles['p95']:.0f}",
                " × ".join(f"{e:.1f}" for e in c.extent_mm_xyz),
                f"{c.components} ({100 * c.largest_component_share:.0f}%)",
                *[f"{c.extras[k]:.1f}" if k in c.extras else "" for k in extras],
            ]
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))
        notes = list(report.notes) if report is not None else []
        self.note.setText("; ".join(notes) if notes else ("" if classes else "no mask to measure"))
