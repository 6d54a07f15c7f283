"""Fetal head biometry from a head mask: the ellipse fitted to its edge, and HC, BPD and OFD in mm.

Obstetric reports give the head circumference (HC), the biparietal diameter (BPD) and the
occipito-frontal diameter (OFD), all measured on an ellipse placed on the skull (the HC18 challenge
scores HC from an ellipse fitted to the predicted head). So: take the mask's largest connected
component, collect its edge points at sub-pixel positions (midway between each inside pixel and
its outside neighbour, which has no inward bias), fit a conic by direct least squares constrained to
an ellipse (Fitzgibbon et al. 1999, in the numerically stable form of Halir & Flusser 1998), and report
HC as the ellipse's perimeter by Ramanujan's second approximation (error below 1e-9 of the perimeter
for any head-shaped ellipse), BPD as the minor axis and OFD as the major axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import SegStudioError
from .volume import Volume


class BiometryError(SegStudioError):
    """No ellipse can be measured (empty mask, too few edge points, a degenerate shape)."""


@dataclass(frozen=True)
class Ellipse:
    """Centre (x, y), semi-axes ``a >= b`` and the major axis's angle (radians from +x), in mm."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float

    @property
    def circumference(self) -> float:
        return ellipse_circumference(self.a, self.b)


@dataclass(frozen=True)
class HeadBiometry:
    """What a report needs: HC, BPD and OFD in mm, and the fitted ellipse they come from."""

    hc_mm: float
    bpd_mm: float
    ofd_mm: float
    ellipse: Ellipse
    area_mm2: float


