"""Sliding-window geometry and the Gaussian importance map.

Window placement and the Gaussian follow MONAI's ``sliding_window_inference`` exactly (same starts,
sigma = 0.125 x window, floor 1e-3), so results can be compared voxel for voxel. The weight sum is
not accumulated during the run: an argmax does not need it (every voxel's scores share the same
positive weight), so it is built afterwards, and only when probabilities or maps are asked for.
"""

from __future__ import annotations

import functools
import itertools
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


@functools.lru_cache(maxsize=16)
def _importance_map(roi: tuple[int, ...], mode: str, sigma_scale: float) -> np.ndarray:
    import torch

    if mode == "constant":
        return np.ones(roi, dtype=np.float32)
    if mode != "gaussian":
        raise ValueError(f"blend mode must be gaussian or constant, got {mode!r}")
    # The same float32 operations, in the same order, as MONAI's compute_importance_map, so the
    # blended logits match it bit for bit (then the label maps are identical too).
    out = torch.ones(())
    for i, n in enumerate(roi):
        sigma = n * sigma_scale
        x = torch.arange(start=-(n - 1) / 2.0, end=(n - 1) / 2.0 + 1, dtype=torch.float)
        x = torch.exp(x**2 / (-2 * sigma**2))
        out = out.unsqueeze(-1) * x[(None,) * i] if i > 0 else x
    floor = max(float(out.min()), 1e-3)
    out = torch.clamp_(out.to(torch.float), min=floor)
    arr = out.numpy()
    arr.setflags(write=False)
    return arr


def importance_map(roi: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """The window weight map (read-only float32, cached per window size): a Gaussian with
    sigma = ``sigma_scale`` x window, floored at 1e-3 so window edges still count."""
    return _importance_map(tuple(int(r) for r in roi), mode, float(sigma_scale))


def weight_sum(
    shape: Sequence[int], roi: Sequence[int], starts: Sequence[Sequence[int]], mode: str = "gaussian"
) -> np.ndarray:
    """Total window weight per voxel (only needed to turn blended sums into averages)."""
    g = importance_map(roi, mode)
    w = np.zeros(tuple(shape), dtype=np.float32)
    for st in starts:
        w[tuple(slice(s, s + r) for s, r in zip(st, roi, strict=True))] += g
    return w
