"""Clicks as input channels: what an interactive model takes besides the scan, and how it is drawn.

An interactive model is any registered variant built with ``guidance_channels`` more input channels
(``create_model(..., guidance_channels=n)``): one map of the positive clicks ("this is the structure"),
one of the negative clicks ("this is not") and, optionally, the current mask of the structure. A click
is drawn as a Gaussian (or a disk) whose size is in the scan's physical units, so a click means the
same on a 0.7 mm and a 1.5 mm scan. The settings travel in the checkpoint's ``interactive`` record,
which is untrusted input: ``GuidanceSpec.from_dict`` bounds every value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError

SHAPES = ("gaussian", "disk")
#: Bounds of the click size: 1 nm .. 1 m in the scan's units (mm, or pixels without a spacing).
MIN_SIGMA, MAX_SIGMA = 1e-6, 1e3
#: How far out a Gaussian is drawn (in sigmas); beyond this it is below 1e-4 of its peak.
_REACH = 4.3


@dataclass(frozen=True)
class GuidanceSpec:
    """What the guidance channels hold and how clicks are drawn in them.

    ``image_channels`` come first, then positive clicks, negative clicks and (``previous_mask``) the
    structure's current mask. ``sigma`` is the Gaussian's sigma (or the disk's radius) in the scan's
    physical units.
    """

    image_channels: int = 1
    sigma: float = 2.0
    shape: str = "gaussian"
    previous_mask: bool = True

    @property
    def guidance_channels(self) -> int:
        return 2 + int(self.previous_mask)

    @property
    def in_channels(self) -> int:
        return self.image_channels + self.guidance_channels

    def channel_names(self) -> list[str]:
        extra = ["positive clicks", "negative clicks"] + (["previous mask"] if self.previous_mask else [])
        return [f"ch{i}" for i in range(self.image_channels)] + extra

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_channels": self.image_channels,
            "sigma": self.sigma,
            "shape": self.shape,
            "previous_mask": self.previous_mask,
        }

    @classmethod
    def from_dict(cls, d: Any, in_channels: int | None = None, where: str = "checkpoint") -> GuidanceSpec:
        """Check a record (from a checkpoint or a recipe); ``in_channels`` must then add up."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"{where}: bad metadata: the interactive record is not a JSON object")
        unknown = set(d) - {"image_channels", "sigma", "shape", "previous_mask"}
        if unknown:
            raise CheckpointError(f"{where}: bad metadata: unknown interactive fields {sorted(unknown)}")
        ic, sigma = d.get("image_channels", 1), d.get("sigma", 2.0)
        shape, prev = d.get("shape", "gaussian"), d.get("previous_mask", True)
        if isinstance(ic, bool) or not isinstance(ic, int) or not 1 <= ic <= 61:
            raise CheckpointError(f"{where}: bad metadata: interactive image_channels must be 1..61")
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma):
            raise CheckpointError(f"{where}: bad metadata: interactive sigma is not a finite number")
        if not MIN_SIGMA <= sigma <= MAX_SIGMA:
            raise CheckpointError(f"{where}: bad metadata: interactive sigma {sigma:g} is outside 1e-6..1000")
        if shape not in SHAPES:
            raise CheckpointError(
                f"{where}: bad metadata: interactive shape must be one of {', '.join(SHAPES)}"
            )
        if not isinstance(prev, bool):
            raise CheckpointError(f"{where}: bad metadata: interactive previous_mask must be true or false")
        spec = cls(ic, float(sigma), str(shape), prev)
        if in_channels is not None and spec.in_channels != in_channels:
            raise CheckpointError(
                f"{where}: bad metadata: {ic} image + {spec.guidance_channels} guidance channels "
                f"do not add up to the model's {in_channels} input channels"
            )
        return spec


def render_clicks(
    shape: Sequence[int],
    spacing_zyx: Sequence[float],
    points: Sequence[Sequence[float]],
    spec: GuidanceSpec,
) -> np.ndarray:
    """One float32 map of ``shape`` with every click of ``points`` (array indices, may lie outside the
    map: a crop still sees the tail of a click next to it) drawn in [0, 1]; overlapping clicks take the
    maximum. Each click is drawn only in its own box, so the cost follows the click size, not the map."""
    out = np.zeros(tuple(shape), dtype=np.float32)
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    reach = spec.sigma * (_REACH if spec.shape == "gaussian" else 1.0)
    half = np.ceil(reach / sp).astype(int)
    for p in points:
        c = np.asarray(p, dtype=np.float64)
        lo = np.maximum(np.floor(c - half).astype(int), 0)
        hi = np.minimum(np.ceil(c + half).astype(int) + 1, np.asarray(shape))
        if np.any(hi <= lo):
            continue
        axes = [((np.arange(a, b) - ci) * s) ** 2 for a, b, ci, s in zip(lo, hi, c, sp, strict=True)]
        d2 = sum(np.ix_(*axes)) if len(axes) > 1 else axes[0]
        blob = np.exp(-d2 / (2 * spec.sigma**2)) if spec.shape == "gaussian" else (d2 <= spec.sigma**2) * 1.0
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        np.maximum(out[box], blob.astype(np.float32), out=out[box])
    return out


def guidance_maps(
    shape: Sequence[int],
    spacing_zyx: Sequence[float],
    positive: Sequence[Sequence[float]],
    negative: Sequence[Sequence[float]],
    previous: np.ndarray | None,
    spec: GuidanceSpec,
) -> np.ndarray:
    """The ``(guidance_channels, *shape)`` float32 input after the image channels."""
    maps = [
        render_clicks(shape, spacing_zyx, positive, spec),
        render_clicks(shape, spacing_zyx, negative, spec),
    ]
    if spec.previous_mask:
        prev = np.zeros(tuple(shape), np.float32) if previous is None else previous.astype(np.float32)
        maps.append(prev)
    return np.stack(maps)
