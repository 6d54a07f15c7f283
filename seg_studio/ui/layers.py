"""Conversions between napari layers and ``Volume``, and the layers a prediction becomes.

The geometry travels in ``layer.metadata["seg_studio"]`` (spacing/origin/direction in SimpleITK
x,y,z order, the scan's source path), as the reader writes it; ``scale`` is ``spacing_zyx`` so
every layer we add lines up with the scan in physical units. These are functions, not widgets:
the sections call them on the main thread.
"""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.volume import LabelInfo, Volume

log = logging.getLogger(__name__)

META_KEY = "seg_studio"
#: metadata["seg_studio"]["role"] of layers the panel created (never used as the scan).
ROLE_MASK = "mask"
ROLE_OUTPUT = "output"


#: Width (px) of a layer name that napari's layer list shows whole at its default width. Measured
#: under Xvfb (bold 9 pt): names of 192-193 px such as "hippocampus_003: p(vessel)" showed whole,
#: "PGBM-003_19950329 T1post mask" (233 px) was cut in the middle.
LAYER_NAME_PX = 193
#: Without a QApplication to measure with: about 8 px a character.
LAYER_NAME_CHARS = 24


def _fits(text: str) -> bool:
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is None:
        return len(text) <= LAYER_NAME_CHARS
    from qtpy.QtGui import QFont, QFontMetrics

    font = QFont(QApplication.font())
    font.setBold(True)  # napari draws layer names in bold
    return QFontMetrics(font).horizontalAdvance(text) <= LAYER_NAME_PX


def derived_name(scan_name: str, what: str, sep: str = " ") -> str:
    """The name of a layer made from a scan (``what`` = "mask", "p(lung)"...) that napari shows whole.

    ``"{scan}{sep}{what}"`` when it fits; else ``"{what} ({scan shortened in the middle})"``, so what
    the layer is stays readable and the scan is still recognisable by both ends of its name.
    """
    full = f"{scan_name}{sep}{what}"
    if _fits(full):
        return full
    for keep in range(len(scan_name) - 1, 3, -1):
        head = (keep + 1) // 2
        short = f"{what} ({scan_name[:head]}\u2026{scan_name[len(scan_name) - (keep - head) :]})"
        if _fits(short):
            return short
    return what


def _md(layer: Any) -> dict[str, Any]:
    md = layer.metadata.get(META_KEY) if hasattr(layer, "metadata") else None
    return md if isinstance(md, dict) else {}


def role(layer: Any) -> str:
    return str(_md(layer).get("role", ""))


def is_labels(layer: Any) -> bool:
    # isinstance, not type(): plugin widgets get napari's PublicOnlyProxy objects
    from napari.layers import Labels

    return isinstance(layer, Labels)


def is_scan_layer(layer: Any) -> bool:
    """An Image layer the user opened (not a probability/attention map the panel added)."""
    from napari.layers import Image

    return isinstance(layer, Image) and role(layer) not in (ROLE_OUTPUT,)


def scan_layers(viewer: Any) -> list[Any]:
    return [ly for ly in viewer.layers if is_scan_layer(ly)]


def labels_layers(viewer: Any) -> list[Any]:
    return [ly for ly in viewer.layers if is_labels(ly)]


def layer_volume(layer: Any) -> Volume:
    """The Volume behind an Image (or Labels) layer, with its geometry from the metadata.

    Falls back to the layer's ``scale``/``translate`` for layers that another reader opened.
    The array is the layer's own data (no copy): callers must not write into it.
    """
    md = _md(layer)
    data = np.asarray(layer.data)
    channels = 1
    if getattr(layer, "rgb", False):
        data = np.moveaxis(data, -1, 0)
        channels = data.shape[0]
    elif int(md.get("channels", 1) or 1) > 1:
        channels = int(md["channels"])
    nd = data.ndim - (1 if channels > 1 else 0)
    if nd not in (2, 3):
        raise ValueError(f"layer {layer.name!r} has {nd} spatial dimensions; seg_studio needs 2D or 3D")
    spacing = md.get("spacing") or tuple(abs(float(s)) for s in reversed(layer.scale[-nd:]))
    origin = md.get("origin") or tuple(float(t) for t in reversed(layer.translate[-nd:]))
    direction = md.get("direction") or tuple(np.eye(nd).ravel())
    source = md.get("source")
    return Volume(
        array=data,
        spacing=tuple(spacing)[:nd],
        origin=tuple(origin)[:nd],
        direction=tuple(direction),
        channels=channels,
        source=Path(source) if source else None,
        meta={"name": layer.name, **{k: v for k, v in md.get("meta", {}).items()}},
    )


