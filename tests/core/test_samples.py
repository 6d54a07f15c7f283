"""The synthetic samples: small, deterministic, physically placed, every structure present."""

from __future__ import annotations

import numpy as np
import pytest

from seg_studio.core.samples import make_sample_2d, make_sample_3d


@pytest.mark.parametrize(
    ("make", "shape", "spacing"),
    [
        (make_sample_2d, (128, 128), (0.5, 0.5)),
        (make_sample_3d, (48, 64, 64), (0.9, 0.9, 2.5)),
    ],
)
def test_sample_shapes_labels_and_contrast(make, shape, spacing) -> None:
    image, labels = make()
    assert image.spatial_shape == labels.spatial_shape == shape
    assert image.spacing == labels.spacing == spacing and labels.same_geometry(image)
    assert labels.meta["kind"] == "labels" and labels.array.dtype == np.uint8
    values = set(np.unique(labels.array).tolist())
    assert values == set(labels.labels) == {0, 1, 2, 3}
    assert all(li.name and li.name != f"label {v}" for v, li in labels.labels.items())
    assert len({li.color for v, li in labels.labels.items() if v}) == 3
    means = [float(image.array[labels.array == v].mean()) for v in sorted(values)]
    assert len({round(m) for m in means}) == 4  # every class differs from the others in intensity
    assert float(image.array[labels.array == 0].std()) > 3  # noisy, not flat


def test_samples_are_deterministic_per_seed() -> None:
    a, la = make_sample_3d(seed=0)
    b, lb = make_sample_3d(seed=0)
    c, lc = make_sample_3d(seed=1)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(la.array, lb.array)
    assert not np.array_equal(la.array, lc.array)
