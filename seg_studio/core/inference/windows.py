"""Sliding-window geometry and the Gaussian importance map.

Window placement and the Gaussian follow MONAI's ``sliding_window_inference`` exactly (same starts,
sigma = 0.125 x window, the erf-integrated discrete kernel, zeros replaced by the smallest non-zero
weight), so results can be compared voxel for voxel. The map is separable: it is kept as one 1D
profile per axis, and the sum of weights over all windows is the outer product of per-axis sums,
so no full-volume weight buffer is ever accumulated.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np


def axis_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis: stride ``roi * (1 - overlap)``, the last window flush with the end."""
    if roi >= size:
        return [0]
    interval = max(1, int(roi * (1 - overlap)))
    n = next(d for d in range(size) if d * interval + roi >= size) + 1
    return [min(d * interval, size - roi) for d in range(n)]


def window_starts(shape: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """All window corners, in C order (the last axis varies fastest), like MONAI."""
    return list(itertools.product(*(axis_starts(s, r, overlap) for s, r in zip(shape, roi, strict=True))))


@functools.lru_cache(maxsize=64)
def gaussian_1d(roi: int, sigma_scale: float = 0.125, mode: str = "gaussian") -> np.ndarray:
    """One axis of the importance map, max 1, strictly positive (cached per window size)."""
    if mode == "constant" or roi <= 1:
        return np.ones(roi, dtype=np.float32)
    sigma = roi * sigma_scale
    centre = roi // 2
    tail = int(max(sigma * 4.0, 0.5) + 0.5)
    s2 = sigma * math.sqrt(2.0)
    d = np.arange(roi) - centre
    vals = np.array(
        [0.5 * (math.erf((k + 0.5) / s2) - math.erf((k - 0.5) / s2)) if abs(k) <= tail else 0.0 for k in d],
        dtype=np.float64,
    )
    vals /= vals.max()
    vals = vals.astype(np.float32)
    if (vals == 0).any():
        vals[vals == 0] = vals[vals > 0].min()
    return vals


def importance_map(roi: Sequence[int], mode: str = "gaussian") -> np.ndarray:
    """The full ``roi``-shaped map (outer product of the 1D profiles), float32."""
    out = np.ones((), dtype=np.float32)
    for r in roi:
        out = np.multiply.outer(out, gaussian_1d(int(r), mode=mode))
    return out.astype(np.float32, copy=False)


def axis_weight_sums(size: int, roi: int, starts: Sequence[int], mode: str = "gaussian") -> np.ndarray:
    """Sum of the 1D profile over all windows along one axis (one factor of the total weight)."""
    g = gaussian_1d(roi, mode=mode)
    w = np.zeros(size, dtype=np.float32)
    for s in sorted(set(starts)):
        w[s : s + roi] += g
    return w
