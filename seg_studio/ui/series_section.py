"""The correction loop in the panel: after a fine-tune, the next scan of the folder is one click away.

Each fine-tune records, for the scan it learnt from, how good the model's prediction was there (Dice of
the prediction against the mask as the user corrected it) and how much the user changed (voxels, and as
a share of the corrected mask's foreground); a small chart shows both per scan of the series. "Next
scan" opens the scan after the current one in its folder (files the reader can open, or DICOM series
folders, by name), hides the previous scan and its mask (nothing is closed or overwritten) and
predicts it with the model now selected: the fine-tuned child when it was kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QGroupBox, QLabel, QPushButton, QVBoxLayout, QWidget

from . import layers as L

log = logging.getLogger(__name__)

CAPTION = (
    "bars: voxels you changed on that scan, as a share of its corrected foreground; line: Dice of the "
    "model's prediction against your corrected mask (both measured when you fine-tuned on it)"
)


@dataclass
class ScanRecord:
    """One corrected scan of the series, as it was when the model learnt from it."""

    name: str
    dice: float
    corrected: int
    foreground: int
    kept: bool

    @property
    def fraction(self) -> float:
        return self.corrected / max(1, self.foreground)


def sibling_scans(source: Path) -> list[Path]:
    """The scans beside ``source`` in its folder, by name: readable files, or DICOM series folders."""
    from ..core.io import READ_FORMATS
    from ..core.io._formats import suffix_of

    folder = source.parent
    if source.is_dir():
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and suffix_of(p) in READ_FORMATS
    )


def correction_record(name: str, data: np.ndarray, baseline: Any, kept: bool) -> ScanRecord:
    """Dice of the model's values against the corrected mask, and the voxels the user changed."""
    from ..core.corrections import current_baseline
    from ..core.metrics import dice, mean_ignoring_nan

    model_values = current_baseline(data, baseline).values
    classes = [int(c) for c in np.unique(data) if c > 0]
    score = mean_ignoring_nan(dice(model_values, data, classes=classes).values()) if classes else float("nan")
    return ScanRecord(name, float(score), int((model_values != data).sum()), int((data > 0).sum()), kept)


class SeriesChart(QWidget):
    """Per scan: a bar of the share corrected (scaled to the largest) and a Dice line (0..1)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.records: list[ScanRecord] = []
        self.setMinimumHeight(90)

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(30, 30, 34))
        if not self.records:
            p.setPen(QColor(160, 160, 160))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "no corrected scan yet")
            return
        w, h, n = self.width(), self.height() - 14, len(self.records)
        slot = w / n
        top = max(r.fraction for r in self.records) or 1.0
        pts = []
        for i, r in enumerate(self.records):
            bh = (h - 4) * r.fraction / top
            colour = QColor(90, 140, 220) if r.kept else QColor(120, 120, 120)
            p.fillRect(QRectF(i * slot + slot * 0.2, h - bh, slot * 0.6, bh), colour)
            p.setPen(QColor(200, 200, 200))
            p.drawText(QRectF(i * slot, h, slot, 14), Qt.AlignmentFlag.AlignCenter, str(i + 1))
            if r.dice == r.dice:
                pts.append(QPointF(i * slot + slot / 2, 2 + (h - 4) * (1 - r.dice)))
        p.setPen(QPen(QColor(250, 190, 60), 2))
        for a, b in zip(pts, pts[1:], strict=False):
            p.drawLine(a, b)
        for a in pts:
            p.drawEllipse(a, 2.5, 2.5)
        p.drawText(QRectF(4, 0, w - 8, 14), Qt.AlignmentFlag.AlignLeft, "Dice 0..1")
        p.setPen(QColor(90, 140, 220))
        p.drawText(QRectF(4, 0, w - 8, 14), Qt.AlignmentFlag.AlignRight, f"corrected, max {top:.0%}")


class SeriesSection(QGroupBox):
    """Next scan (one click after a fine-tune) and the chart of the series so far."""

    #: emitted with the path of the next scan once it is open (its prediction has started)
    opened = Signal(str)

    def __init__(
        self,
        viewer: Any,
        run: Any,
        finetune: Any,
        scan_layer: Callable[[], Any],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__("Series", parent)
        self.viewer, self.run, self.finetune_section, self._scan_layer = viewer, run, finetune, scan_layer
        self.records: list[ScanRecord] = []
        self.next_button = QPushButton("Next scan")
        self.next_button.setToolTip(
            "open the next scan of this folder and predict it with the selected model"
        )
        self.next_button.clicked.connect(lambda: self.next_scan())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.chart = SeriesChart()
        caption = QLabel(CAPTION)
        caption.setWordWrap(True)
        caption.setStyleSheet("font-size: 10px; color: gray")
        lay = QVBoxLayout(self)
        for w in (self.next_button, self.status, self.chart, caption):
            lay.addWidget(w)
        finetune.finished.connect(self._finetuned)
        viewer.layers.events.inserted.connect(lambda e: self.refresh())
        self.refresh()

    def next_path(self) -> Path | None:
        """The scan after the current one in its folder (None: no file behind it, or it is the last)."""
        layer = self._scan_layer()
        source = L._md(layer).get("source") if layer is not None else None
        if not source or not Path(source).exists():
            return None
        source = Path(source)
        scans = sibling_scans(source)
        later = [p for p in scans if p.name > source.name]
        return later[0] if later else None

    def refresh(self) -> None:
        nxt = self.next_path()
        self.next_button.setEnabled(nxt is not None)
        self.next_button.setText(
            f"Next scan: {nxt.name}" if nxt is not None else "Next scan (none in this folder)"
        )

    def _finetuned(self, outcome: str) -> None:
        if outcome != "done":
            return
        result = self.finetune_section.last_result
        layer = self._scan_layer()
        mask = self.run.mask_layer(layer) if layer is not None else None
        base = self.run._baselines.get(mask.unique_id) if mask is not None else None
        if base is None or result is None:
            return
        rec = correction_record(layer.name, np.asarray(mask.data), base, bool(result.better))
        self.records = [r for r in self.records if r.name != rec.name] + [rec]
        self.chart.records = list(self.records)
        self.chart.update()
        kept = (
            "the fine-tuned model is selected"
            if rec.kept
            else "the fine-tune was not better: the model stays"
        )
        self.status.setText(f"{rec.name}: Dice {rec.dice:.3f}, {rec.corrected} voxels corrected; {kept}")
        self.refresh()

    def next_scan(self) -> bool:
        """Open the next scan, hide the current one with its mask, predict it; False if there is none."""
        nxt = self.next_path()
        if nxt is None or self.run.busy:
            return False
        layer = self._scan_layer()
        mask = self.run.mask_layer(layer) if layer is not None else None
        self.viewer.open(str(nxt), plugin="seg-studio")
        for old in (layer, mask):
            if old is not None:
                old.visible = False
        started = self.run.predict()
        self.status.setText(
            f"{nxt.name}: predicting with the selected model" if started else f"{nxt.name} opened"
        )
        self.opened.emit(str(nxt))
        return started
