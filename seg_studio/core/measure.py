"""What a radiologist reports about a mask: per class, its size, where it lies, and the scan inside it.

``measure(labels, image)`` gives, for each foreground class: voxel count, volume (ml in 3D, mm² in 2D;
voxels or pixels when the grid has no physical spacing), bounding box (voxel indices, x,y,z) and
its extent in mm, the number of connected pieces and the largest one's share of the class, and,
with the scan, the intensity statistics inside the mask (mean, sd, min, max, percentiles; HU for CT).

Each class is measured inside its own bounding box (``ndimage.find_objects``: one pass over the
mask), so the cost follows the size of the structures, not of the scan; the panel still runs it off
the GUI thread.

Extra per-class rows for 2D masks (e.g. a fetal head's circumference from an ellipse fit) plug in
through ``register_2d_measure``: each is called on the class's binary mask and the pixel spacing and
its number joins that class's ``extras`` (the table and ``seg-studio measure`` show it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .io import has_physical_spacing
from .volume import LabelInfo, Volume

log = logging.getLogger(__name__)

PERCENTILES = (5, 25, 50, 75, 95)
#: Formats whose pixel size is not a physical spacing unless the file says so (1.0 = "unknown").

Measure2D = Callable[[np.ndarray, tuple[float, float]], float | None]
#: name -> (function(mask_2d_bool, spacing_xy) -> float | None, unit, class names it applies to or None
#: for all): extra rows for 2D masks. The place for biometry (the head circumference below).
EXTRA_2D: dict[str, tuple[Measure2D, str, frozenset[str] | None]] = {}
#: Class names (lower case) that get the fetal head biometry rows (HC18's model calls its class "head").
HEAD_CLASSES = frozenset({"head", "fetal head"})


def register_2d_measure(
    name: str, fn: Measure2D, unit: str = "mm", classes: set[str] | frozenset[str] | None = None
) -> None:
    """Add a per-class measure for 2D masks (``fn(mask, (sx, sy))`` -> number, or None if it does not
    apply), for the classes named in ``classes`` (any case; None: every class). A measure in "mm" is
    left out when the image stores no pixel size: a length in pixels would read as millimetres."""
    names = None if classes is None else frozenset(c.lower() for c in classes)
    EXTRA_2D[name] = (fn, unit, names)


@dataclass
class IntensityStats:
    """The scan's values inside one class (HU for CT)."""

    mean: float
    sd: float
    minimum: float
    maximum: float
    percentiles: dict[str, float]


@dataclass
class ClassMeasurement:
    value: int
    name: str
    voxels: int
    size: float  #: volume in ml (3D) or area in mm² (2D), or voxel/pixel count without spacing
    size_unit: str
    bbox_min_xyz: list[int] = field(default_factory=list)
    bbox_max_xyz: list[int] = field(default_factory=list)
    extent_mm_xyz: list[float] = field(default_factory=list)
    components: int = 0
    largest_component_share: float = 0.0
    intensity: IntensityStats | None = None
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    dims: int
    spacing: tuple[float, ...]
    physical: bool  #: False when the grid has no physical spacing (sizes are in voxels/pixels)
    intensity_unit: str
    classes: list[ClassMeasurement]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    labels: Volume, image: Volume | None = None, names: Mapping[int, LabelInfo] | None = None
) -> Report:
    """Measure every foreground class of ``labels`` (and the scan inside it when ``image`` is given)."""
    arr = np.asarray(labels.array)
    if image is not None and image.spatial_shape != labels.spatial_shape:
        raise ValueError(
            f"the scan is {image.spatial_shape} and the labels {labels.spatial_shape} (z,y,x); "
            "measure a mask on its own scan"
        )
    if arr.dtype.kind not in "iub":
        arr = arr.astype(np.int64)
    physical = has_physical_spacing(labels) and (image is None or has_physical_spacing(image))
    table = dict(names or labels.labels)
    unit = _intensity_unit(image)
    pixels = _image_pixels(image)
    if arr.size and arr.min() < 0:
        raise ValueError("label values must be 0 or more to be measured")
    classes = []
    for i, box in enumerate(ndimage.find_objects(arr)):
        if box is None:
            continue
        value = i + 1
        info = table.get(value)
        classes.append(_measure_class(arr, value, box, labels, physical, pixels, info))
    notes = []
    if not physical:
        notes.append("the image has no physical pixel size: sizes are in pixels/voxels")
    return Report(labels.ndim, tuple(labels.spacing), physical, unit, classes, notes)


