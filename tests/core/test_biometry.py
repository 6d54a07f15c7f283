"""Head biometry: the ellipse fit and the head circumference (Ramanujan perimeter), against ellipses
of known circumference and against the HC18 sonographers' measurements."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from seg_studio.core.biometry import (
    BiometryError,
    Ellipse,
    edge_points,
    ellipse_circumference,
    ellipse_mask,
    fit_ellipse,
    head_biometry,
)
from seg_studio.core.datasets import hc18


def _perimeter_by_integration(a: float, b: float, n: int = 400_000) -> float:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return float(np.hypot(a * np.sin(t), b * np.cos(t)).sum() * (2 * math.pi / n))


@pytest.mark.parametrize(
    "a,b,rel", [(1.0, 1.0, 1e-9), (100.0, 70.0, 1e-9), (3.0, 1.0, 1e-7), (10.0, 0.5, 1e-4)]
)
def test_ramanujan_circumference_matches_the_integral(a: float, b: float, rel: float) -> None:
    """Exact to 1e-9 for head-like shapes; Ramanujan's error grows only for needle-thin ellipses."""
    exact = _perimeter_by_integration(a, b)
    assert ellipse_circumference(a, b) == pytest.approx(exact, rel=rel)
    assert ellipse_circumference(b, a) == pytest.approx(exact, rel=rel)


def test_fit_recovers_an_ellipse_from_points_on_it() -> None:
    t = np.linspace(0, 2 * math.pi, 50, endpoint=False)
    a, b, th, cx, cy = 40.0, 25.0, 0.7, 120.0, -30.0
    x = cx + a * np.cos(t) * math.cos(th) - b * np.sin(t) * math.sin(th)
    y = cy + a * np.cos(t) * math.sin(th) + b * np.sin(t) * math.cos(th)
    e = fit_ellipse(np.stack([x, y], axis=1))
    assert (e.cx, e.cy, e.a, e.b) == pytest.approx((cx, cy, a, b), abs=1e-6)
    assert e.angle == pytest.approx(th, abs=1e-6)


@pytest.mark.parametrize(
    "a,b,angle,spacing",
    [(100, 70, 0.3, 0.1), (40, 30, 1.2, 0.5), (15, 11, 2.0, 0.2), (60, 59, 0.0, 0.07)],
)
def test_head_biometry_of_a_rasterised_ellipse_of_known_circumference(
    a: float, b: float, angle: float, spacing: float
) -> None:
    """a, b in pixels; the mask is the ellipse drawn at pixel centres, measured in mm."""
    truth = Ellipse(250.3 * spacing, 200.7 * spacing, a * spacing, b * spacing, angle)
    mask = ellipse_mask(truth, (420, 540), (spacing, spacing))
    hb = head_biometry(mask, (spacing, spacing))
    # half a pixel of HC at most (edges are sampled on the pixel grid), 0.3 % of it for big heads
    assert abs(hb.hc_mm - truth.circumference) < max(0.5 * spacing, 0.003 * truth.circumference)
    assert hb.ofd_mm == pytest.approx(2 * truth.a, abs=spacing)
    assert hb.bpd_mm == pytest.approx(2 * truth.b, abs=spacing)


def test_a_head_cut_by_the_image_border_is_extrapolated_and_specks_are_ignored() -> None:
    truth = Ellipse(100.0, 20.0, 80.0, 50.0, 0.2)  # runs off the top of a 150 x 200 image
    mask = ellipse_mask(truth, (150, 200))
    mask[140:143, 5:8] = True  # a speck far from the head
    hb = head_biometry(mask, (1.0, 1.0))
    assert hb.hc_mm == pytest.approx(truth.circumference, rel=0.01)


def test_anisotropic_pixels_are_measured_in_mm() -> None:
    truth = Ellipse(60.0, 50.0, 30.0, 20.0, 0.0)
    mask = ellipse_mask(truth, (300, 200), (0.6, 0.3))
    assert head_biometry(mask, (0.6, 0.3)).hc_mm == pytest.approx(truth.circumference, rel=0.01)


def test_edge_points_of_a_single_pixel_surround_it() -> None:
    m = np.zeros((5, 5), bool)
    m[2, 3] = True  # row 2, column 3: centre at x = 3 * 2.0 mm, y = 2 * 1.0 mm
    pts = edge_points(m, (2.0, 1.0))
    assert {(float(x), float(y)) for x, y in pts} == {(5.0, 2.0), (7.0, 2.0), (6.0, 1.5), (6.0, 2.5)}


def test_nothing_to_measure_is_one_clear_error() -> None:
    with pytest.raises(BiometryError, match="empty"):
        head_biometry(np.zeros((20, 20), bool), (1.0, 1.0))
    with pytest.raises(BiometryError, match="2D"):
        head_biometry(np.zeros((2, 20, 20), bool), (1.0, 1.0))
    speck = np.zeros((20, 20), bool)
    speck[10, 10] = True  # four edge points: too few for an ellipse
    with pytest.raises(BiometryError, match="too few"):
        head_biometry(speck, (1.0, 1.0))


def test_hc_of_the_hc18_head_masks_matches_the_sonographers_csv(data_dir: Path) -> None:
    """Every 10th HC18 case: the head mask made from the annotation measures the CSV's HC."""
    folder = data_dir / "hc18_fetal_head_ultrasound"
    refs = hc18.read_reference(folder)
    assert len(refs) == 500
    errors = []
    for name in sorted(refs)[::10]:
        image, mask = hc18.read_case(folder, name, refs)
        assert image.spacing == (refs[name].pixel_mm,) * 2
        errors.append(head_biometry(np.asarray(mask.array), mask.spacing).hc_mm - refs[name].hc_mm)
    err = np.abs(errors)
    assert err.mean() < 0.1 and err.max() < 0.5, (err.mean(), err.max())


def test_measure_head_reads_the_label_map_and_its_spacing() -> None:
    from seg_studio.core.biometry import measure_head
    from seg_studio.core.volume import Volume

    truth = Ellipse(30.0, 20.0, 15.0, 10.0, 0.5)
    mask = ellipse_mask(truth, (200, 300), (0.2, 0.2)).astype(np.uint8) * 2  # head stored as class 2
    labels = Volume.from_array(mask, spacing=(0.2, 0.2))
    assert measure_head(labels, head_value=2).hc_mm == pytest.approx(truth.circumference, rel=0.005)
    one_slice = Volume.from_array(mask[None], spacing=(0.2, 0.2, 3.0))  # a 2D scan read as a volume
    assert measure_head(one_slice, head_value=2).hc_mm == pytest.approx(truth.circumference, rel=0.005)
    with pytest.raises(BiometryError, match="empty"):
        measure_head(labels, head_value=1)
    with pytest.raises(BiometryError, match="one 2D image"):
        measure_head(Volume.from_array(np.zeros((3, 20, 20), np.uint8)))
