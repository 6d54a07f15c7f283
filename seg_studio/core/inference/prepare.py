"""Step 1 of a prediction: check the pairing, normalise, resample to the model's grid, place windows.

Everything the window loop needs is in one ``Prepared``; nothing here touches the model's weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..checkpoint import ModelMeta
from ..errors import InferenceError
from ..models.base import SegModel
from ..transforms import normalize, resample_to_shape, resampled_shape
from ..volume import Volume
from . import windows as W

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The scan as the model sees it, and where the windows go.

    ``image`` is ``(C, *work_shape)`` float32; ``work_shape`` differs from ``src_shape`` only when the
    model runs at its own spacing. ``roi`` has one entry per array axis (a leading 1 in slice mode).
    """

    image: np.ndarray
    src_shape: tuple[int, ...]
    work_shape: tuple[int, ...]
    roi: tuple[int, ...]
    starts: list[tuple[int, ...]]
    slice_mode: bool


def check_pairing(volume: Volume, model: SegModel, meta: ModelMeta, overlap: float = 0.5) -> bool:
    """Validate the overlap and that the scan fits the model; True for slice mode (a 2D model on a
    3D scan). Cheap, so a bad pairing fails before any work."""
    if not 0 <= overlap < 1:
        raise InferenceError(f"overlap must be in [0, 1), got {overlap}")
    if meta.interactive is not None and volume.channels != meta.in_channels:
        raise InferenceError(
            "this is an interactive model: it segments what you click; use it with clicks "
            "(seg-studio refine SCAN --model M --clicks clicks.json --out OUT, or the panel)"
        )
    if volume.channels != meta.in_channels:
        raise InferenceError(
            f"the model takes {meta.in_channels} channel(s) ({', '.join(meta.channel_names)}) but the scan has "
            f"{volume.channels}"
        )
    if model.spatial_dims != meta.spatial_dims or model.out_channels != meta.out_channels:
        raise InferenceError("the model does not match its metadata (dims or classes); reload the checkpoint")
    if meta.spatial_dims == 3 and volume.ndim == 2:
        raise InferenceError("this is a 3D model and the scan is 2D; pick a 2D model")
    return meta.spatial_dims == 2 and volume.ndim == 3


def target_spacing(meta: ModelMeta, volume: Volume, slice_mode: bool) -> list[float | None] | None:
    """The spacing (x,y(,z)) to run at; None keeps the scan's own. Slice mode resamples in-plane only."""
    if meta.spacing is None:
        return None
    target: list[float | None] = list(meta.spacing)
    if slice_mode:
        target = [*target[:2], None]  # in-plane only; slices stay slices
    if len(target) != volume.ndim:
        raise InferenceError(f"model spacing {meta.spacing} does not fit a {volume.ndim}D scan")
    return target


def window_size(meta: ModelMeta, shape: Sequence[int], slice_mode: bool) -> tuple[int, ...]:
    """The window per array axis: the checkpoint's patch, clipped to the scan (1-slice in slice mode)."""
    patch = tuple(meta.patch_size) or ((96,) * 3 if meta.spatial_dims == 3 else (256, 256))
    if slice_mode:
        patch = (1, *patch)
    if len(patch) != len(shape):
        raise InferenceError(f"patch size {meta.patch_size} does not fit a {len(shape)}D scan")
    return tuple(min(p, s) for p, s in zip(patch, shape, strict=True))


def model_input(volume: Volume, meta: ModelMeta, slice_mode: bool) -> np.ndarray:
    """The normalised float32 ``(C, *spatial)`` image on the model's grid (its spacing, if it has one)."""
    src_shape = volume.spatial_shape
    image = normalize(volume.channel_first(), meta.normalization)
    target = target_spacing(meta, volume, slice_mode)
    work_shape = src_shape if target is None else resampled_shape(src_shape, volume.spacing, target)
    if work_shape != src_shape:
        log.info("resampling %s -> %s voxels for the model's spacing %s", src_shape, work_shape, meta.spacing)
        image = resample_to_shape(image, work_shape, "linear")
    return image


def prepare(volume: Volume, meta: ModelMeta, overlap: float, slice_mode: bool) -> Prepared:
    """Normalise, resample and place the windows (MONAI's placement) for one checked pairing."""
    image = model_input(volume, meta, slice_mode)
    work_shape = tuple(image.shape[1:])
    roi = window_size(meta, work_shape, slice_mode)
    starts = W.window_starts(work_shape, roi, overlap)
    return Prepared(image, volume.spatial_shape, work_shape, roi, starts, slice_mode)
