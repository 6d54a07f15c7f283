"""``Volume``: pixels plus the geometry that places them in the patient.

Arrays are stored z,y,x (numpy order, as SimpleITK's ``GetArrayFromImage`` gives them), with an
explicit leading channel axis only when there are several channels (RGB, multi-modal MR). Spacing,
origin and direction are kept in SimpleITK's x,y,z order; the ``_zyx`` properties give napari's
order. Conversion between the two orders happens here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LabelInfo:
    """Name and RGB colour (0..255) of one label value."""

    value: int
    name: str
    color: tuple[int, int, int] = (255, 0, 0)


@dataclass
class Volume:
    """A 2D or 3D image, possibly multi-channel, with its physical geometry.

    ``array`` has shape ``spatial`` (z,y,x or y,x) when ``channels == 1`` and ``(C, *spatial)``
    otherwise. ``spacing``/``origin`` are in x,y(,z) order, ``direction`` is the row-major
    ``ndim x ndim`` cosine matrix, exactly as SimpleITK stores them.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    channels: int = 1
    labels: dict[int, LabelInfo] = field(default_factory=dict)
    source: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        nd = self.ndim
        if nd not in (2, 3):
            raise ValueError(f"a Volume is 2D or 3D, got {nd} spatial dimensions")
        if self.channels > 1 and self.array.shape[0] != self.channels:
            raise ValueError(f"channel axis first: shape {self.array.shape}, channels={self.channels}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = tuple(float(d) for d in self.direction)
        if len(self.spacing) != nd or len(self.origin) != nd or len(self.direction) != nd * nd:
            raise ValueError(
                f"geometry does not match a {nd}D image: spacing {self.spacing}, origin {self.origin}, "
                f"direction of {len(self.direction)} values"
            )

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: tuple[float, ...] | None = None,
        origin: tuple[float, ...] | None = None,
        direction: tuple[float, ...] | None = None,
        channels: int = 1,
        **kwargs: Any,
    ) -> Volume:
        """Wrap a bare array; missing geometry defaults to unit spacing, zero origin, identity."""
        nd = array.ndim - (1 if channels > 1 else 0)
        return cls(
            array=array,
            spacing=spacing or (1.0,) * nd,
            origin=origin or (0.0,) * nd,
            direction=direction or tuple(np.eye(nd).ravel()),
            channels=channels,
            **kwargs,
        )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis, numpy (z,y,x) order."""
        return tuple(self.array.shape[1:] if self.channels > 1 else self.array.shape)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions: 2 or 3."""
        return self.array.ndim - (1 if self.channels > 1 else 0)

    @property
    def is_3d(self) -> bool:
        return self.ndim == 3

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        """Spacing in array order, e.g. napari's ``scale``."""
        return tuple(reversed(self.spacing))

    @property
    def origin_zyx(self) -> tuple[float, ...]:
        return tuple(reversed(self.origin))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(self.ndim, self.ndim)

    def channel_first(self) -> np.ndarray:
        """The array with a channel axis always present: ``(C, *spatial)``."""
        return self.array if self.channels > 1 else self.array[None]

    def with_array(self, array: np.ndarray, channels: int = 1, **changes: Any) -> Volume:
        """A new Volume on the same geometry (e.g. a label map predicted from this scan)."""
        out = replace(self, array=array, channels=channels, **changes)
        if out.spatial_shape != self.spatial_shape:
            raise ValueError(f"shape {out.spatial_shape} does not match the source {self.spatial_shape}")
        return out

    def geometry(self) -> dict[str, Any]:
        """The geometry as plain JSON-able values (for layer metadata and checkpoints)."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "shape_zyx": list(self.spatial_shape),
        }

    def grid_difference(self, other: Volume, names: tuple[str, str] = ("labels", "image")) -> str | None:
        """What differs between this grid and ``other``'s, with amounts; None when they match.

        One function for training, fine-tuning and scoring, so a label map drawn at 2 mm for a 1 mm
        scan, or shifted by 50 mm, is refused everywhere with the same words. Tolerances: spacing
        0.1 % (NIfTI and TIFF keep it as float32), origin a tenth of the smallest voxel (at least
        0.001 mm), direction 0.001 per cosine (about 0.06 degrees).
        """
        mine, theirs = names
        if self.ndim != other.ndim:
            return f"the {mine} are {self.ndim}D and the {theirs} {other.ndim}D"
        out = []
        if self.spatial_shape != other.spatial_shape:
            out.append(
                f"size {_fmt(self.spatial_shape[::-1], 'x')} vs {_fmt(other.spatial_shape[::-1], 'x')} voxels"
            )
        a, b = np.asarray(self.spacing), np.asarray(other.spacing)
        if not np.allclose(a, b, rtol=1e-3, atol=1e-6):
            ratio = float(np.max(np.maximum(a, b) / np.maximum(np.minimum(a, b), 1e-12)))
            out.append(f"spacing {_fmt(a)} vs {_fmt(b)} mm (up to {ratio:.3g} times)")
        shift = float(np.linalg.norm(np.asarray(self.origin) - np.asarray(other.origin)))
        if shift > max(1e-3, 0.1 * float(np.min(b))):
            out.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)} mm ({shift:.3g} mm apart)")
        cos = float(np.abs(np.asarray(self.direction) - np.asarray(other.direction)).max())
        if cos > 1e-3:
            out.append(
                f"direction [{_fmt(self.direction, ',')}] vs [{_fmt(other.direction, ',')}] "
                f"(cosines differ by up to {cos:.3g})"
            )
        if not out:
            return None
        return f"the {mine} and the {theirs} are not on the same grid ({mine} vs {theirs}): " + "; ".join(out)

    def same_geometry(self, other: Volume, atol: float = 1e-5) -> bool:
        return (
            self.spatial_shape == other.spatial_shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )


def _fmt(values: Any, sep: str = " x ") -> str:
    return sep.join(f"{float(v):.4g}" for v in values)
