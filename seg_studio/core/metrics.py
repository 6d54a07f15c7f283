"""Overlap and distance metrics: Dice, IoU, HD95 (mm, or px without a pixel size) and sizes (ml, mm2, px).

Conventions (those of MONAI's ``DiceMetric``/``compute_hausdorff_distance`` with ``percentile=95``, so
figures compare): a class absent from both prediction and truth gives NaN (it is left out of means,
never counted as a perfect 1.0); present in one only gives Dice 0 and HD95 infinity. HD95 is the larger
of the two directed 95th-percentile surface distances, measured with the voxel spacing, so anisotropic
CT/MR report millimetres, not voxels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import SegStudioError
from .io import case_name, has_physical_spacing
from .volume import Volume

__all__ = [
    "CaseMetrics",
    "dice",
    "evaluate",
    "evaluate_paths",
    "hd95",
    "iou",
    "mean_ignoring_nan",
    "summarise",
]


def _classes(
    pred: np.ndarray, truth: np.ndarray, classes: Iterable[int] | None, ignore: int | None
) -> list[int]:
    if classes is not None:
        return [int(c) for c in classes]
    values = np.union1d(np.unique(pred), np.unique(truth))
    return [int(v) for v in values if v != 0 and v != ignore]


def _valid(truth: np.ndarray, ignore: int | None) -> np.ndarray | None:
    return None if ignore is None else truth != ignore


def dice(
    pred: np.ndarray, truth: np.ndarray, classes: Iterable[int] | None = None, ignore: int | None = None
) -> dict[int, float]:
    """Dice per label value (background 0 excluded unless named); voxels where truth == ignore don't count."""
    _check_shapes(pred, truth)
    valid = _valid(truth, ignore)
    out: dict[int, float] = {}
    for c in _classes(pred, truth, classes, ignore):
        p, t = pred == c, truth == c
        if valid is not None:
            p &= valid
        denom = int(p.sum()) + int(t.sum())
        out[c] = math.nan if denom == 0 else 2.0 * int((p & t).sum()) / denom
    return out


def iou(
    pred: np.ndarray, truth: np.ndarray, classes: Iterable[int] | None = None, ignore: int | None = None
) -> dict[int, float]:
    """Intersection over union (Jaccard) per label value; same conventions as :func:`dice`."""
    _check_shapes(pred, truth)
    valid = _valid(truth, ignore)
    out: dict[int, float] = {}
    for c in _classes(pred, truth, classes, ignore):
        p, t = pred == c, truth == c
        if valid is not None:
            p &= valid
        union = int((p | t).sum())
        out[c] = math.nan if union == 0 else int((p & t).sum()) / union
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    # Voxels of the mask that touch the outside (full connectivity), image borders counting as outside.
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3,) * mask.ndim, bool), border_value=0)
    return mask & ~eroded


def _directed_distances(a_surf: np.ndarray, b_surf: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    # Distance of every surface voxel of a to the nearest surface voxel of b.
    dist_to_b = ndimage.distance_transform_edt(~b_surf, sampling=spacing)
    return dist_to_b[a_surf]


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing_zyx: Sequence[float] | None = None,
    classes: Iterable[int] | None = None,
    ignore: int | None = None,
) -> dict[int, float]:
    """95th-percentile Hausdorff distance per label value, in the units of ``spacing_zyx`` (mm).

    ``spacing_zyx`` is in array order (``Volume.spacing_zyx``); ``None`` means 1 per voxel.
    """
    _check_shapes(pred, truth)
    spacing = tuple(float(s) for s in (spacing_zyx or (1.0,) * pred.ndim))
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} does not match a {pred.ndim}D array")
    valid = _valid(truth, ignore)
    out: dict[int, float] = {}
    for c in _classes(pred, truth, classes, ignore):
        p, t = pred == c, truth == c
        if valid is not None:
            p &= valid
        if not p.any() and not t.any():
            out[c] = math.nan
            continue
        if not p.any() or not t.any():
            out[c] = math.inf
            continue
        ps, ts = _surface(p), _surface(t)
        d_pt = _directed_distances(ps, ts, spacing)
        d_tp = _directed_distances(ts, ps, spacing)
        out[c] = float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
    return out


