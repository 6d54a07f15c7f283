"""Where to correct first: slices (3D) or regions (2D) ranked by how unsure the model is there.

A clinician who corrects a prediction should start where it is most likely wrong. Each voxel's
uncertainty is the entropy of its class probabilities divided by log(K), so 0 = certain and 1 = every
class equally likely; with flip TTA the probabilities are the mean over flips (flipped passes that
disagree flatten it) and the spread over flips, scaled to [0, 1] (a std of class probabilities is at
most 0.5), is taken where it is larger. A slice's or region's score is the sum of its voxels'
uncertainty above the scan's median: a slice with a long unsure border ranks above one with a single
unsure voxel, and a model that is a little unsure everywhere (early in a series) does not rank the
largest background regions first. On 4 JSRT X-rays, with a model fine-tuned on two, the top quarter of
the regions held 41% of the wrong pixels by the plain sum and 61% above the median (the shipped
hippocampus model, 3 scans: 56% either way; ``benchmarks/annotation_loop.py`` reports it per scan). 3D scans rank their slices along the first array axis (z);
2D scans rank the tiles of a ``grid`` x ``grid`` split. Pure numpy: no torch, no Qt.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageWriteError, InferenceError
from .volume import Volume

#: Tiles per side of a 2D scan's regions: 4 x 4 = 16 regions, each small enough to check at a glance.
REGION_GRID = 4
#: Slabs of this many slices are scored at a time, so a 400-slice CT never has a float copy of all classes.
SLAB = 16
REVIEW_SUFFIXES = (".json", ".csv")


@dataclass
class ReviewItem:
    """One place to check: a slice (``kind`` "slice", ``index`` its number along ``axis``) or a 2D
    region (``kind`` "region", ``index`` its tile number, row-major); ``bounds`` are [start, stop) per
    array axis; ``score`` the sum of voxel uncertainty there, ``mean`` its mean."""

    kind: str
    index: int
    score: float
    mean: float
    bounds: list[list[int]]
    rank: int = 0


def entropy_map(probs: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Normalised entropy per voxel of ``probs`` (K, *spatial); one channel = a sigmoid's p(foreground).
    ``scale`` turns stored integers into probabilities (uint8 maps: 1/255)."""
    p = probs.astype(np.float32, copy=False) * np.float32(scale) if scale else probs.astype(np.float32)
    if p.shape[0] == 1:
        p = np.concatenate([1.0 - p, p], axis=0)
    p = np.clip(p, 1e-7, 1.0)
    p = p / p.sum(axis=0, keepdims=True)
    h = -(p * np.log(p)).sum(axis=0)
    return (h / np.float32(math.log(p.shape[0]))).astype(np.float32)


def uncertainty_map(probabilities: Volume, spread: Volume | None = None) -> np.ndarray:
    """Per-voxel uncertainty in [0, 1] on the scan's grid: entropy, or the scaled TTA spread where larger."""
    arr = np.asarray(probabilities.array)
    probs = arr if probabilities.channels > 1 else arr[None]
    scale = (probabilities.meta or {}).get("scale")
    spatial = probs.shape[1:]
    out = np.empty(spatial, np.float32)
    step = SLAB if len(spatial) == 3 else spatial[0]
    for lo in range(0, spatial[0], step):
        out[lo : lo + step] = entropy_map(probs[:, lo : lo + step], scale)
    if spread is not None:
        s = np.asarray(spread.array, dtype=np.float32)
        if s.shape != out.shape:
            raise InferenceError(f"the spread map's shape {s.shape} is not the probabilities' {out.shape}")
        np.maximum(out, np.clip(2.0 * s, 0.0, 1.0), out=out)
    return out


