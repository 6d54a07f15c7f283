"""npe2 sample data: the synthetic 2D and 3D scans with their ground-truth labels (made by code)."""

from __future__ import annotations

from .reader import LayerData, volume_layer_data


def sample_2d() -> list[LayerData]:
    """A chest-X-ray-like 2D image (0.5 mm pixels) with lung and heart labels."""
    from ..core.samples import make_sample_2d

    image, labels = make_sample_2d()
    return [volume_layer_data(image, name="sample 2D"), volume_layer_data(labels, name="sample 2D labels")]


def sample_3d() -> list[LayerData]:
    """An MR-like 3D volume (0.9 x 0.9 x 2.5 mm) with organ, lesion and vessel labels."""
    from ..core.samples import make_sample_3d

    image, labels = make_sample_3d()
    return [volume_layer_data(image, name="sample 3D"), volume_layer_data(labels, name="sample 3D labels")]
