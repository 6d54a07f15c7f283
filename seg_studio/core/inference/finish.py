"""Step 3 of a prediction: blended sums -> labels, probabilities and maps on the scan's own grid.

Labels are the argmax of the blended scores (no division needed: every voxel's scores share one
positive weight sum) or a threshold for a single-logit model; the weight sum is built only when
probabilities or maps are asked for. Everything goes back to the source grid exactly (labels
nearest, maps linear), then post-processing runs on the labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import postprocess as _post
from ..checkpoint import ModelMeta
from ..transforms import resample_to_shape
from ..volume import Volume
from . import windows as W
from .blend import Blended
from .prepare import Prepared


def _chunks(n: int, step: int = 8) -> list[slice]:
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def argmax_classes(acc: np.ndarray) -> np.ndarray:
    """Argmax over the class axis, slab by slab, into the smallest unsigned type (no int64 volume)."""
    k = acc.shape[0]
    out = np.empty(acc.shape[1:], dtype=np.uint8 if k <= 256 else np.uint16)
    if k == 2:
        np.greater(acc[1], acc[0], out=out, casting="unsafe")
        return out
    for sl in _chunks(acc.shape[1]):
        out[sl] = acc[:, sl].argmax(axis=0)
    return out


def divide_in_place(acc: np.ndarray, wsum: np.ndarray) -> None:
    """``acc /= wsum`` in place, slab by slab along the first spatial axis (no temporary volume)."""
    for sl in _chunks(wsum.shape[0]):
        acc[:, sl] /= wsum[sl]


def softmax_in_place(acc: np.ndarray) -> None:
    """Softmax over the class axis, slab by slab, in place."""
    for sl in _chunks(acc.shape[1]):
        block = acc[:, sl]
        block -= block.max(axis=0, keepdims=True)
        np.exp(block, out=block)
        block /= block.sum(axis=0, keepdims=True)


def sigmoid_in_place(acc: np.ndarray) -> None:
    np.negative(acc, out=acc)
    np.exp(acc, out=acc)
    acc += 1
    np.reciprocal(acc, out=acc)


class WeightSum:
    """The total window weight per voxel, built on first use (an argmax never needs it)."""

    def __init__(self, prep: Prepared, blend_mode: str) -> None:
        self.prep, self.mode = prep, blend_mode
        self._w: np.ndarray | None = None

    def __call__(self) -> np.ndarray:
        if self._w is None:
            self._w = W.weight_sum(self.prep.work_shape, self.prep.roi, self.prep.starts, self.mode)
        return self._w


def class_indices(
    acc: np.ndarray, tta: bool, probabilities: bool, threshold: float, weights: WeightSum
) -> np.ndarray:
    """Class index per voxel from the blended sums; with ``probabilities``, ``acc`` becomes them (in place).

    With TTA the sums are of probabilities already; without, of logits: a single-logit model is then
    thresholded in logit space, and a sigmoid or softmax is applied only when probabilities are wanted.
    """
    if acc.shape[0] == 1:
        divide_in_place(acc, weights())
        if tta:
            return (acc[0] > threshold).astype(np.uint8)
        cut = math.log(threshold / (1 - threshold)) if 0 < threshold < 1 else 0.0
        idx = (acc[0] > cut).astype(np.uint8)
        if probabilities:
            sigmoid_in_place(acc)
        return idx
    idx = argmax_classes(acc)
    if probabilities:
        divide_in_place(acc, weights())
        if not tta:
            softmax_in_place(acc)
    return idx


def label_dtype(values: Sequence[int]) -> np.dtype:
    top = max(values) if values else 1
    return np.dtype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)


def indices_to_labels(idx: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Class indices -> the checkpoint's label values, in the smallest unsigned type that holds them."""
    lut = np.asarray(values if len(values) > 1 else [0, 1], dtype=label_dtype(values))
    if not np.array_equal(lut, np.arange(len(lut))):
        return lut[idx]
    return idx.astype(lut.dtype, copy=False)


def _geometry(volume: Volume) -> dict[str, Any]:
    return {"spacing": volume.spacing, "origin": volume.origin, "direction": volume.direction}


