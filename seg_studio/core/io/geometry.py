"""Put a label map on its scan's voxel grid when both describe the same voxels in another axis order.

A DICOM series read by ITK and a NIfTI mask of it made by another tool often store the same grid
with an axis flipped (TotalSegmentator's ``example_ct_dicom.nii.gz`` has y reversed): opened side by
side in napari the mask lands hundreds of millimetres away. ``align_to`` reorders and flips the
array, exactly (no interpolation), and refuses when the grids truly differ.
"""

from __future__ import annotations

import numpy as np

from ..errors import ImageLoadError
from ..volume import Volume


def align_to(vol: Volume, ref: Volume, atol_mm: float = 1e-3) -> Volume:
    """``vol``'s voxels on ``ref``'s grid (same geometry as ``ref``), by axis permutation and flips.

    Raises ``ImageLoadError`` when the two grids are not the same voxels (rotated, shifted by a
    fraction of a voxel, other spacing or extent): resampling is a different, lossy operation.
    """
    nd = ref.ndim
    if vol.ndim != nd:
        raise ImageLoadError(f"cannot put a {vol.ndim}D map on a {nd}D scan")
    m = ref.direction_matrix.T @ vol.direction_matrix  # a signed permutation when the axes agree
    perm = np.round(m)
    if not np.allclose(m, perm, atol=1e-4) or not (np.abs(perm).sum(0) == 1).all():
        raise ImageLoadError("the label map is rotated relative to the scan; resample it onto the scan first")
    src_of = {int(np.argmax(np.abs(perm[:, i]))): i for i in range(nd)}  # ref axis j <- vol axis i
    shape_xyz = list(reversed(vol.spatial_shape))
    idx0 = np.zeros(nd)
    for j, i in src_of.items():
        if not np.isclose(vol.spacing[i], ref.spacing[j], rtol=1e-5, atol=1e-6):
            raise ImageLoadError(
                f"the label map's spacing {vol.spacing} differs from the scan's {ref.spacing}; resample it first"
            )
        if perm[j, i] < 0:
            idx0[i] = shape_xyz[i] - 1
    origin = np.asarray(vol.origin) + vol.direction_matrix @ (np.asarray(vol.spacing) * idx0)
    if not np.allclose(origin, ref.origin, atol=atol_mm):
        raise ImageLoadError(
            f"the label map covers other voxels than the scan (first voxel at {np.round(origin, 3).tolist()} "
            f"mm, the scan's at {np.round(ref.origin, 3).tolist()} mm); resample it onto the scan first"
        )
    # numpy axis k is SimpleITK axis nd-1-k; channels (if any) stay first
    off = 1 if vol.channels > 1 else 0
    axes = [nd - 1 - src_of[nd - 1 - k] for k in range(nd)]
    arr = np.transpose(vol.array, list(range(off)) + [a + off for a in axes])
    flips = tuple(off + nd - 1 - j for j, i in src_of.items() if perm[j, i] < 0)
    if flips:
        arr = np.flip(arr, axis=flips)
    if arr.shape[off:] != ref.spatial_shape:
        raise ImageLoadError(f"the label map has {arr.shape[off:]} voxels, the scan {ref.spatial_shape}")
    return Volume(
        array=np.ascontiguousarray(arr),
        spacing=ref.spacing,
        origin=ref.origin,
        direction=ref.direction,
        channels=vol.channels,
        labels=dict(vol.labels),
        source=vol.source,
        meta=dict(vol.meta),
    )
