"""Clicks: click to correct with an interactive model (``core.interactive``).

One Points layer per class holds the clicks ("clicks: class V"); with the section's Click button on, a
click on the scan is "this is the structure" and a Ctrl+click or right-click "this is not". Each click
re-predicts only a crop around the click and the structure, in a worker thread, and lands in the mask
as ONE undo step. Voxels the user painted are never changed: those that differ from what the model or
the last click wrote (before any click: what the run section's baseline says, or, for a hand-made mask,
every labelled voxel). The clicks are saved beside the labels (``NAME.clicks.json``) and train the
next fine-tune of the interactive model ("Fine-tune on my clicks", ``core.training.finetune_clicks``).

The first click of a model on a scan would compile the model for the crop (6-10 s with OpenVINO): a
worker does that ahead (``warm_up``) as soon as an interactive model and a scan are there, with dummy
clicks whose results are thrown away; a click that comes meanwhile waits for it rather than compiling
the same graph twice. It never blocks the UI, is cancelled when the model or scan changes, and a failure
only logs (the click then compiles as before).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QPushButton, QSpinBox

from . import layers as L
from .domain_banner import MISMATCH_STYLE

log = logging.getLogger(__name__)
POSITIVE, NEGATIVE = "#00c800", "#ff3030"


def scan_id(layer: Any) -> Any:
    """What tells one scan layer from another (a new layer of the same name is another scan)."""
    return getattr(layer, "unique_id", None) or id(layer)


def interactive_checkpoints(dirs: list[Path]) -> list[tuple[Path, Any]]:
    """Every interactive ``.segmodel`` in ``dirs`` (metadata only)."""
    from ..core.checkpoint import read_meta
    from ..core.errors import SegStudioError

    out = []
    for d in dirs:
        for p in sorted(d.rglob("*.segmodel")):
            try:
                meta = read_meta(p)
            except SegStudioError:
                continue
            if meta.interactive is not None:
                out.append((p, meta))
    return out


class ClicksSection(QGroupBox):
    """Model picker, class, Click on/off; ``add_click(voxel, positive)`` is what a click does."""

    def __init__(
        self,
        viewer: Any,
        scan_layer: Callable[[], Any],
        mask_layer: Callable[[], Any],
        baselines: Callable[[], dict[Any, Any]] | None = None,
    ) -> None:
        super().__init__("Click to correct")
        self.viewer, self._scan_layer, self._mask_layer = viewer, scan_layer, mask_layer
        self._baselines = baselines or (lambda: {})
        self.model_combo = QComboBox()
        self.value = QSpinBox()
        self.value.setRange(1, 65535)
        self.click_button = QPushButton("Click")
        self.finetune_button = QPushButton("Fine-tune on my clicks")
        self.finetune_button.setToolTip(
            "fine-tune this interactive model on the scan, the corrected mask and your clicks"
        )
        self.click_button.setCheckable(True)
        self.click_button.setToolTip("click = this is the structure; Ctrl+click or right-click = this is not")
        self.status = QLabel("pick an interactive model")
        #: stays while the chosen click model does not fit the scan (its domain's checks, as the banner's)
        self.fit_note = QLabel()
        self.fit_note.setWordWrap(True)
        self.fit_note.setObjectName("seg_studio_clicks_fit")
        self.fit_note.setStyleSheet(f"#seg_studio_clicks_fit {{{MISMATCH_STYLE}}}")
        self.fit_note.hide()
        self._fit_key: tuple[Any, ...] | None = None
        self._fit_lines: list[str] = []
        lay = QFormLayout(self)
        lay.addRow("Model", self.model_combo)
        lay.addRow(self.fit_note)
        lay.addRow("Class", self.value)
        lay.addRow(self.click_button)
        lay.addRow(self.finetune_button)
        lay.addRow(self.status)
        self.click_button.toggled.connect(self._toggled)
        self.model_combo.currentIndexChanged.connect(lambda *_: self.warm_up())
        self.finetune_button.clicked.connect(lambda: self.finetune())
        #: ``on_finetune(checkpoint, clicks)`` starts a fine-tune (the panel wires the Fine-tune section)
        self.on_finetune: Callable[[Path, list[Any]], bool] | None = None
        self.warm_job: Any = None
        self._warm_key: tuple[Any, ...] | None = None
        self._session_lock = threading.Lock()
        self._scan_of_clicks: Any = None
        self.clicks: list[Any] = []
        self.job: Any = None
        self._session: Any = None
        self._key: tuple[Any, ...] | None = None
        self._written: np.ndarray | None = None
        self._painted: np.ndarray | None = None
        self.last_step: Any = None

    def fill_models(self, dirs: list[Path]) -> None:
        self.model_combo.clear()
        for path, meta in interactive_checkpoints(dirs):
            self.model_combo.addItem(f"{path.stem} ({meta.spatial_dims}D)", str(path))
        self.status.setText("click on the scan" if self.model_combo.count() else "no interactive model found")

    # --- layers -----------------------------------------------------------------------------------
    def points_layer(self, value: int) -> Any:
        """The Points layer of class ``value`` (made on the scan's grid when missing)."""
        name = f"clicks: class {value}"
        for layer in self.viewer.layers:
            if layer.name == name:
                return layer
        scan = self._scan_layer()
        nd = L.layer_volume(scan).ndim
        layer = self.viewer.add_points(
            np.empty((0, nd)),
            name=name,
            size=4,
            scale=scan.scale[-nd:],
            translate=scan.translate[-nd:],
            face_color=POSITIVE,
        )
        layer.mouse_drag_callbacks.append(self._on_mouse)
        self.viewer.layers.selection.active = layer
        return layer

    def _toggled(self, on: bool) -> None:
        if on:
            self.warm_up()
        if on and self._scan_layer() is not None:
            layer = self.points_layer(self.value.value())
            layer.mode = "pan_zoom"
            self.viewer.layers.selection.active = layer

    def _on_mouse(self, layer: Any, event: Any) -> None:
        if not self.click_button.isChecked() or event.type != "mouse_press":
            return
        positive = event.button != 2 and "Control" not in {str(m) for m in event.modifiers}
        voxel = tuple(int(round(v)) for v in layer.world_to_data(event.position)[-layer.ndim :])
        self.add_click(voxel, positive)

    # --- a click ----------------------------------------------------------------------------------
    def painted_mask(self, data: np.ndarray) -> np.ndarray:
        """The voxels the user painted (never changed by a click), accumulated click after click."""
        from ..core.corrections import user_voxels

        if self._written is not None and self._written.shape == data.shape:
            now = data != self._written
            return now if self._painted is None else (now | self._painted)
        mask = self._mask_layer()
        baseline = self._baselines().get(getattr(mask, "unique_id", None))
        return user_voxels(data, baseline) if baseline is not None else data != 0

    def add_click(self, voxel: tuple[int, ...], positive: bool) -> bool:
        """Record the click, draw it and re-predict its crop in a worker; False when one is running."""
        from ..core.interactive import Click
        from .workers import Job

        if self.job is not None and self.job.running:
            self.status.setText("still predicting the last click")
            return False
        scan, path = self._scan_layer(), self.model_combo.currentData()
        if scan is None or not path:
            self.status.setText("open a scan and pick an interactive model first")
            return False
        if self._scan_of_clicks is not scan:  # clicks belong to one scan
            self.clicks, self._written, self._painted, self._scan_of_clicks = [], None, None, scan
        value = self.value.value()
        volume = L.layer_volume(scan)
        mask = self._mask_layer()
        labels = np.asarray(mask.data) if mask is not None else np.zeros(volume.spatial_shape, np.uint16)
        painted = self.painted_mask(labels)
        click = Click(value, positive, tuple(voxel))
        points = self.points_layer(value)
        points.add(np.asarray([voxel], float))
        points.face_color[-1] = np.array([0, 0.78, 0, 1] if positive else [1, 0.19, 0.19, 1])
        points.refresh()
        clicks = [*self.clicks, click]
        key = (scan_id(scan), path)

        def factory(cancel: Any) -> Any:
            return self._predict(volume, path, key, clicks, labels, painted)

        self.status.setText("predicting...")
        self.job = Job(
            factory,
            on_done=lambda step: self._landed(step, click, painted),
            on_error=lambda msg, exc: self.status.setText(msg),
            name="click",
        )
        return True

    def _predict(
        self,
        volume: Any,
        path: str,
        key: tuple[Any, ...],
        clicks: list[Any],
        labels: np.ndarray,
        painted: np.ndarray,
    ) -> Any:
        """The worker's generator: load the model once per scan and model, then one ``refine_step``."""
        from ..core.interactive import refine_step
        from ..core.progress import Progress

        yield Progress(0, 1, "click", "predicting the crop")
        with self._session_lock:  # a warm-up may be compiling the crop: wait for it, do not compile twice
            session = self.session_for(volume, path, key)
            return refine_step(session, clicks, labels, painted)

    def session_for(self, volume: Any, path: str, key: tuple[Any, ...]) -> Any:
        """The session of this scan and model (loaded once); call with ``_session_lock`` held."""
        from ..core import checkpoint
        from ..core.interactive import start_session

        if self._key != key or self._session is None:
            model, meta = checkpoint.load(path)
            self._session, self._key = start_session(volume, model, meta), key
        return self._session

    # --- fit ----------------------------------------------------------------------------------
    def check_fit(self) -> list[str]:
        """Compare the scan with the click model's training scans (``core.domain.check_scan``, what
        ``seg-studio refine`` warns about) and keep the note in view while it does not fit. Returns
        the lines shown (empty when it fits, or without a scan or model)."""
        from ..core import domain
        from ..core.checkpoint import read_meta

        scan, path = self._scan_layer(), self.model_combo.currentData()
        key = (scan_id(scan), path) if scan is not None and path else None
        if key == self._fit_key:
            return self.fit_warnings()
        self._fit_key = key
        lines: list[str] = []
        if key is not None:
            try:
                meta = read_meta(path)
                if meta.domain is not None:
                    found = domain.check_scan(meta.domain, L.layer_volume(scan))
                    lines = [w.message for w in found if w.severity != "note"]  # e.g. "slice by slice"
            except Exception as exc:  # noqa: BLE001 - the check informs; a click still says what fails
                log.info("could not check the click model against the scan: %s", exc)
        name = Path(path).stem if path else ""
        self.fit_note.setText(
            f"{name} was not trained on scans like this one; clicks may not give what you expect:\n- "
            + "\n- ".join(lines)
            if lines
            else ""
        )
        self.fit_note.setVisible(bool(lines))
        self._fit_lines = lines
        return self.fit_warnings()

    def fit_warnings(self) -> list[str]:
        """The lines of the fit note now (empty when hidden)."""
        return list(self._fit_lines)

    # --- warm-up ----------------------------------------------------------------------------------
    def warm_up(self) -> bool:
        """Compile the chosen model for this scan's first crops in a worker (see the module); False when
        there is nothing to warm (no scan or model) or it is warm or warming already. The fit note
        follows the same events (a model chosen, a scan opened, the tab shown)."""
        from .workers import Job

        self.check_fit()
        scan, path = self._scan_layer(), self.model_combo.currentData()
        if scan is None or not path:
            return False
        key = (scan_id(scan), path)
        if self._warm_key == key:
            return False
        if self.warm_job is not None and self.warm_job.running:
            self.warm_job.cancel()
        volume = L.layer_volume(scan)
        self._warm_key = key
        self.warm_job = Job(
            lambda token: self._warm(volume, path, key, token),
            on_error=lambda msg, exc: log.info("click warm-up failed (the first click compiles): %s", msg),
            name="click warm-up",
        )
        return True

    def _warm(self, volume: Any, path: str, key: tuple[Any, ...], token: Any) -> Any:
        """The worker: compile the model for every window size a click's crop can take on this scan
        (``core.interactive.warm_up``); cancelled between sizes."""
        import time

        from ..core.interactive import warm_up, window_sizes
        from ..core.progress import Progress

        t0 = time.perf_counter()
        yield Progress(0, 1, "warming up", "compiling the interactive model for this scan")
        with self._session_lock:
            token.raise_if_cancelled()
            session = self.session_for(volume, path, key)
            sizes = window_sizes(session)
        for k, size in enumerate(sizes[:4]):
            with self._session_lock:  # a click may go in between two sizes
                token.raise_if_cancelled()
                warm_up(self.session_for(volume, path, key), [size], cancel=token)
            yield Progress(k + 1, min(4, len(sizes)), "warming up", f"compiled for {list(size)} crops")
        log.info("click warm-up of %s took %.1f s", Path(path).name, time.perf_counter() - t0)
        return None

    def warmed_up(self) -> bool:
        return self.warm_job is None or not self.warm_job.running

    # --- fine-tune --------------------------------------------------------------------------------
    def finetune(self) -> bool:
        """Fine-tune the chosen interactive model on the scan, its mask and the clicks made on it."""
        path = self.model_combo.currentData()
        if not path or self.on_finetune is None:
            self.status.setText("pick an interactive model first")
            return False
        if not self.clicks or self._scan_of_clicks is not self._scan_layer():
            self.status.setText("click on the scan first: the clicks and the corrected mask train the model")
            return False
        return self.on_finetune(Path(path), list(self.clicks))

    def add_model(self, path: Path, select: bool = True) -> None:
        """List a new interactive checkpoint (a fine-tuned child) and, by default, choose it."""
        from ..core.checkpoint import read_meta

        meta = read_meta(path)
        if self.model_combo.findData(str(path)) < 0:
            self.model_combo.addItem(f"{Path(path).stem} ({meta.spatial_dims}D)", str(path))
        if select:
            self.model_combo.setCurrentIndex(self.model_combo.findData(str(path)))

    def clicks_on(self, scan: Any) -> list[Any]:
        """The clicks made on ``scan`` (what a fine-tune of its mask may learn from)."""
        return list(self.clicks) if scan is not None and scan is self._scan_of_clicks else []

    def _landed(self, step: Any, click: Any, painted: np.ndarray) -> None:
        """Main thread: the new labels as one undo step; the painted voxels remembered."""
        mask = self._mask_layer()
        if mask is None:
            scan = self._scan_layer()
            mask = self.viewer.add_labels(
                np.zeros(step.labels.shape, step.labels.dtype),
                name=L.derived_name(scan.name, "mask"),
                scale=scan.scale,
                translate=scan.translate,
                opacity=0.5,
            )
        L.replace_labels(mask, step.labels)
        self.clicks.append(click)
        self._written, self._painted, self.last_step = np.array(mask.data, copy=True), painted, step
        self.status.setText(
            f"click {len(self.clicks)}: {step.changed} voxels changed in {step.seconds:.2f} s"
        )

    def save_beside(self, labels_path: Path) -> Path | None:
        """Write the clicks beside saved labels (``NAME.clicks.json``) so the next fine-tune can use them."""
        from ..core.atomic import split_suffix
        from ..core.interactive import write_clicks

        if not self.clicks:
            return None
        stem, _ = split_suffix(labels_path)
        return write_clicks(Path(labels_path).with_name(stem + ".clicks.json"), self.clicks)
