"""The seg_studio dock widget: the scan and Run always in view, the other sections in tabs.

The Run section (Predict, Cancel, progress, status) sits above the tabs, so the main action is
never scrolled away, and so does the domain banner; Model, View, Correct, Fine-tune and Measure are
one tab each, and a tab that is taller than the window scrolls on its own. Adding a section is one ``add_section``
call. The panel keeps a small minimum size so that docking it never squeezes napari's canvas.

Every button calls a public method of this panel (or of a section it forwards to), so scripts and
tests drive the panel exactly as a user does: ``predict()``, ``cancel()``, ``finetune()``,
``save_labels(path)``, ``apply_window(preset)``... All state lives on the instance; nothing is
kept at module level, so two viewers can each have their own panel.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from . import layers as L
from .about_section import AboutSection
from .autosave import Autosaver
from .clicks_section import ClicksSection
from .correct_section import CorrectSection
from .domain_banner import DomainBanner, DomainWatch
from .finetune_section import FinetuneSection
from .measure_section import MeasureSection
from .model_section import ModelSection
from .review_section import ReviewSection
from .run_section import RunSection
from .series_section import SeriesSection
from .view_section import ViewSection

log = logging.getLogger(__name__)

#: The panel's width: napari gives a docked widget its size hint, and at 470 px (the old single
#: column) a 1400 px window left the canvas 580 px; this width fits every section's widest row.
PANEL_WIDTH = 390
#: The window size (without the panel) that ``make_room`` grows napari's window to, screen permitting:
#: napari's own layer controls take ~330 px, so the canvas then keeps ~700 px.
MIN_WINDOW = (1030, 860)


class SegStudioPanel(QWidget):
    """Pick a model, predict in the background, look, correct, fine-tune, save."""

    def __init__(
        self, napari_viewer: Any, autosave_interval_s: float | None = None, probe: bool = True
    ) -> None:
        """``probe=False``: the caller starts the model list (``models.start_probe``) when it suits it."""
        from .native_guard import guard_triton

        guard_triton()  # before any fine-tune imports torch._dynamo (see native_guard)
        super().__init__()
        from .app import prefer_reader

        prefer_reader()  # docked from napari's Plugins menu: File > Open then uses our reader too
        self.viewer = napari_viewer
        self._grew_window = False
        self.setMinimumWidth(PANEL_WIDTH - 60)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)

        self.scan_combo = QComboBox()
        self.scan_combo.setToolTip("the scan that Predict and Fine-tune use")
        # long DICOM series names must not widen the panel; the full name is in the tooltip
        self.scan_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.scan_combo.setMinimumContentsLength(12)
        self.model_label = QLabel("looking for models...")
        self.model_label.setToolTip("the model Predict uses (choose it in the Model tab)")
        self.model_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.pacs_button = QPushButton("PACS...")
        self.pacs_button.setToolTip("browse a PACS's series, open one, send the mask back as a DICOM SEG")
        scan_row = QHBoxLayout()
        scan_row.addWidget(self.scan_combo, 1)
        scan_row.addWidget(self.pacs_button)
        top = QFormLayout()
        top.addRow("Scan", scan_row)
        top.addRow("Model", self.model_label)
        lay.addLayout(top)
        #: persistent notice when the model does not fit the scan or its result (see domain_banner)
        self.banner = DomainBanner()
        lay.addWidget(self.banner)

        self.models = ModelSection()
        self.run = RunSection(self.viewer, self.models, self.scan_layer)
        self.view = ViewSection(self.viewer, self.scan_layer)
        self.correct = CorrectSection(self.viewer, self.scan_layer, self.mask_layer)
        self.finetune_section = FinetuneSection(self.viewer, self.models, self.run, self.scan_layer)
        self.measure_section = MeasureSection(
            self.viewer, self.scan_layer, self.mask_layer, on_geometry=self._suit_model_to_scan
        )
        lay.addWidget(self.run)  # Predict / Cancel / progress: always in view
        self.tabs = QTabWidget()
        self.tabs.setUsesScrollButtons(True)
        lay.addWidget(self.tabs, 1)
        self._tab_pages: dict[str, QVBoxLayout] = {}
        self.add_section("Model", self.models)
        self.add_section("View", self.view)
        self.add_section("Correct", self.correct)
        self.review = ReviewSection(self.viewer, self.run, self.models, self.scan_layer)
        self.add_section("Correct", self.review)
        self.clicks = ClicksSection(
            self.viewer, self.scan_layer, self.mask_layer, lambda: self.run._baselines
        )
        # filled once the models are probed: reading checkpoint headers imports torch, which the
        # window must not wait for
        self.models.probed.connect(lambda *_: self.clicks.fill_models(self._model_dirs()))
        self.add_section("Clicks", self.clicks)
        self.clicks.on_finetune = self._finetune_clicks
        self.finetune_section.clicks_on = self.clicks.clicks_on
        self.finetune_section.on_interactive_child = self.clicks.add_model
        self.tabs.currentChanged.connect(self._tab_shown)
        self.add_section("Fine-tune", self.finetune_section)
        self.series = SeriesSection(self.viewer, self.run, self.finetune_section, self.scan_layer)
        self.add_section("Fine-tune", self.series)
        self.add_section("Measure", self.measure_section)
        self.about = AboutSection()
        self.add_section("About", self.about)
        self.models.probed.connect(self.about.devices_probed)
        self.models.choice_changed.connect(self._show_model)
        self._hospital_wiring()
        self.domain_watch = DomainWatch(self.banner, self.models, self._scan_volume)
        self.run.finished.connect(self._check_result)

        kwargs = {} if autosave_interval_s is None else {"interval_s": autosave_interval_s}
        self.autosaver = Autosaver(self.viewer, self.scan_layer, self._mask_of, parent=self, **kwargs)
        self.autosaver.offered.connect(self._offer_autosave)
        self.autosaver.saved.connect(
            lambda p: self.correct.autosave_label.setText(f"edits autosaved at {time.strftime('%H:%M:%S')}")
        )
        self.correct.restore_button.clicked.connect(lambda: self.restore_autosave())
        self.correct.discard_button.clicked.connect(lambda: self.discard_autosave())
        self.correct.saved.connect(self._after_save)
        self.correct.saved.connect(self.clicks.save_beside)
        self._offer_layer: Any = None
        self.autosaver.watch_existing()

        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self.scan_combo.currentIndexChanged.connect(lambda _: self.correct.refresh_classes())
        self.scan_combo.currentIndexChanged.connect(lambda _: self._suit_model_to_scan())
        self.run.finished.connect(lambda _: self.correct.refresh_classes())
        self._layers_changed()
        self._warm_job: Any = None
        self.models.probed.connect(self._warm_up)
        app = QApplication.instance()
        if app is not None:  # standalone app and napari plugin alike: a last autosave on quit
            app.aboutToQuit.connect(self.shutdown)
        if probe:
            self.models.start_probe()

    @staticmethod
    def _model_dirs() -> list[Path]:
        from ..core.autosave import user_model_dir
        from .model_section import bundled_model_dirs

        return [d for d in (*bundled_model_dirs(), user_model_dir()) if d.is_dir()]

    # --- layout ---------------------------------------------------------------------------------------
    def add_section(self, tab: str, section: QWidget) -> None:
        """Put ``section`` at the end of tab ``tab`` (a new tab if there is none of that name)."""
        page = self._tab_pages.get(tab)
        if page is None:
            body = QWidget()
            page = QVBoxLayout(body)
            page.setContentsMargins(2, 2, 2, 2)
            page.addStretch(1)
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            scroll.setFrameShape(QScrollArea.Shape.NoFrame)
            scroll.setWidget(body)
            self.tabs.addTab(scroll, tab)
            self._tab_pages[tab] = page
        page.insertWidget(page.count() - 1, section)  # above the stretch

    def section_tab(self, section: QWidget) -> str | None:
        """The name of the tab that holds ``section``."""
        for i in range(self.tabs.count()):
            if self.tabs.widget(i).isAncestorOf(section):
                return self.tabs.tabText(i)
        return None

    def show_section(self, section: QWidget) -> None:
        """Bring the tab that holds ``section`` to the front (e.g. the autosave offer in Correct)."""
        for i in range(self.tabs.count()):
            if self.tabs.widget(i).isAncestorOf(section):
                self.tabs.setCurrentIndex(i)
                return

    def sizeHint(self) -> Any:  # noqa: N802 - Qt's name
        hint = super().sizeHint()
        hint.setWidth(PANEL_WIDTH)
        return hint

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not self._grew_window:
            self._grew_window = True
            from qtpy.QtCore import QTimer

            timer = QTimer(self)  # a child: it goes with the panel if the window closes first
            timer.setSingleShot(True)
            timer.timeout.connect(self.make_room)
            timer.start(0)

    def make_room(self) -> bool:
        """Widen the main window by the panel, as far as the screen allows, so the canvas keeps its width.

        napari opens at 1089x630 on a 1400x900 screen with fresh settings; docking the panel there
        left the canvas a 270 px strip. A maximised or full-screen window is left alone.
        Returns True if the window was resized.
        """
        win = self.window()
        if win is self or not win.isVisible() or win.isMaximized() or win.isFullScreen():
            return False
        screen = win.screen().availableGeometry() if win.screen() is not None else None
        if screen is None:
            return False
        width = min(screen.width(), max(win.width(), MIN_WINDOW[0] + PANEL_WIDTH))
        height = min(screen.height(), max(win.height(), MIN_WINDOW[1]))
        if (width, height) == (win.width(), win.height()) or width < win.width() or height < win.height():
            return False
        win.resize(width, height)
        frame = win.frameGeometry()
        left = max(screen.left(), min(frame.left(), screen.right() - frame.width() + 1))
        top = max(screen.top(), min(frame.top(), screen.bottom() - frame.height() + 1))
        win.move(left, top)
        return True

    def _show_model(self, choice: Any) -> None:
        text = choice.label if choice is not None else "none: pick one in the Model tab"
        self.model_label.setText(text)
        self.model_label.setToolTip(
            str(choice.checkpoint) if choice is not None and choice.checkpoint else text
        )

    def _warm_up(self) -> None:
        """Once, after the model list is in: import what the first run needs (see ``warmup``)."""
        if self._warm_job is not None:
            return
        from .warmup import warm_imports
        from .workers import Job

        self._warm_job = Job(lambda token: warm_imports(), name="warm-up imports")

    def warmed_up(self) -> bool:
        """True once the start-up imports are done: the first run then stalls the UI no more than later ones."""
        return self._warm_job is not None and not self._warm_job.running

    # --- hospital: DICOM SEG, PACS, measurements -------------------------------------------------------
    def _hospital_wiring(self) -> None:
        self.pacs: Any = None
        self.correct.algorithm = self._seg_algorithm
        self.pacs_button.clicked.connect(lambda: self.open_pacs())
        self.viewer.layers.events.inserted.connect(lambda e: self.measure_section.follow())
        self.viewer.layers.events.removed.connect(lambda e: self.measure_section.follow())
        self.scan_combo.currentIndexChanged.connect(lambda _: self.measure_section.follow())

    def _seg_algorithm(self) -> Any:
        """The model whose prediction the mask is (semi-automatic: it may be corrected since), or None
        for a mask that no prediction of this panel made (a DICOM SEG then says MANUAL)."""
        from ..core.io.dicom_seg import Algorithm

        mask = self.mask_layer()
        made_by = str(L._md(mask).get("made_by", "")) if mask is not None else ""
        if not made_by:
            return None
        if made_by.startswith("variant:"):
            return Algorithm(made_by.split(":", 1)[1], "untrained", kind="SEMIAUTOMATIC")
        from ..core import checkpoint

        path = Path(made_by)
        meta = checkpoint.read_meta(path) if path.is_file() else None
        return Algorithm.from_checkpoint(path, meta, "SEMIAUTOMATIC")

    def open_pacs(self) -> Any:
        """Show the *PACS...* dialog (series browser, open, send the SEG); returns it."""
        from .pacs_dialog import PacsDialog

        if self.pacs is None:
            self.pacs = PacsDialog(self.viewer, self.correct.prepare_seg, parent=self)
        self.pacs.show()
        self.pacs.raise_()
        return self.pacs

    def measurements(self) -> Any:
        """The last measurement report of the current mask (``core.measure.Report``) or None."""
        return self.measure_section.report

    # --- which layers -------------------------------------------------------------------------------
    def scan_layer(self) -> Any:
        """The scan picked in the Scan box (the newest scan by default)."""
        name = self.scan_combo.currentText()
        for layer in L.scan_layers(self.viewer):
            if layer.name == name:
                return layer
        scans = L.scan_layers(self.viewer)
        return scans[-1] if scans else None

    def mask_layer(self) -> Any:
        scan = self.scan_layer()
        return self._mask_of(scan) if scan is not None else None

    def _mask_of(self, scan_layer: Any) -> Any:
        return self.run.mask_layer(scan_layer)

    def _layers_changed(self, event: Any = None) -> None:
        if event is not None and not L.is_scan_layer(getattr(event, "value", None)):
            # a mask or a map came or went: the scans, and so the model that suits them, are the same
            # (re-ranking the checkpoints cost 10-20 ms of the turn that lands the first mask)
            self.correct.refresh_classes()
            return
        names = [ly.name for ly in L.scan_layers(self.viewer)]
        current = self.scan_combo.currentText()
        self.scan_combo.blockSignals(True)
        self.scan_combo.clear()
        self.scan_combo.addItems(names)
        for i, name in enumerate(names):
            self.scan_combo.setItemData(i, name, Qt.ItemDataRole.ToolTipRole)
        if event is not None and getattr(event, "type", "") == "inserted" and L.is_scan_layer(event.value):
            current = event.value.name  # a newly opened scan becomes the current one
        self.scan_combo.setCurrentIndex(names.index(current) if current in names else len(names) - 1)
        self.scan_combo.blockSignals(False)
        self.correct.refresh_classes()
        self._suit_model_to_scan()
        self._tab_shown(self.tabs.currentIndex())  # a scan opened with the Clicks tab in view: warm it up

    def _scan_volume(self) -> Any:
        """The scan in view as a Volume (None without one, or for a layer that is not 2D/3D)."""
        scan = self.scan_layer()
        try:
            return L.layer_volume(scan) if scan is not None else None
        except ValueError:  # not 2D or 3D: the run section will say so when asked to predict
            return None

    def _suit_model_to_scan(self) -> None:
        """Tell the model section which scan is in view: the default model follows its domain."""
        self.models.suit_scan(self._scan_volume())
        self.domain_watch.refresh()

    def _check_result(self, outcome: str) -> None:
        """After a prediction: the banner compares it with what the model produced on validation."""
        if outcome == "done":
            self.domain_watch.result_ready(self.run.last_prediction, self.models.last_meta())

    def domain_warnings(self) -> list[str]:
        """What the domain banner says now (empty when it is hidden)."""
        return self.banner.warnings()

    # --- the actions (buttons call these) -----------------------------------------------------------
    def predict(self) -> bool:
        return self.run.predict()

    def cancel(self) -> None:
        """Cancel whatever runs (prediction and/or fine-tune)."""
        self.run.cancel()
        self.finetune_section.cancel()

    def _tab_shown(self, index: int) -> None:
        """The Clicks tab in view: compile its model for the scan before the first click (a worker)."""
        if self.tabs.widget(index) is not None and self.tabs.widget(index).isAncestorOf(self.clicks):
            self.clicks.warm_up()

    def _finetune_clicks(self, checkpoint: Path, clicks: list[Any]) -> bool:
        self.show_section(self.finetune_section)
        return self.finetune_section.finetune(checkpoint=checkpoint, clicks=clicks)

    def finetune(self, budget_s: float | None = None, only_changed: bool | None = None) -> bool:
        self.show_section(self.finetune_section)  # its plot and the Re-run offer
        return self.finetune_section.finetune(budget_s=budget_s, only_changed=only_changed)

    def rerun(self) -> bool:
        return self.finetune_section.rerun()

    def open_checkpoint(self, path: Path) -> Any:
        return self.models.open_checkpoint(Path(path))

    def select_checkpoint(self, path: Path) -> None:
        self.models.select_checkpoint(Path(path))

    def select_variant(self, name: str, untrained: bool = True, **config: Any) -> None:
        self.models.select_variant(name, untrained=untrained, **config)

    def set_device(self, name: str) -> None:
        self.models.set_device(name)

    def apply_window(self, preset: str) -> tuple[float, float]:
        return self.view.apply_window(preset)

    def set_view(self, ndisplay: int) -> None:
        self.view.set_view(ndisplay)

    def select_class(self, value: int) -> None:
        self.correct.select_class(value)

    def remove_small_islands(self, min_size: int | None = None) -> int:
        return self.correct.remove_small_islands(min_size)

    def fill_holes(self) -> int:
        return self.correct.fill_holes()

    def keep_largest(self) -> int:
        return self.correct.keep_largest()

    def save_labels(self, path: Path) -> Path:
        return self.correct.save_labels(Path(path))

    def autosave_now(self) -> Path | None:
        return self.autosaver.autosave_now()

    def restore_autosave(self) -> Any:
        layer = self._offer_layer or self.scan_layer()
        mask = self.autosaver.restore(layer)
        self._hide_offer()
        self.correct.refresh_classes()
        return mask

    def discard_autosave(self) -> None:
        layer = self._offer_layer or self.scan_layer()
        if layer is not None:
            self.autosaver.discard(layer)
        self._hide_offer()

    def shutdown(self) -> None:
        """Before the window closes: stop jobs and write a last autosave of unsaved edits."""
        self.cancel()
        self.measure_section.stop()
        self.autosaver.stop()
        from .workers import await_jobs

        await_jobs()  # imports (the warm-up) cannot be interrupted: let them end, not emit into a dead window
        if self.autosaver.dirty:
            try:
                self.autosaver.autosave_now()
            except Exception as exc:  # noqa: BLE001 - closing must not fail
                log.warning("last autosave failed: %s", exc)

    # --- autosave offer ------------------------------------------------------------------------------
    def _offer_autosave(self, layer: Any, info: Any) -> None:
        from napari.utils.notifications import show_info

        self._offer_layer = layer
        self.correct.autosave_label.setText(
            f"Autosaved labels from {info.age_text} were found for {layer.name}: restore them?"
        )
        self.correct.restore_button.setVisible(True)
        self.correct.discard_button.setVisible(True)
        self.show_section(self.correct)
        show_info(f"autosaved labels from {info.age_text} found for {layer.name}: see Correct > Restore")

    def _hide_offer(self) -> None:
        self._offer_layer = None
        self.correct.restore_button.setVisible(False)
        self.correct.discard_button.setVisible(False)
        self.correct.autosave_label.setText("")

    def _after_save(self, path: Path) -> None:
        # the edits are safe in a file the user chose: the autosave is no longer needed
        layer = self.scan_layer()
        if layer is not None:
            self.autosaver.discard(layer)
        self.autosaver.dirty = False
        self.correct.autosave_label.setText(f"saved {Path(path).name}")