def ellipse_circumference(a: float, b: float) -> float:
    """Perimeter of an ellipse with semi-axes ``a`` and ``b`` (Ramanujan's second approximation)."""
    a, b = abs(float(a)), abs(float(b))
    if a + b == 0:
        return 0.0
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def edge_points(mask: np.ndarray, spacing_xy: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """``(n, 2)`` x, y positions (mm) of the mask's edge: midpoints between inside and outside pixels.

    Pixel centres sit at ``index * spacing``. The image border is not an edge: where the head runs
    off the image the fit extrapolates the ellipse from the rest of the outline.
    """
    m = np.asarray(mask, bool)
    ys, xs = np.nonzero(m[:-1, :] != m[1:, :])  # between rows y and y + 1
    ys2, xs2 = np.nonzero(m[:, :-1] != m[:, 1:])  # between columns x and x + 1
    x = np.concatenate([xs.astype(float), xs2 + 0.5])
    y = np.concatenate([ys + 0.5, ys2.astype(float)])
    return np.stack([x * float(spacing_xy[0]), y * float(spacing_xy[1])], axis=1)


def fit_ellipse(points: np.ndarray) -> Ellipse:
    """Direct least-squares ellipse through ``(n, 2)`` points (Halir & Flusser's stable Fitzgibbon fit)."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 6:
        raise BiometryError("too few edge points to fit an ellipse (need 6 or more); is the mask empty?")
    centre = p.mean(axis=0)
    scale = float(np.sqrt(((p - centre) ** 2).sum(axis=1).mean())) or 1.0
    x, y = ((p - centre) / scale).T  # centred and scaled: keeps the scatter matrices well conditioned
    d1 = np.stack([x * x, x * y, y * y], axis=1)
    d2 = np.stack([x, y, np.ones_like(x)], axis=1)
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    try:
        t = -np.linalg.solve(s3, s2.T)
    except np.linalg.LinAlgError:
        raise BiometryError("the edge points lie on a line; no ellipse fits them") from None
    m = s1 + s2 @ t
    m = np.array([m[2] / 2, -m[1], m[0] / 2])
    vals, vecs = np.linalg.eig(m)
    vecs = np.real(vecs)
    cond = 4 * vecs[0] * vecs[2] - vecs[1] ** 2
    ok = np.nonzero(cond > 0)[0]
    if ok.size == 0:
        raise BiometryError("the edge points do not outline an ellipse")
    a1 = vecs[:, ok[0]]
    conic = np.concatenate([a1, t @ a1])
    e = _conic_to_ellipse(conic)
    return Ellipse(e.cx * scale + centre[0], e.cy * scale + centre[1], e.a * scale, e.b * scale, e.angle)


def _conic_to_ellipse(c: np.ndarray) -> Ellipse:
    """Centre, semi-axes and angle of ``A x^2 + B xy + C y^2 + D x + E y + F = 0`` (an ellipse)."""
    a, b, cc, d, e, f = (float(v) for v in c)
    den = b * b - 4 * a * cc
    if den >= 0:
        raise BiometryError("the fitted conic is not an ellipse")
    x0 = (2 * cc * d - b * e) / den
    y0 = (2 * a * e - b * d) / den
    # value of the conic at the centre; the axes follow from the eigenvalues of the quadratic form
    f0 = a * x0 * x0 + b * x0 * y0 + cc * y0 * y0 + d * x0 + e * y0 + f
    lam, vec = np.linalg.eigh(np.array([[a, b / 2], [b / 2, cc]]))
    if f0 == 0 or np.any(-f0 / lam <= 0):
        raise BiometryError("the fitted conic is degenerate")
    axes = np.sqrt(-f0 / lam)
    major = int(np.argmax(axes))
    vx, vy = vec[:, major]
    angle = math.atan2(vy, vx) % math.pi
    return Ellipse(x0, y0, float(axes.max()), float(axes.min()), angle)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2D mask (stray specks must not bend the ellipse)."""
    lab, n = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), bool))
    if n == 0:
        raise BiometryError("the head mask is empty: nothing to measure")
    if n == 1:
        return lab == 1
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=range(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def head_biometry(mask: np.ndarray, spacing_xy: Sequence[float]) -> HeadBiometry:
    """HC, BPD and OFD (mm) of a 2D head mask with isotropic or anisotropic pixel spacing (x, y)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise BiometryError(f"head biometry needs a 2D mask, got {m.ndim}D; measure one slice")
    head = largest_component(m)
    ell = fit_ellipse(edge_points(head, spacing_xy))
    area = float(head.sum()) * float(spacing_xy[0]) * float(spacing_xy[1])
    return HeadBiometry(ell.circumference, 2 * ell.b, 2 * ell.a, ell, area)


def ellipse_mask(
    ellipse: Ellipse, shape: Sequence[int], spacing_xy: Sequence[float] = (1.0, 1.0)
) -> np.ndarray:
    """Rasterise an ellipse (mm) onto a ``(rows, cols)`` grid: True where a pixel centre lies inside."""
    ys, xs = np.mgrid[0 : int(shape[0]), 0 : int(shape[1])]
    x = xs * float(spacing_xy[0]) - ellipse.cx
    y = ys * float(spacing_xy[1]) - ellipse.cy
    c, s = math.cos(ellipse.angle), math.sin(ellipse.angle)
    u, v = x * c + y * s, -x * s + y * c
    return (u / ellipse.a) ** 2 + (v / ellipse.b) ** 2 <= 1.0


def measure_head(labels: Volume, head_value: int = 1) -> HeadBiometry:
    """HC, BPD and OFD of the ``head_value`` region of a 2D label map, in its own spacing (mm).

    A 3D map with one slice (a 2D scan read as a volume) is measured on that slice. The label map
    must carry the scan's true pixel size: a PNG stores none, and 1 mm per pixel is then assumed.
    """
    a = np.asarray(labels.array)
    spacing = tuple(labels.spacing)
    if a.ndim == 3 and a.shape[0] == 1:
        a, spacing = a[0], spacing[:2]
    if a.ndim != 2:
        raise BiometryError(f"head biometry measures one 2D image; this label map is {a.ndim}D {a.shape}")
    return head_biometry(a == head_value, spacing)