def _intensity_unit(image: Volume | None) -> str:
    if image is None:
        return ""
    return "HU" if str(image.meta.get("modality", "")).upper() == "CT" else str(image.meta.get("units", ""))


def _image_pixels(image: Volume | None) -> np.ndarray | None:
    """One channel of the scan (the first, for multi-channel scans), or None."""
    if image is None:
        return None
    return np.asarray(image.array[0] if image.channels > 1 else image.array)


def _measure_class(
    arr: np.ndarray,
    value: int,
    box: tuple[slice, ...],
    labels: Volume,
    physical: bool,
    pixels: np.ndarray | None,
    info: LabelInfo | None,
) -> ClassMeasurement:
    mask = arr[box] == value
    n = int(np.count_nonzero(mask))
    spacing_zyx = labels.spacing_zyx
    if physical:
        cell = float(np.prod(spacing_zyx))
        size, size_unit = (n * cell / 1000.0, "ml") if labels.ndim == 3 else (n * cell, "mm²")
    else:
        size, size_unit = float(n), ("voxels" if labels.ndim == 3 else "pixels")
    lo = [s.start for s in box]
    hi = [s.stop - 1 for s in box]
    extent = [(h - lo_ + 1) * s for lo_, h, s in zip(lo, hi, spacing_zyx, strict=True)]
    comp, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))
    share = 1.0
    if count > 1:
        sizes = np.bincount(comp.ravel())[1:]
        share = float(sizes.max() / n)
    out = ClassMeasurement(
        value=value,
        name=info.name if info else f"label {value}",
        voxels=n,
        size=size,
        size_unit=size_unit,
        bbox_min_xyz=list(reversed(lo)),
        bbox_max_xyz=list(reversed(hi)),
        extent_mm_xyz=[round(float(e), 4) for e in reversed(extent)] if physical else [],
        components=int(count),
        largest_component_share=share,
    )
    if pixels is not None:
        out.intensity = _stats(pixels[box][mask])
    if labels.ndim == 2 and EXTRA_2D:
        spacing = tuple(labels.spacing) if physical else (1.0, 1.0)
        out.extras = _extras(arr == value, spacing, out.name, physical)  # type: ignore[arg-type]
    return out


def _stats(values: np.ndarray) -> IntensityStats:
    if values.dtype.kind in "iub" and values.size > 4096:
        lo, hi = int(values.min()), int(values.max())
        if hi - lo < 1 << 16:  # CT/MR integers: exact statistics from a histogram, no sort
            return _stats_from_histogram(np.bincount((values - lo).ravel().astype(np.intp)), lo)
    v = values.astype(np.float64, copy=False)
    pct = np.percentile(v, PERCENTILES)
    return IntensityStats(
        mean=float(v.mean()),
        sd=float(v.std()),
        minimum=float(v.min()),
        maximum=float(v.max()),
        percentiles={f"p{p}": float(x) for p, x in zip(PERCENTILES, pct, strict=True)},
    )


def _stats_from_histogram(counts: np.ndarray, lo: int) -> IntensityStats:
    """Mean, sd and the percentiles np.percentile's linear rule gives, from integer counts."""
    n = int(counts.sum())
    vals = np.arange(counts.size, dtype=np.float64) + lo
    mean = float((counts * vals).sum() / n)
    sd = float(math.sqrt(max(0.0, (counts * (vals - mean) ** 2).sum() / n)))
    cum = np.cumsum(counts)
    pct = {}
    for p in PERCENTILES:
        pos = (n - 1) * p / 100.0  # the rank np.percentile interpolates at
        k0 = int(math.floor(pos))
        v0 = vals[np.searchsorted(cum, k0 + 1)]
        v1 = vals[np.searchsorted(cum, min(k0 + 2, n))]
        pct[f"p{p}"] = float(v0 + (v1 - v0) * (pos - k0))
    nz = np.flatnonzero(counts)
    return IntensityStats(mean, sd, float(vals[nz[0]]), float(vals[nz[-1]]), pct)