def labels_volume(
    idx: np.ndarray, volume: Volume, meta: ModelMeta, postprocess: dict[str, Any] | None
) -> Volume:
    """The label map on the scan's grid (nearest), post-processed, with the checkpoint's classes."""
    labels = indices_to_labels(idx, [c.value for c in meta.classes])
    labels = resample_to_shape(labels[None], volume.spatial_shape, "nearest")[0]
    labels = _post.apply(labels, postprocess)
    return Volume(
        array=np.ascontiguousarray(labels),
        labels=meta.label_infos(),
        source=None,
        meta={"kind": "labels", "architecture": meta.architecture, "from": str(volume.source or "")},
        **_geometry(volume),
    )


#: ``Prediction.probabilities`` in uint8 holds round(p * 255): p = value * PROBABILITY_SCALE
PROBABILITY_SCALE = 1.0 / 255.0
PROBABILITY_DTYPES = ("float32", "uint8")


def quantise_probabilities(probs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """round(p * 255) as uint8, slab by slab (a quarter of float32's memory, steps of 1/255)."""
    out = np.empty(probs.shape, np.uint8) if out is None else out
    for sl in _chunks(probs.shape[1]):
        block = probs[:, sl] * np.float32(255.0)
        block += np.float32(0.5)
        np.clip(block, 0, 255, out=block)
        out[:, sl] = block.astype(np.uint8)
    return out


def probabilities_volume(
    probs: np.ndarray, volume: Volume, meta: ModelMeta, dtype: str = "float32"
) -> Volume:
    """Class probabilities ``(K, *work_shape)`` on the scan's grid (linear); one channel for one logit.

    ``dtype="uint8"`` quantises them class by class (``meta["scale"]`` = 1/255), so no float32 copy
    of every class at the scan's size is ever held: a 512x512x400 CT with two classes keeps 210 MB
    instead of 840 MB, and its file is a quarter of the size.
    """
    k = probs.shape[0]
    info: dict[str, Any] = {"kind": "probabilities", "classes": [c.name for c in meta.classes]}
    if dtype == "uint8":
        out = np.empty((k, *volume.spatial_shape), np.uint8)
        for c in range(k):
            quantise_probabilities(
                resample_to_shape(probs[c : c + 1], volume.spatial_shape, "linear"), out[c : c + 1]
            )
        probs, info["scale"] = out, PROBABILITY_SCALE
    else:
        probs = resample_to_shape(probs, volume.spatial_shape, "linear")
    return Volume(
        array=probs if k > 1 else probs[0], channels=k if k > 1 else 1, meta=info, **_geometry(volume)
    )


def map_volume(blended: np.ndarray, weights: WeightSum, volume: Volume, meta: dict[str, Any]) -> Volume:
    """A blended per-voxel map (spread or gate) averaged over the windows, on the scan's grid."""
    divide_in_place(blended[None], weights())
    array = resample_to_shape(blended[None], volume.spatial_shape, "linear")[0]
    return Volume(array=array, meta=meta, **_geometry(volume))


def finish(
    prep: Prepared, blend: Blended, volume: Volume, meta: ModelMeta, opts: Any
) -> tuple[Volume, Volume | None, Volume | None, list[Volume]]:
    """Labels, probabilities (if asked for), uncertainty and attention maps, all on the scan's grid.

    Consumes ``blend`` (its buffers become the probabilities and maps, in place).
    """
    weights = WeightSum(prep, opts.blend)
    idx = class_indices(blend.scores, opts.tta, opts.probabilities, opts.threshold, weights)
    labels = labels_volume(idx, volume, meta, opts.postprocess)
    del idx
    probs = (
        probabilities_volume(blend.scores, volume, meta, opts.probability_dtype)
        if opts.probabilities
        else None
    )
    blend.scores = np.empty(0, np.float32)
    unc = None
    if blend.spread is not None:
        what = "flip TTA" if opts.tta else "the ensemble's members"
        unc = map_volume(
            blend.spread,
            weights,
            volume,
            {
                "kind": "uncertainty",
                "what": f"mean over classes of the std of class probabilities over {what}",
            },
        )
    att = [
        map_volume(
            g,
            weights,
            volume,
            {"kind": "attention", "gate": i, "name": f"attention gate {i} (deepest first)"},
        )
        for i, g in enumerate(blend.gates or [])
    ]
    return labels, probs, unc, att
