"""Label-map clean-up after prediction: keep the largest component, fill holes, drop small islands.

All functions take and return a numpy label array (any integer dtype, 2D or 3D), work class by
class, and never turn one foreground class into another: removed voxels become background (0),
filled holes only take background voxels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage


def _classes(labels: np.ndarray, classes: Iterable[int] | None) -> list[int]:
    present = [int(v) for v in np.unique(labels) if v != 0]
    return present if classes is None else [int(c) for c in classes if int(c) in present]


def _structure(ndim: int) -> np.ndarray:
    # face connectivity: the usual choice in 3D medical post-processing (nnU-Net does the same)
    return ndimage.generate_binary_structure(ndim, 1)


def keep_largest_component(labels: np.ndarray, classes: Iterable[int] | None = None) -> np.ndarray:
    """Per class, keep only its largest connected component; the rest becomes background."""
    out = labels.copy()
    for c in _classes(labels, classes):
        mask = labels == c
        comp, n = ndimage.label(mask, structure=_structure(labels.ndim))
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        out[mask & (comp != int(sizes.argmax()))] = 0
    return out


def fill_holes(labels: np.ndarray, classes: Iterable[int] | None = None) -> np.ndarray:
    """Per class, fill background cavities fully enclosed by that class (not other classes' voxels)."""
    out = labels.copy()
    for c in _classes(labels, classes):
        filled = ndimage.binary_fill_holes(labels == c, structure=_structure(labels.ndim))
        out[filled & (out == 0)] = c
    return out


def remove_small_islands(
    labels: np.ndarray, min_size: int, classes: Iterable[int] | None = None
) -> np.ndarray:
    """Per class, turn connected components smaller than ``min_size`` voxels into background."""
    out = labels.copy()
    if min_size <= 1:
        return out
    for c in _classes(labels, classes):
        mask = labels == c
        comp, n = ndimage.label(mask, structure=_structure(labels.ndim))
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())
        small = sizes < min_size
        small[0] = False
        out[small[comp] & mask] = 0
    return out


def apply(labels: np.ndarray, spec: Mapping[str, Any] | None) -> np.ndarray:
    """Run the steps named in ``spec``, in a fixed order: small islands, largest component, holes.

    ``spec`` keys: ``min_size`` (int), ``largest_component`` (true or a list of class values),
    ``fill_holes`` (true or a list of class values).
    """
    if not spec:
        return labels
    unknown = set(spec) - {"min_size", "largest_component", "fill_holes"}
    if unknown:
        from .errors import InferenceError

        raise InferenceError(
            f"unknown post-processing step(s) {sorted(unknown)}; use min_size, largest_component, fill_holes"
        )

    def which(v: Any) -> Iterable[int] | None:
        return None if v is True else v

    if spec.get("min_size"):
        labels = remove_small_islands(labels, int(spec["min_size"]))
    if spec.get("largest_component"):
        labels = keep_largest_component(labels, which(spec["largest_component"]))
    if spec.get("fill_holes"):
        labels = fill_holes(labels, which(spec["fill_holes"]))
    return labels
