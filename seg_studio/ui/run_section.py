"""Run: predict in a worker with a progress bar, ETA and Cancel; results become layers.

The worker loads the model (or builds an untrained variant), drives ``inference.iter_predict`` and,
for a scan without a mask of ours, builds the mask's Labels layer with the checkpoint's class names and
colours; the main thread inserts it and lands the rest one step per event-loop turn (``self.turns``,
see ``staging``: its vispy visual, its layer controls, its paint/polygon overlays, then the
selection), so no turn pays all of napari's work for a new layer. The optional maps (probabilities,
uncertainty, one per attention gate level) are prepared in the worker, their Image layers included,
and listed in the "show maps" menu; a map is inserted when first shown (additive, colormapped, on the
scan's physical grid), its visual in the next turn and its layer controls when first selected (a
layer's GUI work costs the main thread 0.1-0.4 s, so none is done for a map the user does not look at). A re-run over an existing mask writes into it as one undoable
step (Ctrl+Z brings the previous mask back) and, with "Keep my corrections" ticked (the default),
fills only the voxels the user has not changed since the model wrote them (``core.corrections``).
The scan is only read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.corrections import ModelBaseline, merge_prediction, user_voxels
from ..core.progress import Progress
from ..core.volume import LabelInfo, Volume
from . import layers as L
from .model_section import ModelChoice, ModelSection
from .staging import TurnQueue, insert_staged, set_progress

log = logging.getLogger(__name__)

DEFAULT_CLASSES = [LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "foreground", (255, 64, 64))]
#: Opacity of the output maps: 0.7 washed the scan out where attention sits near 0.5.
MAP_OPACITY = 0.5


def format_progress(p: Progress) -> str:
    eta = ""
    if p.eta_s is not None and p.eta_s >= 0:
        eta = f", {p.eta_s:.0f} s left" if p.eta_s >= 1 else ", <1 s left"
    unit = f" {p.done}/{p.total}" if p.total > 1 else ""
    text = f"{p.stage or 'working'}{unit}{eta}"
    return f"{text} - {p.message}" if p.message else text


def build_untrained(choice: ModelChoice, scan: Volume, classes: list[Any]) -> tuple[Any, Any]:
    """A registry variant with random weights, shaped for this scan and these classes (worker side)."""
    from ..core import checkpoint
    from ..core.models import create_model

    model = create_model(
        choice.variant,
        spatial_dims=scan.ndim,
        in_channels=scan.channels,
        out_channels=len(classes),
        **choice.config,
    )
    meta = checkpoint.new_meta(
        model,
        architecture=choice.variant,
        arch_args=dict(choice.config),
        classes=[checkpoint.ClassInfo(int(c.value), str(c.name), tuple(c.color)) for c in classes],
        normalization={"mode": "zscore"},
        card={"title": f"untrained {choice.variant}", "untrained": True},
    )
    return model, meta


def load_choice(choice: ModelChoice, scan: Volume, classes: list[Any]) -> tuple[Any, Any]:
    """Load the checkpoint or build the untrained variant (runs in the worker)."""
    if choice.untrained:
        return build_untrained(choice, scan, classes)
    from ..core import checkpoint

    return checkpoint.load(choice.checkpoint, device="cpu")


def _predict_job(choice, scan, scan_name, classes, options, cached, new_mask, grid, shown, token):  # noqa: ANN001, ANN202 - worker generator
    from ..core.inference import PredictOptions, iter_predict

    if cached is None:
        yield Progress(0, 1, "loading model", choice.label)
        model, meta = load_choice(choice, scan, classes)
    else:
        model, meta = cached
    token.raise_if_cancelled()
    pred = yield from iter_predict(scan, model, meta, PredictOptions(**options), cancel=token)
    # what the maps need (float data, ranges, metadata) is built here, off the GUI thread, and so are
    # a new mask's layer and the layers of the maps not shown yet (napari's layer model is plain
    # Python; only its visual and controls need the GUI thread)
    maps = L.output_maps(pred, list(meta.classes), scan_name)
    for m in maps:
        if m.name not in shown:
            m.layer = L.new_map_layer(m, grid, MAP_OPACITY)
    mask = new_mask_layer(pred, list(meta.classes), scan_name, **new_mask) if new_mask else None
    return pred, model, meta, maps, mask


def mask_metadata(pred: Any, classes: list[Any], scan_name: str) -> dict[str, Any]:
    """``metadata`` of the mask layer a prediction writes: its geometry, role, scan and classes."""
    md = L.geometry_metadata(pred.labels)
    md[L.META_KEY].update(role=L.ROLE_MASK, scan_layer=scan_name, labels=L.classes_metadata(classes))
    return md


def new_mask_layer(pred: Any, classes: list[Any], scan_name: str, name: str, place: dict[str, Any]) -> Any:
    """A new Labels layer holding ``pred``'s labels (a copy), not yet in a viewer (worker or main thread)."""
    return L.new_labels_layer(
        np.array(pred.labels.array),
        name=name,
        colormap=L.class_colormap(classes),
        features=L.class_features(classes),
        metadata=mask_metadata(pred, classes, scan_name),
        opacity=0.5,
        **place,
    )