def axis_signs_zyx(volume: Volume) -> tuple[float, ...]:
    """+1/-1 per array axis (z, y, x) when the direction matrix only flips axes, else all +1.

    Most NIfTI files store the rows right-to-left and front-to-back (direction ``diag(-1, -1, 1)``)
    while a DICOM series of the same patient stores them left-to-right: without the flip the two
    would not overlay, and a NIfTI CT would show the spine at the top. A rotated or permuted
    direction cannot be shown by scale and translate alone and keeps all +1 (napari would slice
    obliquely); the full matrix stays in the metadata either way.
    """
    d = volume.direction_matrix
    diag = np.diag(d)
    if np.allclose(d, np.diag(diag)) and np.allclose(np.abs(diag), 1.0):
        return tuple(float(np.sign(v)) for v in reversed(diag))
    return (1.0,) * volume.ndim


def placement(volume: Volume) -> dict[str, tuple[float, ...]]:
    """napari's ``scale``/``translate`` for ``volume``: millimetres in the scanner's x,y,z frame
    (given in napari's z,y,x order), with axis flips applied as negative scales."""
    signs = axis_signs_zyx(volume)
    scale = tuple(s * g for s, g in zip(volume.spacing_zyx, signs, strict=True))
    return {"scale": scale, "translate": tuple(volume.origin_zyx)}


@dataclass(frozen=True)
class Grid:
    """Where a scan layer sits: its ``scale``, ``translate`` and spatial shape (plain values, so a
    worker can place layers on it without touching the layer)."""

    scale: tuple[float, ...]
    translate: tuple[float, ...]
    shape: tuple[int, ...]


def scan_grid(layer: Any, volume: Volume | None = None) -> Grid:
    """The ``Grid`` of a scan layer (main thread); ``volume``: its ``layer_volume``, if at hand."""
    shape = (volume or layer_volume(layer)).spatial_shape
    nd = len(shape)
    return Grid(
        tuple(float(s) for s in layer.scale[-nd:]),
        tuple(float(t) for t in layer.translate[-nd:]),
        tuple(shape),
    )


def layer_kwargs(volume: Volume, like: Any | None = None) -> dict[str, Any]:
    """``scale``/``translate`` for a new layer on ``volume``'s grid, aligned with ``like`` (a scan
    layer or its ``Grid``)."""
    if like is not None:
        nd = volume.ndim
        grid = like if isinstance(like, Grid) else None
        like_scale = grid.scale[-nd:] if grid else tuple(like.scale[-nd:])
        like_shape = grid.shape if grid else layer_volume(like).spatial_shape
        translate = grid.translate[-nd:] if grid else tuple(like.translate[-nd:])
        if volume.spatial_shape != like_shape:
            # a coarser map (e.g. an attention level) covering the same extent as the scan
            scale = tuple(
                s * n / m for s, n, m in zip(like_scale, like_shape, volume.spatial_shape, strict=True)
            )
            translate = tuple(
                t + (sc - ls) / 2 for t, sc, ls in zip(translate, scale, like_scale, strict=True)
            )
        else:
            scale = like_scale
        return {"scale": scale, "translate": translate}
    return placement(volume)


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    """Layer metadata must survive copying and session saving: plain JSON values only."""
    try:
        return json.loads(json.dumps(meta, default=str))
    except (TypeError, ValueError):
        return {k: str(v) for k, v in meta.items()}


def layer_metadata(volume: Volume) -> dict[str, Any]:
    """``metadata["seg_studio"]``: geometry (SimpleITK x,y,z order), source, channels, labels, meta."""
    g = volume.geometry()
    g.update(
        source=str(volume.source) if volume.source else None,
        channels=volume.channels,
        labels=[
            {"value": int(li.value), "name": li.name, "color": [int(c) for c in li.color]}
            for li in sorted(volume.labels.values(), key=lambda li: li.value)
        ],
        meta=_jsonable(volume.meta),
    )
    return {META_KEY: g}