def _extras(
    mask: np.ndarray, spacing_xy: tuple[float, float], class_name: str, physical: bool
) -> dict[str, float]:
    from .errors import SegStudioError

    out = {}
    for name, (fn, unit, classes) in EXTRA_2D.items():
        if classes is not None and class_name.lower() not in classes or unit == "mm" and not physical:
            continue
        try:
            got = fn(mask, spacing_xy)
        except (ValueError, ArithmeticError, SegStudioError) as exc:  # a shape the measure does not fit
            log.info("%s not measured: %s", name, exc)
            continue
        if got is not None and math.isfinite(got):
            out[name] = float(got)
    return out


# --- presenting -------------------------------------------------------------------------------------


def _num(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}g}" if abs(v) < 1e5 else f"{v:.0f}"


def rows_for_csv(report: Report) -> list[dict[str, Any]]:
    """One flat row per class (CSV and the panel's table use these columns)."""
    rows = []
    for c in report.classes:
        row: dict[str, Any] = {
            "value": c.value,
            "name": c.name,
            "voxels": c.voxels,
            f"size_{c.size_unit}": round(c.size, 6),
            "bbox_min_xyz": " ".join(map(str, c.bbox_min_xyz)),
            "bbox_max_xyz": " ".join(map(str, c.bbox_max_xyz)),
            "extent_mm_xyz": " ".join(f"{e:g}" for e in c.extent_mm_xyz),
            "components": c.components,
            "largest_component_share": round(c.largest_component_share, 6),
        }
        if c.intensity is not None:
            u = f"_{report.intensity_unit}" if report.intensity_unit else ""
            row[f"mean{u}"] = round(c.intensity.mean, 4)
            row[f"sd{u}"] = round(c.intensity.sd, 4)
            for k, v in c.intensity.percentiles.items():
                row[f"{k}{u}"] = round(v, 4)
        for k, v in c.extras.items():
            row[k] = round(v, 4)
        rows.append(row)
    return rows


def format_table(report: Report) -> str:
    """The human form: one line per class."""
    if not report.classes:
        return "no foreground voxels"
    u = report.intensity_unit
    lines = []
    for c in report.classes:
        ext = " x ".join(_num(e) for e in c.extent_mm_xyz)
        text = f"{c.value:>3} {c.name:<16} {_num(c.size)} {c.size_unit:<6} {c.voxels} vox"
        if ext:
            text += f"  extent {ext} mm"
        text += f"  {c.components} piece(s), largest {100 * c.largest_component_share:.1f}%"
        if c.intensity is not None:
            s = c.intensity
            text += (
                f"  mean {_num(s.mean)} sd {_num(s.sd)} p5/p50/p95 "
                f"{_num(s.percentiles['p5'])}/{_num(s.percentiles['p50'])}/{_num(s.percentiles['p95'])}"
                + (f" {u}" if u else "")
            )
        for k, v in c.extras.items():
            text += f"  {k} {_num(v)}"
        lines.append(text)
    return "\n".join(lines + [f"note: {n}" for n in report.notes])


def _register_head_biometry() -> None:
    """HC, BPD and OFD (mm) of a 2D fetal head mask, from the ellipse fitted to it (``core.biometry``),
    the figures an obstetric report gives."""
    from .biometry import head_biometry

    register_2d_measure("HC (mm)", lambda m, sp: head_biometry(m, sp).hc_mm, "mm", HEAD_CLASSES)
    register_2d_measure("BPD (mm)", lambda m, sp: head_biometry(m, sp).bpd_mm, "mm", HEAD_CLASSES)
    register_2d_measure("OFD (mm)", lambda m, sp: head_biometry(m, sp).ofd_mm, "mm", HEAD_CLASSES)


_register_head_biometry()