class RunSection(QGroupBox):
    """Predict / Cancel, a progress bar and what the worker is doing."""

    #: emitted when a prediction job ends: "done", "cancelled" or "error"
    finished = Signal(str)

    def __init__(
        self,
        viewer: Any,
        models: ModelSection,
        scan_layer: Callable[[], Any],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__("Run", parent)
        self.viewer = viewer
        self.models = models
        self._scan_layer = scan_layer
        self.job: Any = None
        self.last_prediction: Any = None
        self.last_error: str = ""
        #: mask layer id -> what the model wrote into it (tells the user's corrections from the rest)
        self._baselines: dict[Any, ModelBaseline] = {}
        #: the user's voxels the last prediction kept (None: it made a new mask)
        self.last_kept: int | None = None
        self._kept_note = ""
        viewer.layers.events.removed.connect(
            lambda e: self._baselines.pop(getattr(e.value, "unique_id", None), None)
        )
        self._t0 = 0.0
        #: what is left of landing a result ("landing") or of showing a map ("map"), one step a turn
        self.turns = TurnQueue(self._drained)
        self._finish_when_drained = False
        #: the maps of the current results: name -> (map, its scan layer); layers only once shown
        self.maps: dict[str, tuple[L.OutputMap, Any]] = {}
        #: (prediction, its maps) built in the worker, for ``_add_maps``
        self._prepared_maps: tuple[Any, list[L.OutputMap]] | None = None
        #: (prediction, the new mask's layer or None) built in the worker, for ``add_prediction``
        self._prepared_mask: tuple[Any, Any] | None = None

        self.predict_button = QPushButton("Predict")
        self.predict_button.setToolTip("segment the selected scan with the chosen model (in the background)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        set_progress(self.bar, 0)
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        self.keep_corrections = QCheckBox("keep my corrections")
        self.keep_corrections.setChecked(True)
        self.keep_corrections.setToolTip(
            "Predict and Re-run fill only the voxels you have not painted, filled or erased since the "
            "model wrote them; untick to replace the whole mask (Ctrl+Z undoes either in one step)"
        )
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(self.predict_button, 2)
        row.addWidget(self.cancel_button, 1)
        lay.addLayout(row)
        lay.addWidget(self.keep_corrections)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        self.maps_button = QToolButton()
        self.maps_button.setText("show maps")
        self.maps_button.setToolTip("probability, uncertainty and attention maps of the last prediction")
        self.maps_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.maps_button.setMenu(QMenu(self.maps_button))
        self.maps_button.setEnabled(False)
        lay.addWidget(self.maps_button)
        self.predict_button.clicked.connect(lambda: self.predict())
        self.cancel_button.clicked.connect(self.cancel)

    @property
    def busy(self) -> bool:
        return (self.job is not None and self.job.running) or bool(self.turns.pending("landing"))

    # --- actions -----------------------------------------------------------------------------------
    def predict(self) -> bool:
        """Start a prediction on the current scan; returns False (with a notification) if it cannot."""
        from napari.utils.notifications import show_error, show_warning

        from .workers import Job

        if self.busy:
            show_warning("a prediction is already running; cancel it first")
            return False
        layer = self._scan_layer()
        if layer is None:
            show_error("open a scan first (File > Open, or drag a file onto the window)")
            return False
        choice = self.models.current_choice()
        if choice is None:
            show_error("pick a model first: a checkpoint, or a variant to run untrained")
            return False
        try:
            scan = L.layer_volume(layer)
        except ValueError as exc:
            show_error(str(exc))
            return False
        mask = self.mask_layer(layer)
        # no mask of ours to write into: the worker builds the new mask's layer (names need Qt's fonts)
        new_mask = None
        if mask is None or L.role(mask) != L.ROLE_MASK:
            new_mask = {"name": L.derived_name(layer.name, "mask"), "place": L.layer_kwargs(scan, like=layer)}
        classes = L.layer_classes(mask) if (choice.untrained and mask is not None) else DEFAULT_CLASSES
        if choice.untrained and len(classes) < 2:
            classes = DEFAULT_CLASSES
        if choice.untrained:
            show_warning(f"{choice.variant} is untrained: its mask is noise until you fine-tune it")
        grid = L.scan_grid(layer, scan)
        shown = {ly.name for ly in self.viewer.layers if L.role(ly) == L.ROLE_OUTPUT}
        key = (str(choice.checkpoint or f"variant:{choice.variant}"), scan.ndim, scan.channels, len(classes))
        if choice.checkpoint is not None:
            key += (choice.checkpoint.stat().st_mtime_ns,)
        cached = self.models.cached_model(key)
        options = self.models.predict_options()
        self.last_error = ""
        self._t0 = time.perf_counter()
        set_progress(self.bar, 0)
        self.status.setText(f"starting: {choice.label} on {layer.name}")
        self.predict_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.job = Job(
            lambda token: _predict_job(
                choice, scan, layer.name, classes, options, cached, new_mask, grid, shown, token
            ),
            on_progress=self._progress,
            on_done=lambda result: self._done(result, layer, scan, key),
            on_error=self._error,
            on_cancelled=self._cancelled,
            on_finished=self._job_finished,
            name="prediction",
        )
        self._outcome = "done"
        return True

    def cancel(self) -> None:
        """Stop the running prediction; nothing is added and nothing is written."""
        if self.busy:
            self.status.setText("cancelling...")
            self.job.cancel()

    # --- worker callbacks (main thread) -------------------------------------------------------------
    def _progress(self, p: Progress) -> None:
        set_progress(self.bar, int(p.fraction * 1000))
        self.status.setText(format_progress(p))

    def _done(
        self, result: tuple[Any, Any, Any, Any], layer: Any, scan: Volume, key: tuple[Any, ...]
    ) -> None:
        pred, model, meta, maps, new_mask = result
        self._prepared_maps = (pred, maps)
        self._prepared_mask = (pred, new_mask)
        self.models.remember_model(key, model, meta)
        if layer not in list(self.viewer.layers):
            self.status.setText("the scan was closed; the prediction was dropped")
            return
        t0 = time.perf_counter()
        mask = self.add_prediction(pred, meta, layer)
        L._md(mask)["made_by"] = key[0]  # the checkpoint (or variant) behind this mask: a DICOM SEG names it
        log.info("prediction layers added in %.2f s (main thread)", time.perf_counter() - t0)
        self.last_prediction = pred
        if getattr(pred, "notes", None):
            from napari.utils.notifications import show_info

            for note in pred.notes:
                show_info(note)
        set_progress(self.bar, 1000)
        ran = getattr(pred, "backend", "")
        where = f"{pred.device} ({ran})" if ran and not ran.startswith("torch") else pred.device
        self.status.setText(f"done in {time.perf_counter() - self._t0:.1f} s on {where}{self._kept_note}")

    def _error(self, message: str, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._outcome = "error"
        self.last_error = message
        self.status.setText(f"failed: {message}")
        show_error(message)

    def _cancelled(self) -> None:
        self._outcome = "cancelled"
        set_progress(self.bar, 0)
        self.status.setText("cancelled; nothing was added")

    def _job_finished(self) -> None:
        if self.turns.pending("landing"):
            # the result is still landing, one step per event-loop turn: report the end after it
            self._finish_when_drained = True
            self.cancel_button.setEnabled(False)
            return
        self.predict_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.finished.emit(self._outcome)

    def user_voxels(self, mask: Any) -> np.ndarray | None:
        """The voxels of ``mask`` the user corrected (see ``core.corrections``); None if the model never
        wrote into it."""
        base = self._baselines.get(mask.unique_id)
        return user_voxels(np.asarray(mask.data), base) if base is not None else None

    # --- layers -----------------------------------------------------------------------------------
    def mask_layer(self, scan_layer: Any) -> Any:
        """The Labels layer that holds the mask of ``scan_layer`` (ours, else the only one that fits)."""
        shape = (
            np.shape(scan_layer.data)[-len(scan_layer.scale) :]
            if not getattr(scan_layer, "rgb", False)
            else None
        )
        # a mask another open scan's prediction made is that scan's, even when the shapes match (the next
        # X-ray of a series): predicting this scan must not write into it
        others = {ly.name for ly in L.scan_layers(self.viewer)} - {scan_layer.name}
        fits = [
            ly
            for ly in L.labels_layers(self.viewer)
            if (shape is None or tuple(np.shape(ly.data)) == tuple(shape))
            and L._md(ly).get("scan_layer") not in others
        ]
        ours = [ly for ly in fits if L._md(ly).get("scan_layer") == scan_layer.name]
        if ours:
            return ours[-1]
        return fits[-1] if len(fits) == 1 else None

    def add_prediction(self, pred: Any, meta: Any, scan_layer: Any) -> Any:
        """Turn a ``Prediction`` into layers; returns the mask layer."""
        classes = list(meta.classes)
        labels = np.asarray(pred.labels.array)
        ready = self._prepared_mask
        self._prepared_mask = None
        mask = self.mask_layer(scan_layer)
        if mask is not None and L._md(mask).get("role") == L.ROLE_MASK:
            md = mask_metadata(pred, classes, scan_layer.name)
            keep = self.keep_corrections.isChecked()
            before = self._baselines.get(mask.unique_id)
            merged, baseline, self.last_kept = merge_prediction(
                np.asarray(mask.data), labels, before, keep=keep
            )
            if keep and before is None:
                # e.g. restored from an autosave: nothing tells the corrections from the rest
                self._kept_note = (
                    "; the mask has no prediction behind it, so all of it was kept "
                    "(untick 'keep my corrections' to replace it)"
                )
            elif self.last_kept:
                self._kept_note = f"; {self.last_kept} voxel(s) you corrected were kept"
            else:
                self._kept_note = ""
            L.replace_labels(mask, merged)  # one undo step
            L.set_classes(mask, classes)
            mask.metadata = {**mask.metadata, **md}
        else:
            self.last_kept, self._kept_note = None, ""
            baseline = ModelBaseline.of_prediction(labels)
            if ready is not None and ready[0] is pred and ready[1] is not None:
                mask = ready[1]  # built by the worker
            else:  # a mask of ours went while the worker ran, or a caller's own prediction
                name = L.derived_name(scan_layer.name, "mask")
                place = L.layer_kwargs(pred.labels, like=scan_layer)
                mask = new_mask_layer(pred, classes, scan_layer.name, name, place)
            # a new layer cost the main thread 150-300 ms in one turn (its GL visual, overlays, layer
            # controls, the selection switching those controls): each comes in a turn of its own
            insert_staged(self.viewer, mask, self.turns)
            for key in L.detached_tool_overlays(mask):
                self.turns.add(lambda k=key: L.restore_tool_overlays(mask, k))
        self._baselines[mask.unique_id] = baseline
        mode = mask.mode
        self.turns.add(lambda: self._select_mask(mask, mode))
        self._add_maps(pred, classes, scan_layer)
        return mask

    def _select_mask(self, mask: Any, mode: Any) -> None:
        """The last landing step: the mask, complete, becomes the selected layer, in pan/zoom unless the
        user picked a tool since it landed (``mode``: its mode then)."""
        L.restore_tool_overlays(mask)
        if mask in self.viewer.layers:
            self.viewer.layers.selection.active = mask
            if mask.mode == mode:
                mask.mode = "pan_zoom"

    def finish_landing(self) -> None:
        """Run what is left of landing a result (or showing a map) now."""
        self.turns.run_all()

    def _add_maps(self, pred: Any, classes: list[Any], scan_layer: Any) -> None:
        """Offer the probability / uncertainty / attention maps of ``pred`` (see ``L.output_maps``).

        A napari layer costs its GL visual, its layer controls and list events on the main thread
        (0.35-1.5 s each, by machine load, whatever its data or visibility), so no map becomes a layer
        when a result lands: the maps menu lists them, and a map becomes a layer when the user first
        shows it (``show_map``). Maps already shown for this scan get the new data in place, one per
        event-loop turn (no new GL visual; the user's visibility, colormap and opacity stay); maps of
        an earlier run that this one does not make go.
        """
        ready = self._prepared_maps
        self._prepared_maps = None
        if ready is not None and ready[0] is pred:
            maps = ready[1]
        else:  # e.g. a caller that passes its own prediction: build them here
            maps = L.output_maps(pred, classes, scan_layer.name)
        wanted = {m.name for m in maps}
        for ly in [
            ly
            for ly in self.viewer.layers
            if L.role(ly) == L.ROLE_OUTPUT and L._md(ly).get("scan_layer") == scan_layer.name
        ]:
            if ly.name not in wanted:
                self.viewer.layers.remove(ly)
        self.maps = {n: v for n, v in self.maps.items() if v[1] is not scan_layer}
        self.maps.update({m.name: (m, scan_layer) for m in maps})
        for m in maps:
            if self._map_layer(m.name) is not None:
                self.turns.add(lambda m=m: self._update_map(m))
        self._rebuild_maps_menu()

    def _map_layer(self, name: str) -> Any:
        return next(
            (ly for ly in self.viewer.layers if ly.name == name and L.role(ly) == L.ROLE_OUTPUT), None
        )

    def _drained(self, kind: str) -> None:
        """The last step of a kind ran: a job whose result was still landing now reports its end."""
        if kind == "landing" and self._finish_when_drained:
            self._finish_when_drained = False
            self._job_finished()

    def _update_map(self, spec: L.OutputMap) -> None:
        old = self._map_layer(spec.name)
        entry = self.maps.get(spec.name)
        if old is None or entry is None:
            return
        place = L.layer_kwargs(spec.volume, like=entry[1])
        if (
            old.data.shape == spec.data.shape
            and np.allclose(old.scale, place["scale"])
            and np.allclose(old.translate, place["translate"])
        ):
            old.data = spec.data
            old.contrast_limits = spec.contrast_limits
            old.metadata = {**old.metadata, **spec.metadata}
            return
        shown = old.visible
        self.viewer.layers.remove(old)  # another grid: a new layer, and only if the user was looking
        if shown:
            self.show_map(spec.name)

    # --- the maps menu: a map becomes a layer when first shown ------------------------------------------
    def map_names(self) -> list[str]:
        """The maps of the current results (``"<scan>: p(class)"`` ...), shown or not."""
        return list(self.maps)

    def show_map(self, name: str, visible: bool = True) -> Any:
        """Show (creating its layer on first use) or hide one map; returns its layer or None."""
        from napari.utils.notifications import show_error

        entry = self.maps.get(name)
        layer = self._map_layer(name)
        if layer is not None:
            layer.visible = visible
        elif visible and entry is not None and entry[1] in list(self.viewer.layers):
            try:
                layer = self._add_map(entry[0], entry[1])
            except Exception as exc:  # noqa: BLE001 - a map is optional: say so, keep the rest working
                log.warning("could not show %s", name, exc_info=True)
                show_error(f"could not show {name}: {exc}")
                layer = None
        self._sync_maps_menu()
        return layer

    def _rebuild_maps_menu(self) -> None:
        menu = self.maps_button.menu()
        menu.clear()
        for name in self.maps:
            action = menu.addAction(self.maps[name][0].what)
            action.setCheckable(True)
            action.setData(name)
            action.triggered.connect(lambda checked, n=name: self.show_map(n, checked))
        self.maps_button.setEnabled(bool(self.maps))
        self._sync_maps_menu()

    def _sync_maps_menu(self) -> None:
        for action in self.maps_button.menu().actions():
            layer = self._map_layer(action.data())
            action.setChecked(bool(layer is not None and layer.visible))

    def _add_map(self, spec: L.OutputMap, scan_layer: Any) -> Any:
        """The map's Image layer (shown, additive, on the scan's grid), inserted unselected (the mask
        keeps the selection); its visual comes in the next turn, its layer controls when the user
        first selects it (``staging.insert_staged``)."""
        layer, spec.layer = spec.layer, None  # the worker's layer serves once: a later show makes its own
        if layer is None:
            layer = L.new_map_layer(spec, L.scan_grid(scan_layer), MAP_OPACITY)
        layer.visible = True
        insert_staged(self.viewer, layer, self.turns, kind="map", controls_when_selected=True)
        layer.events.visible.connect(lambda e: self._sync_maps_menu())
        return layer
