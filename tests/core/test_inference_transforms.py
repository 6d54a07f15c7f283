"""Normalisation, resampling to a spacing and back, and label post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from seg_studio.core import postprocess as post
from seg_studio.core.errors import InferenceError
from seg_studio.core.transforms import normalize, resample_to_shape, resampled_shape, to_spacing


def test_normalisation_modes() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(50, 10, size=(1, 20, 30)).astype(np.int16)
    z = normalize(x, {"mode": "zscore"})
    assert z.dtype == np.float32 and abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-3
    assert x.dtype == np.int16  # the input is never changed
    ct = np.array([[[-1000, -160, 40, 240, 3000]]], np.float32)
    np.testing.assert_allclose(
        normalize(ct, {"mode": "ct_window", "low": -160, "high": 240})[0, 0], [0, 0, 0.5, 1, 1]
    )
    fixed = normalize(ct, {"mode": "ct_window", "low": -160, "high": 240, "mean": 40, "std": 100})
    np.testing.assert_allclose(fixed[0, 0], [-2, -2, 0, 2, 2])
    spiky = rng.normal(0, 1, size=(1, 1000)).astype(np.float32)
    spiky[0, 0] = 1e6
    p = normalize(spiky, {"mode": "percentile", "low": 1, "high": 99, "then": "unit"})
    assert (
        np.isclose(p.max(), 1.0) and p.min() == 0.0 and np.median(p) > 0.3
    )  # the spike did not squash the rest
    mr = np.zeros((1, 10, 10), np.float32)
    mr[0, 2:8, 2:8] = rng.normal(100, 5, (6, 6))
    nz = normalize(mr, {"mode": "zscore", "nonzero": True})
    assert abs(nz[0, 2:8, 2:8].mean()) < 1e-4 and (nz[0, :2] == 0).all()
    two = np.stack([rng.normal(0, 1, (8, 8)), rng.normal(500, 50, (8, 8))]).astype(np.float32)
    assert np.allclose(normalize(two, {"mode": "zscore"}).std(axis=(1, 2)), 1, atol=1e-3)  # per channel
    with pytest.raises(InferenceError, match="unknown normalisation"):
        normalize(x, {"mode": "magic"})


def test_resampling_keeps_extent_and_goes_back_exactly() -> None:
    assert resampled_shape((20, 64, 60), (0.5, 0.5, 2.0), (1.0, 1.0, 1.0)) == (40, 32, 30)
    assert resampled_shape((20, 64, 60), (0.5, 0.5, 2.0), (1.0, 1.0, None)) == (20, 32, 30)
    img = np.random.default_rng(1).normal(size=(1, 20, 64, 60)).astype(np.float32)
    down = to_spacing(img, (0.5, 0.5, 2.0), (1.0, 1.0, 1.0))
    assert down.shape == (1, 40, 32, 30)
    assert resample_to_shape(down, (20, 64, 60)).shape == img.shape
    labels = np.zeros((1, 10, 12), np.uint8)
    labels[0, 2:6, 3:9] = 2
    up = resample_to_shape(labels, (20, 24), "nearest")
    assert up.dtype == np.uint8 and set(np.unique(up)) == {0, 2}
    np.testing.assert_array_equal(resample_to_shape(up, (10, 12), "nearest"), labels)  # x2 and back: exact
    smooth = np.linspace(0, 1, 40, dtype=np.float32).reshape(1, 1, 40)
    there_and_back = resample_to_shape(resample_to_shape(smooth, (1, 80)), (1, 40))
    # linear data survives a x2 round trip (the two edge voxels are clamped, as in any resampler)
    np.testing.assert_allclose(there_and_back[..., 1:-1], smooth[..., 1:-1], atol=1e-6)


def test_postprocess_steps() -> None:
    lab = np.zeros((20, 20), np.uint8)
    lab[2:10, 2:10] = 1  # big square of class 1 ...
    lab[5:7, 5:7] = 0  # ... with a hole
    lab[15:17, 15:17] = 1  # a small island of class 1
    lab[12:14, 2:5] = 2  # class 2 stays untouched by class-1 steps
    largest = post.keep_largest_component(lab, classes=[1])
    assert largest[15, 15] == 0 and largest[3, 3] == 1 and (largest == 2).sum() == 6
    filled = post.fill_holes(lab)
    assert filled[5, 5] == 1 and (filled == 2).sum() == 6
    cleaned = post.remove_small_islands(lab, min_size=5)
    assert cleaned[15, 15] == 0 and cleaned[3, 3] == 1 and (cleaned == 2).sum() == 6
    both = post.apply(lab, {"min_size": 5, "fill_holes": True})
    assert both[5, 5] == 1 and both[15, 15] == 0
    ring = np.zeros((9, 9), np.uint8)
    ring[1:8, 1:8] = 1
    ring[3:6, 3:6] = 2  # an enclosed different class is not a hole to fill
    assert (post.fill_holes(ring) == 2).sum() == 9
    with pytest.raises(InferenceError, match="unknown post-processing"):
        post.apply(lab, {"smooth": True})
