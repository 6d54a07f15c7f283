"""Where to check first: after each prediction, the slices (3D) or regions (2D) the model is least sure of.

A thin layer over ``core.review``: when a prediction lands, a worker ranks the scan's slices or regions
by the model's uncertainty (from the prediction's probabilities, or, when the user did not ask for
them, from one more pass of the same model with probabilities on: the scan is never blocked on the GUI
thread). "Jump to next" steps the viewer to the next place in that order: the slice in 3D, the region
centred and zoomed in 2D.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..core.progress import Progress
from . import layers as L

log = logging.getLogger(__name__)


def _review_job(pred: Any, scan: Any, model: Any, meta: Any, options: dict[str, Any], token: Any):  # noqa: ANN202 - worker generator
    """The review order of ``pred``: from its probabilities, else from a second pass that has them."""
    from ..core.review import review_order

    probs, spread = pred.probabilities, pred.uncertainty
    if probs is None:
        from ..core.inference import PredictOptions, iter_predict

        yield Progress(0, 1, "review", "scoring where the model is unsure")
        opts = {**options, "probabilities": True, "probability_dtype": "uint8", "attention": False}
        again = yield from iter_predict(scan, model, meta, PredictOptions(**opts), cancel=token)
        probs, spread = again.probabilities, again.uncertainty
    token.raise_if_cancelled()
    return review_order(probs, spread)


class ReviewSection(QGroupBox):
    """ "Next slice to check" with a jump button, refreshed after every prediction."""

    #: emitted when a review order is ready (or failed: then ``items`` is empty)
    ready = Signal()

    def __init__(
        self, viewer: Any, run: Any, models: Any, scan_layer: Callable[[], Any], parent: QWidget | None = None
    ) -> None:
        super().__init__("Where to check first", parent)
        self.viewer, self.run, self.models, self._scan_layer = viewer, run, models, scan_layer
        self.items: list[Any] = []
        self.position = 0
        self.job: Any = None
        self._layer: Any = None
        self.label = QLabel(
            "predict a scan: the slices or regions the model is least sure of are listed here"
        )
        self.label.setWordWrap(True)
        self.jump_button = QPushButton("Jump to next")
        self.jump_button.setToolTip("show the next slice (3D) or region (2D) in order of the model's doubt")
        self.jump_button.setEnabled(False)
        self.jump_button.clicked.connect(lambda: self.jump_next())
        lay = QVBoxLayout(self)
        lay.addWidget(self.label)
        row = QHBoxLayout()
        row.addWidget(self.jump_button)
        row.addStretch(1)
        lay.addLayout(row)
        run.finished.connect(self._prediction_finished)

    def _prediction_finished(self, outcome: str) -> None:
        from .workers import Job

        pred, meta = self.run.last_prediction, self.models.last_meta()
        cache = getattr(self.models, "_cache", None)
        layer = self._scan_layer()
        if outcome != "done" or pred is None or meta is None or cache is None or layer is None:
            return
        if self.job is not None and self.job.running:
            self.job.cancel()
        scan = L.layer_volume(layer)
        options = self.models.predict_options()
        self.items, self.position, self._layer = [], 0, layer
        self.jump_button.setEnabled(False)
        self.label.setText("finding where the model is least sure...")
        self.job = Job(
            lambda token: _review_job(pred, scan, cache[1], meta, options, token),
            on_done=self._done,
            on_error=self._error,
            name="review order",
        )

    def _done(self, items: list[Any]) -> None:
        self.items, self.position = list(items), 0
        self.jump_button.setEnabled(bool(self.items))
        self._say_next()
        self.ready.emit()

    def _error(self, message: str, exc: BaseException) -> None:
        self.items = []
        self.label.setText(f"no review order: {message}")
        self.ready.emit()

    def _say_next(self) -> None:
        if not self.items:
            self.label.setText("nothing to rank")
            return
        it = self.items[self.position % len(self.items)]
        total = sum(i.score for i in self.items) or 1.0
        where = (
            f"slice {it.index}"
            if it.kind == "slice"
            else f"region {it.index + 1} (rows {it.bounds[0][0]}-{it.bounds[0][1] - 1}, columns {it.bounds[1][0]}-{it.bounds[1][1] - 1})"
        )
        self.label.setText(
            f"next {it.kind} to check: {where}, {it.rank} of {len(self.items)}; "
            f"{it.score / total:.0%} of the model's doubt on this scan is there"
        )

    def jump_next(self) -> Any:
        """Show the next place in the order (and say which one comes after it); returns the item shown."""
        if not self.items:
            return None
        it = self.items[self.position % len(self.items)]
        self.position += 1
        self.show_item(it)
        self._say_next()
        return it

    def show_item(self, it: Any) -> None:
        """The viewer on ``it``: its slice in 3D; its region centred (and zoomed to it) in 2D."""
        layer = (
            self._layer
            if self._layer is not None and self._layer in list(self.viewer.layers)
            else self._scan_layer()
        )
        if layer is None:
            return
        centre = [(a + b - 1) / 2 for a, b in it.bounds]
        world = list(layer.data_to_world(centre))
        offset = self.viewer.dims.ndim - len(world)
        if it.kind == "slice":
            self.viewer.dims.set_point(offset, world[0])
            return
        camera = getattr(getattr(self.viewer, "scene", None), "camera", None) or self.viewer.camera
        self.viewer.reset_view()  # the whole image fits: zoom in from there by the region's share of it
        full = max(n * abs(s) for n, s in zip(layer.data.shape[-2:], layer.scale[-2:], strict=True))
        extent = max((b - a) * abs(s) for (a, b), s in zip(it.bounds, layer.scale[-2:], strict=True))
        if extent > 0:
            camera.zoom = camera.zoom * 0.8 * full / extent
        camera.center = tuple(world[-2:])
