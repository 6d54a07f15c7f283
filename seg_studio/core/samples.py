"""Small synthetic scans with ground truth, made by code (nothing downloaded, nothing bundled).

They exist so that the app, the CLI demo and the tests have something realistic to open anywhere:
physical spacing that is not 1 mm, anisotropic slices, a smooth bias field, noise, partial-volume
blur, and a few structures of different size and contrast (one small and low-contrast on purpose).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .volume import LabelInfo, Volume

LABELS_2D = {
    0: LabelInfo(0, "background", (0, 0, 0)),
    1: LabelInfo(1, "right lung", (66, 135, 245)),
    2: LabelInfo(2, "left lung", (80, 200, 120)),
    3: LabelInfo(3, "heart", (230, 60, 60)),
}
LABELS_3D = {
    0: LabelInfo(0, "background", (0, 0, 0)),
    1: LabelInfo(1, "organ", (240, 180, 40)),
    2: LabelInfo(2, "lesion", (230, 50, 50)),
    3: LabelInfo(3, "vessel", (60, 120, 240)),
}


def _ellipsoid(shape: tuple[int, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True))
    return r2 <= 1.0


def _finish(intensity: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Partial-volume blur, a smooth multiplicative bias field and Gaussian noise."""
    img = ndimage.gaussian_filter(intensity, 0.8)
    bias = ndimage.gaussian_filter(rng.normal(0, 1, intensity.shape), np.array(intensity.shape) / 4)
    bias = 1 + 0.15 * bias / (np.abs(bias).max() + 1e-6)
    img = img * bias + rng.normal(0, noise, intensity.shape)
    return img.astype(np.float32)


def make_sample_2d(seed: int = 0) -> tuple[Volume, Volume]:
    """A 128x128 chest-X-ray-like image (0.5 mm pixels): two lungs and a heart, with labels."""
    rng = np.random.default_rng(seed)
    shape = (128, 128)
    jitter = lambda s: rng.uniform(-s, s, 2)  # noqa: E731
    body = _ellipsoid(shape, np.array([64, 64]) + jitter(2), np.array([58, 52]))
    right = _ellipsoid(shape, np.array([60, 42]) + jitter(3), np.array([38, 16]) + jitter(2))
    left = _ellipsoid(shape, np.array([60, 86]) + jitter(3), np.array([36, 15]) + jitter(2))
    heart = _ellipsoid(shape, np.array([84, 70]) + jitter(3), np.array([16, 18]) + jitter(2))
    labels = np.zeros(shape, np.uint8)
    labels[right] = 1
    labels[left] = 2
    labels[heart] = 3  # the heart overlaps the left lung's lower edge, as on a real film
    intensity = np.full(shape, 20.0, np.float32)
    intensity[body] = 150
    intensity[(labels == 1) | (labels == 2)] = 70
    intensity[labels == 3] = 185
    image = np.clip(_finish(intensity, rng, 8.0), 0, 255).astype(np.uint8)
    spacing = (0.5, 0.5)
    img = Volume.from_array(
        image, spacing=spacing, meta={"kind": "image", "modality": "DX", "name": "sample 2D"}
    )
    lab = Volume.from_array(labels, spacing=spacing, labels=dict(LABELS_2D), meta={"kind": "labels"})
    return img, lab


def make_sample_3d(seed: int = 0) -> tuple[Volume, Volume]:
    """A 48x64x64 (z,y,x) MR-like volume, 0.9 x 0.9 x 2.5 mm: an organ with a faint lesion and a
    vessel running through the slices, with labels."""
    rng = np.random.default_rng(seed)
    shape = (48, 64, 64)
    j = lambda s: rng.uniform(-s, s, 3)  # noqa: E731
    body = _ellipsoid(shape, np.array([24, 32, 32]) + j(1), np.array([30, 29, 29]))
    organ = _ellipsoid(shape, np.array([24, 30, 28]) + j(2), np.array([13, 14, 17]) + j(2))
    lesion = _ellipsoid(shape, np.array([22, 27, 33]) + j(2), np.array([3.5, 5, 5]))
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    cy, cx = 36 + 4 * np.sin(zz / 9.0), 16 + 0.3 * zz  # a gently curving vessel
    vessel = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 2.2**2) & body
    labels = np.zeros(shape, np.uint8)
    labels[organ] = 1
    labels[organ & lesion] = 2
    labels[vessel] = 3
    intensity = np.full(shape, 5.0, np.float32)
    intensity[body] = 100
    intensity[labels == 1] = 160
    intensity[labels == 2] = 128  # low contrast against the organ, on purpose
    intensity[labels == 3] = 230
    image = np.clip(_finish(intensity, rng, 10.0), 0, None)
    spacing = (0.9, 0.9, 2.5)
    origin = (-28.8, -28.8, -60.0)
    img = Volume.from_array(
        image, spacing=spacing, origin=origin, meta={"kind": "image", "modality": "MR", "name": "sample 3D"}
    )
    lab = Volume.from_array(
        labels, spacing=spacing, origin=origin, labels=dict(LABELS_3D), meta={"kind": "labels"}
    )
    return img, lab
