"""A small live plot of loss and Dice, drawn with QPainter (no matplotlib in the app)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(255, 140, 60)
DICE_COLOR = QColor(80, 200, 255)


class LossPlot(QWidget):
    """Loss (left axis, auto range) and Dice (right axis, 0..1) against the step number."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss: list[tuple[float, float]] = []
        self.dice: list[tuple[float, float]] = []
        self.title = "fine-tune"
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def clear(self, title: str = "fine-tune") -> None:
        self.loss.clear()
        self.dice.clear()
        self.title = title
        self.update()

    def add(self, step: float, loss: float | None = None, dice: float | None = None) -> None:
        """Append one point per known value (NaN/None values are skipped)."""
        if loss is not None and math.isfinite(loss):
            self.loss.append((float(step), float(loss)))
        if dice is not None and math.isfinite(dice):
            self.dice.append((float(step), float(dice)))
        self.update()

    # --- drawing ---------------------------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        font = QFont(p.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        fm = p.fontMetrics()
        left, right, top, bottom = 44, 40, fm.height() + 6, fm.height() + 8
        area = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        p.setPen(QPen(QColor(90, 95, 105), 1))
        p.drawRect(area)

        steps = [s for s, _ in self.loss] + [s for s, _ in self.dice]
        x0, x1 = (min(steps), max(steps)) if steps else (0.0, 1.0)
        if x1 <= x0:
            x1 = x0 + 1.0
        losses = [v for _, v in self.loss]
        l0, l1 = (0.0, max(losses) * 1.05) if losses else (0.0, 1.0)
        if l1 <= l0:
            l1 = l0 + 1.0

        def to_pt(s: float, v: float, lo: float, hi: float) -> QPointF:
            return QPointF(
                area.left() + (s - x0) / (x1 - x0) * area.width(),
                area.bottom() - (v - lo) / (hi - lo) * area.height(),
            )

        # grid and tick labels
        p.setPen(QPen(QColor(60, 64, 72), 1, Qt.PenStyle.DotLine))
        for i in range(1, 4):
            y = area.top() + area.height() * i / 4
            p.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
        p.setPen(LOSS_COLOR)
        for i in range(5):
            v = l0 + (l1 - l0) * i / 4
            y = area.bottom() - area.height() * i / 4
            p.drawText(
                QRectF(0, y - fm.height() / 2, left - 4, fm.height()), Qt.AlignmentFlag.AlignRight, f"{v:.2g}"
            )
        p.setPen(DICE_COLOR)
        for i in range(5):
            y = area.bottom() - area.height() * i / 4
            p.drawText(QRectF(area.right() + 4, y - fm.height() / 2, right, fm.height()), 0, f"{i / 4:.2f}")
        p.setPen(QColor(200, 200, 200))
        p.drawText(
            QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()),
            Qt.AlignmentFlag.AlignCenter,
            f"step {int(x0)} .. {int(x1)}",
        )
        title = self.title
        if self.loss:
            title += f"   loss {self.loss[-1][1]:.3f}"
        if self.dice:
            title += f"   Dice {self.dice[-1][1]:.3f}"
        p.drawText(QRectF(left, 2, area.width(), fm.height()), Qt.AlignmentFlag.AlignLeft, title)

        for series, color, lo, hi in ((self.loss, LOSS_COLOR, l0, l1), (self.dice, DICE_COLOR, 0.0, 1.0)):
            if not series:
                continue
            p.setPen(QPen(color, 2))
            if len(series) == 1:
                p.drawEllipse(to_pt(*series[0], lo, hi), 2.5, 2.5)
                continue
            path = QPainterPath(to_pt(*series[0], lo, hi))
            for s, v in series[1:]:
                path.lineTo(to_pt(s, v, lo, hi))
            p.drawPath(path)
        p.end()