def above_median(u: np.ndarray, sample: int = 1_000_000) -> np.ndarray:
    """``u`` minus its median (of at most ``sample`` evenly spaced voxels), negatives set to 0, in place."""
    flat = u.reshape(-1)
    med = float(np.median(flat[:: max(1, flat.size // sample)]))
    u -= np.float32(med)
    np.maximum(u, 0.0, out=u)
    return u


def rank_slices(u: np.ndarray, axis: int = 0) -> list[ReviewItem]:
    """Every slice along ``axis`` of a 3D uncertainty map, most unsure first (ties: lower index)."""
    other = tuple(a for a in range(u.ndim) if a != axis)
    sums = u.sum(axis=other, dtype=np.float64)
    per_slice = math.prod(u.shape[a] for a in other)
    items = []
    for i, total in enumerate(sums):
        bounds = [[0, n] for n in u.shape]
        bounds[axis] = [i, i + 1]
        items.append(ReviewItem("slice", i, float(total), float(total) / max(1, per_slice), bounds))
    return ranked(items)


def rank_regions(u: np.ndarray, grid: int = REGION_GRID) -> list[ReviewItem]:
    """The tiles of a ``grid`` x ``grid`` split of a 2D uncertainty map, most unsure first."""
    edges = [np.linspace(0, n, min(grid, n) + 1).round().astype(int) for n in u.shape]
    items = []
    for r in range(len(edges[0]) - 1):
        for c in range(len(edges[1]) - 1):
            (y0, y1), (x0, x1) = edges[0][r : r + 2], edges[1][c : c + 2]
            tile = u[y0:y1, x0:x1]
            total = float(tile.sum(dtype=np.float64))
            bounds = [[int(y0), int(y1)], [int(x0), int(x1)]]
            items.append(
                ReviewItem("region", r * (len(edges[1]) - 1) + c, total, total / max(1, tile.size), bounds)
            )
    return ranked(items)


def ranked(items: list[ReviewItem]) -> list[ReviewItem]:
    """Sorted by score, highest first (a stable sort: equal scores keep their order), ranks from 1."""
    out = sorted(items, key=lambda it: -it.score)
    for r, it in enumerate(out, 1):
        it.rank = r
    return out


def review_order(
    probabilities: Volume, spread: Volume | None = None, grid: int = REGION_GRID
) -> list[ReviewItem]:
    """Where to check a prediction first: slices of a 3D scan, regions of a 2D one."""
    u = above_median(uncertainty_map(probabilities, spread))
    if u.ndim == 3:
        return rank_slices(u, 0)
    if u.ndim == 2:
        return rank_regions(u, grid)
    raise InferenceError(f"a review order needs a 2D or 3D scan, not {u.ndim}D")


def review_record(items: Sequence[ReviewItem], source: str = "", what: str = "") -> dict[str, Any]:
    """The JSON form: what was ranked, how the score is made, and the items in rank order."""
    return {
        "source": source,
        "unit": items[0].kind if items else "",
        "score": what
        or "sum over the slice/region of voxel uncertainty (normalised class entropy, 0..1) above its median",
        "items": [asdict(it) for it in items],
    }


def review_text(items: Sequence[ReviewItem], fmt: str, source: str = "", what: str = "") -> str:
    """The order as JSON or CSV text (CSV: rank, kind, index, score, mean, then start/stop per axis)."""
    if fmt == ".json":
        return json.dumps(review_record(items, source, what), indent=1)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    ndim = len(items[0].bounds) if items else 0
    w.writerow(
        [
            "rank",
            "kind",
            "index",
            "score",
            "mean",
            *(f"{e}{a}" for a in range(ndim) for e in ("start", "stop")),
        ]
    )
    for it in items:
        w.writerow(
            [
                it.rank,
                it.kind,
                it.index,
                f"{it.score:.4f}",
                f"{it.mean:.6f}",
                *(v for b in it.bounds for v in b),
            ]
        )
    return buf.getvalue()


def check_review_path(path: Path) -> str:
    """The format ``path`` asks for (its suffix), or a one-line refusal."""
    fmt = path.suffix.lower()
    if fmt not in REVIEW_SUFFIXES:
        raise ImageWriteError(f"--review-order {path.name}: write it as .json or .csv")
    return fmt


def write_review_order(
    items: Sequence[ReviewItem], path: Path, source: str = "", what: str = "", protected: Sequence[Path] = ()
) -> Path:
    """Write the order atomically as JSON or CSV (by ``path``'s suffix)."""
    from .atomic import atomic_write

    text = review_text(items, check_review_path(Path(path)), source, what)
    return atomic_write(path, lambda tmp: tmp.write_text(text), protected=protected)
