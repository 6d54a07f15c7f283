"""The domain banner: a persistent notice at the top of the panel when the chosen model does not fit
the scan in view, or its result looks unlike what it produced on its validation scans.

Toasts vanish while the clinician looks at the mask; this stays until the scan, the model or the
result changes. It also carries the "no model fits this scan" state, with the untrained variants on
offer for a fine-tune-from-scratch start (``ModelSection.suit_scan`` decides when that applies).
The checks themselves are ``core.domain``'s; this module only shows them.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

log = logging.getLogger(__name__)

NO_FIT = "no model fits this scan"
MISMATCH_STYLE = "background:#5a3a00; color:#ffe7b0; border:1px solid #f0a030; border-radius:4px;"
_STYLE = {
    "mismatch": MISMATCH_STYLE,
    "note": "background:#1f3347; color:#d8e8ff; border:1px solid #5a8ac0; border-radius:4px;",
}


class DomainBanner(QFrame):
    """Shows the current domain warnings (or nothing). ``warnings()`` gives the lines shown."""

    #: the user asked for an untrained variant (argument: its registry name)
    untrained_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("seg_studio_domain_banner")
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.TextFormat.RichText)
        self.variants = QComboBox()
        self.variants.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.variants.setMinimumContentsLength(10)
        self.variants.setToolTip("a U-Net variant with random weights, to fine-tune on your own corrections")
        self.use_untrained = QPushButton("Start untrained")
        self.use_untrained.setToolTip(
            "paint a few slices, then Fine-tune: the model learns this scan from scratch"
        )
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.variants, 1)
        row.addWidget(self.use_untrained)
        self.offer = QWidget()
        self.offer.setLayout(row)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 4)
        lay.addWidget(self.text)
        lay.addWidget(self.offer)
        self.use_untrained.clicked.connect(lambda: self.untrained_requested.emit(self.variants.currentText()))
        self._lines: list[str] = []
        self.show_nothing()

    def warnings(self) -> list[str]:
        """The lines the banner shows now (empty when hidden)."""
        return list(self._lines) if self.isVisibleTo(self.parentWidget() or self) else []

    def show_nothing(self) -> None:
        self._lines = []
        self.offer.setVisible(False)
        self.setVisible(False)

    def show_warnings(self, title: str, warnings: list[Any]) -> None:
        """``warnings``: ``core.domain.DomainWarning`` records; notes alone get the calmer colour."""
        if not warnings:
            self.show_nothing()
            return
        severe = any(getattr(w, "severity", "mismatch") != "note" for w in warnings)
        self._lines = [str(w) for w in warnings]
        items = "".join(f"<li>{html.escape(line)}</li>" for line in self._lines)
        icon = "&#9888; " if severe else ""
        self.text.setText(f"<b>{icon}{html.escape(title)}</b><ul style='margin:2px 0 0 -20px'>{items}</ul>")
        self.setStyleSheet(f"#seg_studio_domain_banner {{{_STYLE['mismatch' if severe else 'note']}}}")
        self.offer.setVisible(False)
        self.setVisible(True)

    def show_no_fit(self, variants: list[str], reasons: list[str]) -> None:
        """No checkpoint fits: say so, why the closest one does not, and offer the untrained variants."""
        self._lines = [NO_FIT, *reasons]
        why = "".join(f"<li>{html.escape(r)}</li>" for r in reasons)
        self.text.setText(
            f"<b>&#9888; {NO_FIT.capitalize()}.</b> None of the models here was trained on scans like it"
            + (f"; the closest:<ul style='margin:2px 0 0 -20px'>{why}</ul>" if why else ". ")
            + "Start from an untrained variant and fine-tune it on a few corrected slices, or open a checkpoint"
            " made for such scans."
        )
        self.setStyleSheet(f"#seg_studio_domain_banner {{{_STYLE['mismatch']}}}")
        current = self.variants.currentText()
        self.variants.clear()
        self.variants.addItems(variants)
        if current in variants:
            self.variants.setCurrentText(current)
        elif "unet" in variants:
            self.variants.setCurrentText("unet")
        self.offer.setVisible(bool(variants))
        self.setVisible(True)


class DomainWatch:
    """Keeps the banner in step with the scan, the chosen model and the last result."""

    def __init__(self, banner: DomainBanner, models: Any, scan_volume: Callable[[], Any]) -> None:
        self.banner = banner
        self.models = models
        self._scan_volume = scan_volume
        self._result: list[Any] = []
        models.choice_changed.connect(lambda _: self.refresh())
        banner.untrained_requested.connect(lambda name: models.select_variant(name, untrained=True))

    def refresh(self, result: list[Any] | None = None) -> None:
        """Re-check the scan against the current choice; ``result`` warnings stay until the next refresh
        that is not about a result (a new scan or model clears them)."""
        from ..core import domain

        self._result = list(result or [])
        scan = self._scan_volume()
        choice = self.models.current_choice()
        if scan is None:
            self.banner.show_nothing()
            return
        if choice is None:
            if self.models.no_fit:
                self.banner.show_no_fit(self.models.variants(), self.models.no_fit_reasons())
            else:
                self.banner.show_nothing()
            return
        if choice.untrained:
            self.banner.show_nothing()  # the card says it is untrained; it has no domain to compare
            return
        warnings = domain.scan_warnings(choice.meta, scan)
        name = choice.checkpoint.stem if choice.checkpoint else choice.label
        title = f"{name} is not made for this scan" if any(w.severity != "note" for w in warnings) else name
        if self._result:
            title = f"{name}: check this result" + ("; it is not made for this scan" if warnings else "")
        self.banner.show_warnings(title, warnings + self._result)

    def result_ready(self, prediction: Any, meta: Any) -> list[Any]:
        """After a prediction: compare it with the model's validation results; returns the warnings."""
        from ..core import domain

        found = domain.check_result(domain.meta_domain(meta), prediction) if prediction is not None else []
        self.refresh(found)
        return found
