"""Intensity normalisation and resampling to a model's spacing and back.

Training and inference call the same ``normalize`` with the spec stored in the checkpoint, so a
model always sees intensities the way it was trained. Resampling keeps the physical extent of the
scan (voxel corners stay aligned, like SimpleITK with a matching origin shift), so going back with
``resample_to_shape`` lands exactly on the source grid.

Normalisation specs (``ModelMeta.normalization``):

- ``{"mode": "zscore"}``: per channel ``(x - mean) / std`` over the whole image; ``"nonzero": true``
  takes the statistics over non-zero voxels only (skull-stripped MR); fixed ``"mean"``/``"std"``
  (dataset statistics) override the per-image ones.
- ``{"mode": "ct_window", "low": -160, "high": 240}``: clip to the HU window, then z-score with the
  given ``"mean"``/``"std"`` (dataset statistics of the clipped HU) or, without them, map the window
  to [0, 1].
- ``{"mode": "percentile", "low": 0.5, "high": 99.5}``: clip to the image's own percentiles, then
  z-score (``"then": "unit"`` maps the clipped range to [0, 1] instead).
- ``{"mode": "minmax"}``: the image's range to [0, 1]. ``{"mode": "none"}``: unchanged (float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InferenceError

NORMALIZATION_MODES = ("zscore", "ct_window", "percentile", "minmax", "none")
_EPS = 1e-8


def normalize(array: np.ndarray, spec: Mapping[str, Any] | None, channel_axis: bool = True) -> np.ndarray:
    """Return a float32 normalised copy of ``array`` (``(C, *spatial)`` when ``channel_axis``).

    Works in place on the one float32 copy, so the peak is the input plus one float32 volume.
    """
    spec = dict(spec or {"mode": "none"})
    mode = spec.get("mode", "none")
    if mode not in NORMALIZATION_MODES:
        raise InferenceError(
            f"unknown normalisation mode {mode!r}; use one of {', '.join(NORMALIZATION_MODES)}"
        )
    out = np.array(array, dtype=np.float32, copy=True)
    chans = out if channel_axis else out[None]
    for c in range(chans.shape[0]):
        _normalize_channel(chans[c], spec, mode)
    return out


def _stats(x: np.ndarray, nonzero: bool) -> tuple[float, float]:
    sel = x[x != 0] if nonzero else x
    if sel.size == 0:
        return 0.0, 1.0
    return float(sel.mean(dtype=np.float64)), float(sel.std(dtype=np.float64))


def _zscore(x: np.ndarray, mean: float, std: float) -> None:
    x -= np.float32(mean)
    x *= np.float32(1.0 / max(std, _EPS))


def _unit(x: np.ndarray, low: float, high: float) -> None:
    x -= np.float32(low)
    x *= np.float32(1.0 / max(high - low, _EPS))


def _normalize_channel(x: np.ndarray, spec: dict[str, Any], mode: str) -> None:
    if mode == "none":
        return
    if mode == "zscore":
        nonzero = bool(spec.get("nonzero", False))
        mask = (x != 0) if nonzero else None
        mean, std = _stats(x, nonzero)
        mean = float(spec.get("mean", mean))
        std = float(spec.get("std", std))
        _zscore(x, mean, std)
        if mask is not None:
            x[~mask] = 0.0
    elif mode == "ct_window":
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except KeyError as exc:
            raise InferenceError(f"ct_window normalisation needs {exc.args[0]!r}") from None
        np.clip(x, low, high, out=x)
        if "mean" in spec and "std" in spec:
            _zscore(x, float(spec["mean"]), float(spec["std"]))
        else:
            _unit(x, low, high)
    elif mode == "percentile":
        plow, phigh = float(spec.get("low", 0.5)), float(spec.get("high", 99.5))
        low, high = (float(v) for v in np.percentile(x, [plow, phigh]))
        np.clip(x, low, high, out=x)
        if spec.get("then", "zscore") == "unit":
            _unit(x, low, high)
        else:
            _zscore(x, *_stats(x, False))
    elif mode == "minmax":
        _unit(x, float(x.min()), float(x.max()))


# --- resampling ----------------------------------------------------------------------------------------


def resampled_shape(
    shape: Sequence[int], spacing_xyz: Sequence[float], target_xyz: Sequence[float | None]
) -> tuple[int, ...]:
    """Array-order shape after resampling; ``None`` in ``target_xyz`` keeps that axis.

    An axis whose size would not change keeps its spacing (no resampling for a 0.5% difference).
    """
    src = list(reversed(spacing_xyz))
    tgt = list(reversed(target_xyz))
    out = []
    for n, s, t in zip(shape, src, tgt, strict=True):
        out.append(n if t is None or t <= 0 else max(1, int(round(n * s / t))))
    _check_resampled_fits(tuple(shape), tuple(out), tgt)
    return tuple(out)


#: float32 volumes of the resampled size that prediction holds at once (image, classes, weights).
_RESAMPLE_COPIES = 4


def _check_resampled_fits(
    shape: tuple[int, ...], out: tuple[int, ...], target_zyx: Sequence[float | None]
) -> None:
    """A model's spacing decides the working grid: 0.01 mm for a 1 mm scan asks for a million times
    the voxels. Refuse that before allocating, saying how much it would take."""
    import math

    from .limits import check_fits

    voxels = math.prod(out)
    if voxels <= max(math.prod(shape), 1 << 24):
        return
    shown = " x ".join(f"{t:g}" for t in reversed([t if t is not None else 0 for t in target_zyx]))
    check_fits(
        _RESAMPLE_COPIES * 4 * voxels,
        f"the model's spacing ({shown} mm) resamples this {'x'.join(map(str, shape[::-1]))} scan to "
        f"{'x'.join(map(str, out[::-1]))} voxels, which needs",
        "the checkpoint's spacing is implausible for this scan (use another model), or crop the scan",
        InferenceError,
    )


def resample_to_shape(array: np.ndarray, shape: Sequence[int], mode: str = "linear") -> np.ndarray:
    """Resample ``(C, *spatial)`` to ``(C, *shape)`` over the same physical extent.

    ``linear`` interpolates (images, probabilities: float32 out); ``nearest`` picks the source voxel
    whose cell holds each target centre (labels: same dtype out, exact index arithmetic).
    """
    shape = tuple(int(s) for s in shape)
    spatial = array.shape[1:]
    if tuple(spatial) == shape:
        return array
    if mode == "nearest":
        idx = [
            np.minimum(((np.arange(m) + 0.5) * (n / m)).astype(np.int64), n - 1)
            for n, m in zip(spatial, shape, strict=True)
        ]
        return array[(slice(None), *np.ix_(*idx))]
    if mode != "linear":
        raise ValueError(f"mode must be linear or nearest, got {mode!r}")
    import torch
    import torch.nn.functional as F

    nd = len(shape)
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    # Resample one axis group at a time only where needed; interpolate keeps corners aligned
    # (align_corners=False), so the inverse call maps back onto the source grid.
    with torch.inference_mode():
        out = F.interpolate(t, size=shape, mode="bilinear" if nd == 2 else "trilinear", align_corners=False)
    return out[0].numpy()


def to_spacing(
    array: np.ndarray,
    spacing_xyz: Sequence[float],
    target_xyz: Sequence[float | None] | None,
    mode: str = "linear",
) -> np.ndarray:
    """Resample ``(C, *spatial)`` from ``spacing_xyz`` to ``target_xyz`` (``None``: unchanged)."""
    if target_xyz is None:
        return array
    shape = resampled_shape(array.shape[1:], spacing_xyz, target_xyz)
    return resample_to_shape(array, shape, mode)