def mean_ignoring_nan(values: Iterable[float]) -> float:
    """Mean of the finite-or-infinite values, NaN (class absent everywhere) left out; NaN if none."""
    vals = [v for v in values if not math.isnan(v)]
    return math.nan if not vals else float(sum(vals) / len(vals))


@dataclass
class CaseMetrics:
    """Metrics of one predicted case against its truth, keyed by label value.

    Lengths and sizes are physical (HD95 in mm; volume in ml, or area in mm2 for 2D) only when the
    images carry a pixel size (``io.has_physical_spacing``): a PNG has none, and its "1 mm" spacing
    is a placeholder, so its HD95 and sizes are in pixels (``length_unit``/``size_unit`` say which).
    """

    name: str
    dice: dict[int, float]
    iou: dict[int, float]
    hd95: dict[int, float]
    size_pred: dict[int, float]
    size_truth: dict[int, float]
    class_names: dict[int, str] = field(default_factory=dict)
    physical: bool = True
    dims: int = 3

    @property
    def length_unit(self) -> str:
        return "mm" if self.physical else "px"

    @property
    def size_unit(self) -> str:
        if not self.physical:
            return "px"
        return "ml" if self.dims == 3 else "mm2"

    @property
    def size_name(self) -> str:
        return "volume" if self.dims == 3 else "area"

    def rows(self) -> list[dict[str, Any]]:
        size = f"{self.size_name}_{{}}_{self.size_unit}"
        return [
            {
                "case": self.name,
                "class": c,
                "name": self.class_names.get(c, f"class {c}"),
                "dice": self.dice[c],
                "iou": self.iou[c],
                f"hd95_{self.length_unit}": self.hd95[c],
                size.format("pred"): self.size_pred[c],
                size.format("truth"): self.size_truth[c],
            }
            for c in self.dice
        ]


def _is_generic(name: str, value: int) -> bool:
    return name in (f"label {value}", f"class {value}", str(value))


def class_names(pred: Volume, truth: Volume) -> dict[int, str]:
    """Names per label value: the truth's, else the prediction's, where either has a real one."""
    names = {v: info.name for v, info in pred.labels.items()}
    for v, info in truth.labels.items():
        if v not in names or not _is_generic(info.name, v) or _is_generic(names[v], v):
            names[v] = info.name
    return names


def evaluate(
    pred: Volume,
    truth: Volume,
    classes: Iterable[int] | None = None,
    ignore: int | None = None,
    name: str = "",
    check_geometry: bool = True,
) -> CaseMetrics:
    """All metrics of one case, with the truth's spacing; refuses volumes on different grids."""
    where = f"{name}: " if name else ""
    if pred.spatial_shape != truth.spatial_shape:
        raise SegStudioError(
            f"{where}prediction shape {pred.spatial_shape} differs from the truth's {truth.spatial_shape}"
        )
    diff = pred.grid_difference(truth, ("prediction", "truth")) if check_geometry else None
    if diff:
        raise SegStudioError(
            f"{where}{diff}; a score would compare other voxels: resample the prediction onto the truth "
            "(nearest neighbour) or predict on the truth's own scan"
        )
    p, t = _label_array(pred, where), _label_array(truth, where)
    cls = _classes(p, t, classes, ignore)
    physical = has_physical_spacing(truth) and has_physical_spacing(pred)
    spacing_zyx = truth.spacing_zyx if physical else None
    # a voxel's size: ml (mm3 / 1000) in 3D, mm2 in 2D, 1 pixel without a pixel size
    voxel = float(np.prod(truth.spacing)) / (1000.0 if truth.ndim == 3 else 1.0) if physical else 1.0
    return CaseMetrics(
        name=name or (truth.source.name if truth.source else ""),
        dice=dice(p, t, cls, ignore),
        iou=iou(p, t, cls, ignore),
        hd95=hd95(p, t, spacing_zyx, cls, ignore),
        size_pred={c: int((p == c).sum()) * voxel for c in cls},
        size_truth={c: int((t == c).sum()) * voxel for c in cls},
        class_names=class_names(pred, truth),
        physical=physical,
        dims=truth.ndim,
    )


