"""Autosave of mask edits every minute, and the offer to restore them after a crash.

The Qt side of ``core.autosave``: a timer, a dirty flag set by the mask layer's paint/data events,
and a write in a worker (the array is copied on the main thread first, so the user keeps painting
while the file is compressed). When a scan is opened that has an autosave, ``offered`` fires and
the panel shows Restore / Discard. Not a widget: a QObject owned by the panel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..core import autosave as core_autosave
from . import layers as L

log = logging.getLogger(__name__)

INTERVAL_S = 60


class Autosaver(QObject):
    """Writes the mask of the current scan to the app-data dir when it changed since the last write."""

    #: an autosave exists for a scan just opened: (scan layer, AutosaveInfo)
    offered = Signal(object, object)
    #: a write finished: the path
    saved = Signal(object)

    def __init__(
        self,
        viewer: Any,
        scan_layer: Callable[[], Any],
        mask_layer: Callable[[Any], Any],
        interval_s: float = INTERVAL_S,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._scan_layer = scan_layer
        self._mask_layer = mask_layer
        self.dirty = False
        self.job: Any = None
        self.last_path: Path | None = None
        self.timer = QTimer(self)
        self.timer.setInterval(int(interval_s * 1000))
        self.timer.timeout.connect(self.tick)
        self.timer.start()
        viewer.layers.events.inserted.connect(self._layer_inserted)

    def watch_existing(self) -> None:
        """Watch the layers that were open before the panel (call after connecting ``offered``)."""
        for layer in list(self.viewer.layers):
            self._watch(layer)

    def key(self, scan_layer: Any) -> str:
        return core_autosave.scan_key(L._md(scan_layer).get("source"), fallback=scan_layer.name)

    # --- watching edits -----------------------------------------------------------------------------
    def _layer_inserted(self, event: Any) -> None:
        self._watch(event.value)

    def _watch(self, layer: Any) -> None:
        if L.is_labels(layer):
            layer.events.paint.connect(self._mark)
            layer.events.data.connect(self._mark)
        elif L.is_scan_layer(layer):
            found = core_autosave.find_autosave(self.key(layer))
            if found is not None:
                self.offered.emit(layer, found)

    def _mark(self, event: Any = None) -> None:
        self.dirty = True

    # --- writing ------------------------------------------------------------------------------------
    def _snapshot(self) -> tuple[Any, str, str] | None:
        scan_layer = self._scan_layer()
        mask = self._mask_layer(scan_layer) if scan_layer is not None else None
        if mask is None:
            return None
        scan = L.layer_volume(scan_layer)
        labels = L.labels_volume(mask, scan)
        labels = labels.with_array(np.array(labels.array, copy=True), meta={"kind": "labels"})
        return labels, self.key(scan_layer), str(scan.source or scan_layer.name)

    def autosave_now(self) -> Path | None:
        """Write now, on this thread (tests, and before the app closes); None when there is no mask."""
        snap = self._snapshot()
        if snap is None:
            return None
        self.dirty = False
        self.last_path = core_autosave.write_autosave(*snap)
        self.saved.emit(self.last_path)
        return self.last_path

    def tick(self) -> None:
        """Timer slot: write in a worker if the mask changed and no write is running."""
        if not self.dirty or (self.job is not None and self.job.running):
            return
        try:
            snap = self._snapshot()
        except Exception as exc:  # noqa: BLE001 - an autosave must never disturb the user
            log.warning("autosave skipped: %s", exc)
            return
        if snap is None:
            return
        from .workers import Job

        self.dirty = False

        def write(token: Any):  # noqa: ANN202 - generator for Job
            return core_autosave.write_autosave(*snap)
            yield  # pragma: no cover

        def done(path: Path) -> None:
            self.last_path = path
            self.saved.emit(path)

        def failed(message: str, exc: BaseException) -> None:
            from napari.utils.notifications import show_warning

            self.dirty = True
            show_warning(f"autosave failed: {message}")

        self.job = Job(write, on_done=done, on_error=failed, name="autosave")

    # --- restoring ------------------------------------------------------------------------------------
    def restore(self, scan_layer: Any) -> Any:
        """Open the autosaved labels of ``scan_layer`` as a Labels layer; returns the layer."""
        vol = core_autosave.read_autosave(self.key(scan_layer))
        if vol is None:
            raise ValueError("there is no autosave for this scan")
        scan = L.layer_volume(scan_layer)
        if vol.spatial_shape != scan.spatial_shape:
            raise ValueError(f"the autosave has shape {vol.spatial_shape}, the scan {scan.spatial_shape}")
        classes = sorted(vol.labels.values(), key=lambda c: c.value) if vol.labels else []
        labels = scan.with_array(np.asarray(vol.array), labels=dict(vol.labels), meta={"kind": "labels"})
        md = L.geometry_metadata(labels, role=L.ROLE_MASK, scan_layer=scan_layer.name)
        kwargs: dict[str, Any] = {}
        if classes:
            kwargs = {"colormap": L.class_colormap(classes), "features": L.class_features(classes)}
        existing = self._mask_layer(scan_layer)
        if existing is not None and L.role(existing) == L.ROLE_MASK:
            L.replace_labels(existing, np.asarray(vol.array).astype(existing.data.dtype))
            return existing
        return self.viewer.add_labels(
            np.asarray(vol.array),
            name=L.derived_name(scan_layer.name, "mask"),
            metadata=md,
            opacity=0.5,
            **L.layer_kwargs(scan, like=scan_layer),
            **kwargs,
        )

    def discard(self, scan_layer: Any) -> None:
        core_autosave.discard_autosave(self.key(scan_layer))

    def stop(self) -> None:
        self.timer.stop()
