"""napari writers: a Labels (or Image) layer back to disk in its source geometry via ``core.io.write``.

The Volume is rebuilt from ``metadata["seg_studio"]`` (what our reader stored), so spacing, origin
and direction are the scan's exactly, not napari's float copy of them; layers from elsewhere fall
back to their ``scale``/``translate``. Saving is atomic, label maps get the smallest integer type,
and the scan a layer came from is never overwritten.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..core.volume import LabelInfo, Volume

log = logging.getLogger(__name__)

META_KEY = "seg_studio"


def layer_data_volume(data: Any, attrs: dict[str, Any], kind: str) -> Volume:
    """A Volume from napari's ``(data, attributes)`` pair as writers receive it."""
    arr = np.asarray(data)
    md = (attrs.get("metadata") or {}).get(META_KEY) or {}
    channels = 1
    if attrs.get("rgb"):
        arr = np.moveaxis(arr, -1, 0)
        channels = arr.shape[0]
    elif int(md.get("channels", 1) or 1) > 1 and kind == "image":
        channels = int(md["channels"])
    nd = arr.ndim - (1 if channels > 1 else 0)
    if nd not in (2, 3):
        from ..core.errors import ImageWriteError

        raise ImageWriteError(f"layer {attrs.get('name')!r} has {nd} dimensions; seg_studio saves 2D or 3D")
    spatial = tuple(arr.shape[-nd:])
    shape_ok = list(md.get("shape_zyx") or []) == list(spatial)
    if md and shape_ok:
        spacing, origin, direction = md["spacing"], md["origin"], md["direction"]
    else:
        if md:
            log.warning(
                "layer %r changed shape since it was read; saving with its scale/translate", attrs.get("name")
            )
        scale = list(attrs.get("scale") or [1.0] * nd)[-nd:]
        translate = list(attrs.get("translate") or [0.0] * nd)[-nd:]
        spacing, origin = tuple(reversed(scale)), tuple(reversed(translate))
        direction = tuple(np.eye(nd).ravel())
        # e.g. a layer made with napari's own "new labels" button: it copied the scan's scale and
        # translate but not its direction; find the scan it lies on among those read in this process
        from ..core.io import find_scan_grid

        grid = find_scan_grid(spatial, spacing, origin)
        if grid is not None:
            spacing, origin, direction = grid.spacing, grid.origin, grid.direction
            md = md or {"source": str(grid.path)}
    meta = dict(md.get("meta") or {})
    meta["kind"] = kind
    if kind == "labels":
        meta.setdefault("source_kind", "image")
    labels = {
        int(d["value"]): LabelInfo(int(d["value"]), str(d["name"]), tuple(d.get("color", (255, 0, 0))))
        for d in md.get("labels") or []
    }
    source = md.get("source")
    return Volume(
        array=arr,
        spacing=tuple(spacing),
        origin=tuple(origin),
        direction=tuple(direction),
        channels=channels,
        labels=labels,
        source=Path(source) if source else None,
        meta=meta,
    )


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Labels layers."""
    from ..core import io

    vol = layer_data_volume(data, attributes, "labels")
    return [str(io.write(vol, path))]


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Image layers (never over the file the image was read from)."""
    from ..core import io

    vol = layer_data_volume(data, attributes, "image")
    vol.meta["source_kind"] = "image"
    return [str(io.write(vol, path))]