def geometry_metadata(volume: Volume, **extra: Any) -> dict[str, Any]:
    """``metadata["seg_studio"]`` exactly as the reader writes it (so the writer can rebuild the Volume)."""
    md = layer_metadata(volume)
    md[META_KEY].update(extra)
    return md


#: Candidates for values the class list does not name, most preferred first.
UNKNOWN_CANDIDATES: tuple[tuple[int, int, int], ...] = (
    (255, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
    (255, 255, 255),
    (255, 128, 0),
)


def unknown_class_color(classes: list[Any]) -> tuple[int, int, int]:
    """The colour for label values the checkpoint does not know (a new class painted for fine-tuning).

    They must be visible, and not mistaken for a known class: the candidate farthest (in RGB) from
    every class colour.
    """
    known = np.array([[int(v) for v in c.color] for c in classes if int(c.value) != 0] or [[0, 0, 0]], float)

    def distance(rgb: tuple[int, int, int]) -> float:
        return float(np.min(np.linalg.norm(known - np.array(rgb, float), axis=1)))

    return max(UNKNOWN_CANDIDATES, key=distance)


def class_colormap(classes: list[Any]) -> Any:
    """A napari label colormap from ``ClassInfo``/``LabelInfo``-like items (value, name, color).

    Background 0 is transparent; any value not in ``classes`` gets ``unknown_class_color`` so
    that voxels painted with a new class show up instead of vanishing.
    """
    from napari.utils.colormaps import DirectLabelColormap

    r, g, b = unknown_class_color(classes)
    colors: dict[int | None, Any] = {None: np.array([r / 255, g / 255, b / 255, 1.0]), 0: np.zeros(4)}
    for c in classes:
        if int(c.value) == 0:
            continue
        r, g, b = (int(v) for v in c.color)
        colors[int(c.value)] = np.array([r / 255, g / 255, b / 255, 1.0])
    return DirectLabelColormap(color_dict=colors)


def class_features(classes: list[Any]) -> dict[str, Any]:
    """The Labels features table: hovering a voxel shows its class name in the status bar."""
    return {
        "index": np.array([int(c.value) for c in classes]),
        "class": np.array([str(c.name) for c in classes]),
    }


def set_classes(layer: Any, classes: list[Any]) -> bool:
    """Give a Labels layer the colours and hover names of ``classes``, unless it has them already.

    Setting a colormap or features table re-emits layer events and repaints (130 ms of main thread
    measured on a re-run landing), so a re-run with the same classes skips it. Returns whether it set.
    """
    if _md(layer).get("labels") == classes_metadata(classes) and "class" in getattr(layer, "features", {}):
        return False
    layer.colormap = class_colormap(classes)
    layer.features = class_features(classes)
    return True


def layer_classes(layer: Any) -> list[LabelInfo]:
    """Class values, names and colours of a Labels layer (from our metadata, else its features/colormap)."""
    md = _md(layer)
    out: list[LabelInfo] = []
    for item in md.get("classes") or md.get("labels") or []:
        if isinstance(item, dict):
            out.append(
                LabelInfo(int(item["value"]), str(item["name"]), tuple(item.get("color", (255, 0, 0))))
            )
    if out:
        return out
    feats = getattr(layer, "features", None)
    if feats is not None and "index" in feats and "class" in feats:
        for v, n in zip(feats["index"], feats["class"], strict=True):
            out.append(LabelInfo(int(v), str(n), _color_of(layer, int(v))))
        return out
    values = np.unique(np.asarray(layer.data))
    values = values[values > 0][:64]
    return [LabelInfo(0, "background", (0, 0, 0))] + [
        LabelInfo(int(v), f"label {int(v)}", _color_of(layer, int(v))) for v in values
    ]


def _color_of(layer: Any, value: int) -> tuple[int, int, int]:
    try:
        rgba = np.asarray(layer.colormap.map(value)).ravel()
        return tuple(int(round(float(c) * 255)) for c in rgba[:3])  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - a colour is cosmetic
        return (255, 0, 0)


def classes_metadata(classes: list[Any]) -> list[dict[str, Any]]:
    return [{"value": int(c.value), "name": str(c.name), "color": [int(v) for v in c.color]} for c in classes]


def set_pixel_size(viewer: Any, scan_layer: Any, pixel_mm: float) -> int:
    """Give a picture that stores no pixel size (a PNG, e.g. an ultrasound frame whose pixel size is
    printed on it or in a CSV) its pixel size in mm: the scan's geometry and the scale of every layer
    lined up with it (its mask, outputs), so sizes, the default model and predictions use millimetres.
    A scan that stores its own spacing is refused (``io.set_pixel_size``). Returns the layers changed."""
    from ..core import io

    vol = io.set_pixel_size(layer_volume(scan_layer), (float(pixel_mm),))
    nd = vol.ndim
    old, shape = tuple(scan_layer.scale[-nd:]), vol.spatial_shape
    place = placement(vol)
    changed = 0
    for ly in list(viewer.layers):
        lined_up = tuple(ly.scale[-nd:]) == old and tuple(np.shape(ly.data)[-nd:]) == shape
        if ly is not scan_layer and not (lined_up and _md(ly).get("role") in (ROLE_MASK, ROLE_OUTPUT)):
            continue
        ly.scale = (*tuple(ly.scale[:-nd]), *place["scale"])  # axis flips stay negative scales
        ly.translate = (*tuple(ly.translate[:-nd]), *place["translate"])
        md = ly.metadata.setdefault(META_KEY, {})
        md["spacing"] = tuple(vol.spacing)
        md.setdefault("meta", {})["pixel_size_given"] = True
        changed += 1
    return changed


def labels_volume(labels_layer: Any, scan: Volume) -> Volume:
    """The Labels layer as a label Volume in the scan's geometry (what gets saved or trained on)."""
    arr = np.asarray(labels_layer.data)
    if arr.shape != scan.spatial_shape:
        raise ValueError(
            f"labels {labels_layer.name!r} have shape {arr.shape}, the scan has {scan.spatial_shape}"
        )
    classes = layer_classes(labels_layer)
    return Volume(
        array=arr,
        spacing=scan.spacing,
        origin=scan.origin,
        direction=scan.direction,
        labels={c.value: LabelInfo(c.value, c.name, tuple(c.color)) for c in classes},
        source=scan.source,
        meta={"kind": "labels", **({"pixel_size_given": True} if scan.meta.get("pixel_size_given") else {})},
    )


#: Overlays of a Labels layer that only its paint and polygon tools draw. napari builds their vispy
#: visuals when the layer is inserted: 60-90 ms of the first mask's landing turn (the polygon's line
#: visual alone 40-60 ms; ``ui_responsiveness.py --profile``), so a new mask gets them a turn later.
TOOL_OVERLAYS = ("polygon", "brush_stroke")
#: layer -> the tool overlays taken off it until ``restore_tool_overlays``
_DETACHED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def new_labels_layer(data: np.ndarray, **kwargs: Any) -> Any:
    """A Labels layer not yet in a viewer, without its tool overlays (see ``TOOL_OVERLAYS``).

    Insert it, then call ``restore_tool_overlays`` in a later event-loop turn, and before anything
    sets its mode (napari's mode setter reads those overlays).
    """
    from napari.layers import Labels

    layer = Labels(data, **kwargs)
    overlays = getattr(layer, "_overlays", None)
    if overlays is not None:
        taken = {key: overlays.pop(key) for key in TOOL_OVERLAYS if key in overlays}
        if taken:
            _DETACHED[layer] = taken
    return layer


def restore_tool_overlays(layer: Any, only: str | None = None) -> bool:
    """Give ``layer`` back the overlays ``new_labels_layer`` took (all, or just ``only``); idempotent.

    Returns True when none are left to restore."""
    taken = _DETACHED.get(layer)
    if not taken:
        return True
    for key in [only] if only is not None else list(taken):
        overlay = taken.pop(key, None)
        if overlay is not None and key not in layer._overlays:
            layer._overlays[key] = overlay
    if not taken:
        _DETACHED.pop(layer, None)
    return not taken


def detached_tool_overlays(layer: Any) -> list[str]:
    """The tool overlays ``layer`` still waits for."""
    return list(_DETACHED.get(layer, {}))


def replace_labels(layer: Any, new: np.ndarray) -> int:
    """Write ``new`` into a Labels layer as ONE undoable step (Ctrl+Z restores the old mask).

    Returns the number of voxels that changed. Only the changed voxels enter the history, so a
    re-run over a corrected mask costs memory in proportion to what it changed.
    """
    old = np.asarray(layer.data)
    if old.shape != new.shape:
        raise ValueError(f"new labels have shape {new.shape}, the layer has {old.shape}")
    changed = old != new
    n = int(changed.sum())
    if n:
        idx = np.nonzero(changed)
        with layer.block_history():
            layer.data_setitem(idx, new[idx].astype(old.dtype, copy=False))
    return n


# --- output maps of a prediction -----------------------------------------------------------------------

#: Additive overlays: colormaps that are black at 0, so low values add nothing (plasma, viridis and
#: turbo start blue/purple and tinted the whole scan); levels alternate so two shown stay apart.
ATTENTION_COLORMAPS = ("inferno", "magma")


@dataclass
class OutputMap:
    """One map of a prediction, ready to become an Image layer: display data, colours, limits, metadata.

    Built by ``output_maps`` off the GUI thread (the float conversion, the range and the metadata cost
    time in proportion to the volume), so showing it costs the main thread only the layer itself.
    """

    name: str
    #: what it is, without the scan ("p(lung)", "uncertainty", "attention L1"): the menu's entry
    what: str
    volume: Volume
    data: np.ndarray
    colormap: str
    contrast_limits: tuple[float, float]
    metadata: dict[str, Any]
    #: its Image layer, not yet in a viewer, when the worker made one (``new_map_layer``)
    layer: Any = None


def new_map_layer(spec: OutputMap, grid: Grid, opacity: float) -> Any:
    """``spec``'s Image layer, additive and visible on the scan's ``grid``, not yet in a viewer (a
    worker can build it: napari's layer model is plain Python)."""
    from napari.layers import Image

    return Image(
        spec.data,
        name=spec.name,
        colormap=spec.colormap,
        blending="additive",
        visible=True,
        opacity=opacity,
        contrast_limits=spec.contrast_limits,
        metadata=spec.metadata,
        **layer_kwargs(spec.volume, like=grid),
    )


def _output_map(what: str, vol: Volume, cmap: str, scan_name: str) -> OutputMap:
    arr = np.ascontiguousarray(vol.array, dtype=np.float32)
    scale = vol.meta.get("scale")
    if scale is not None and vol.array.dtype.kind == "u":  # quantised probabilities: back to [0, 1]
        arr *= np.float32(scale)
    hi = float(np.nanmax(arr)) if arr.size else 1.0
    limits = (0.0, max(hi, 1e-6) if what == "uncertainty" else 1.0)
    md = geometry_metadata(vol)
    md[META_KEY].update(role=ROLE_OUTPUT, scan_layer=scan_name)
    return OutputMap(derived_name(scan_name, what, sep=": "), what, vol, arr, cmap, limits, md)


def output_maps(pred: Any, classes: list[Any], scan_name: str) -> list[OutputMap]:
    """Probability (one per foreground class), uncertainty and attention maps of ``pred``, named
    ``"<scan>: p(class)"``, ``"<scan>: uncertainty"``, ``"<scan>: attention Lk"`` (k = 1 at the top;
    see ``derived_name`` for long scan names).

    Pure numpy: call it in the worker, right after the prediction.
    """
    maps: list[tuple[str, Volume, str]] = []
    if pred.probabilities is not None:
        probs = pred.probabilities
        arr = probs.channel_first()
        for i, c in enumerate(classes):
            if int(c.value) == 0 or i >= arr.shape[0]:
                continue
            maps.append((f"p({c.name})", probs.with_array(arr[i]) if probs.channels > 1 else probs, "green"))
    if pred.uncertainty is not None:
        maps.append(("uncertainty", pred.uncertainty, "magma"))
    n = len(pred.attention)
    for k, att in enumerate(pred.attention):
        # deepest level first (SegOutput's order); name them by level from the top for the user
        maps.append((f"attention L{n - k}", att, ATTENTION_COLORMAPS[k % len(ATTENTION_COLORMAPS)]))
    return [_output_map(what, vol, cmap, scan_name) for what, vol, cmap in maps]