def summarise(cases: Sequence[CaseMetrics]) -> dict[str, dict[int, float]]:
    """Per-class means over cases (NaN-aware; an infinite HD95 stays infinite, as it should).

    The HD95 key carries its unit (``hd95_mm`` or ``hd95_px``); cases in different units are not averaged.
    """
    classes = sorted({c for case in cases for c in case.dice})
    units = {case.length_unit for case in cases}
    if len(units) > 1:
        raise SegStudioError("some cases have a pixel size and some do not: their HD95 cannot be averaged")
    out: dict[str, dict[int, float]] = {}
    for key, attr in (("dice", "dice"), ("iou", "iou"), (f"hd95_{units.pop() if units else 'mm'}", "hd95")):
        out[key] = {
            c: mean_ignoring_nan(getattr(case, attr).get(c, math.nan) for case in cases) for c in classes
        }
    return out


def evaluate_paths(
    pred: Path,
    truth: Path,
    classes: Iterable[int] | None = None,
    ignore: int | None = None,
    label_map: str | dict[int, int] | None = None,
) -> list[CaseMetrics]:
    """Evaluate a file against a file, or every case of a folder against the same-named truth.

    Folders are matched by case name (file name without its image suffixes); a prediction without a
    truth, or the reverse, is an error naming it, because a silently skipped case flatters the mean.
    """
    from .io import read

    pred, truth = Path(pred), Path(truth)
    for p in (pred, truth):
        if not p.exists():
            raise SegStudioError(f"{p}: no such file or folder")
    lmap = None
    if label_map:
        from .training.data import parse_label_map

        lmap = parse_label_map(label_map)

    def read_truth(path: Path) -> Volume:
        v = read(path)
        if lmap:
            a = np.asarray(v.array).astype(np.int64)
            out = a.copy()
            for src, dst in lmap.items():
                out[a == src] = ignore if dst < 0 and ignore is not None else dst
            v = v.with_array(out)
            v.labels = {}  # its names belong to the values before the mapping
        return v

    if pred.is_dir() != truth.is_dir():
        raise SegStudioError("give two files or two folders (--pred and --truth)")
    if not pred.is_dir():
        return [evaluate(read(pred), read_truth(truth), classes, ignore, name=case_name(truth))]
    pmap = {case_name(p): p for p in _entries(pred)}
    tmap = {case_name(p): p for p in _entries(truth)}
    missing = sorted(set(tmap) - set(pmap))
    extra = sorted(set(pmap) - set(tmap))
    if missing or extra:
        raise SegStudioError(
            "prediction and truth folders do not hold the same cases"
            + (f"; no prediction for {missing[:5]}" if missing else "")
            + (f"; no truth for {extra[:5]}" if extra else "")
        )
    if not tmap:
        raise SegStudioError(f"no images found in {truth}")
    return [evaluate(read(pmap[n]), read_truth(tmap[n]), classes, ignore, name=n) for n in sorted(tmap)]


def _entries(folder: Path) -> list[Path]:
    # Image files and DICOM series folders; hidden files and side-cars (.json, .raw of .mhd) left out.
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() in (".json", ".raw", ".txt", ".csv", ".md"):
            continue
        out.append(p)
    return out


def _label_array(v: Volume, where: str = "") -> np.ndarray:
    if v.channels > 1:
        raise SegStudioError(f"{where}a label map has one channel; got a multi-channel image")
    a = np.asarray(v.array)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise SegStudioError(
                f"{where}a label map holds whole numbers; got fractional values (a probability map?)"
            )
        a = a.astype(np.int64)
    return a


def _check_shapes(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
