"""Which voxels of a mask the user corrected, and a new prediction that fills only the others.

The user's corrections must never be overwritten by a re-run. A voxel is the user's when its value
is no longer what the model last wrote there: brush, fill, eraser, polygon and the clean-up helpers
all change values, and undoing an edit brings the model's value (and so the model's ownership)
back. This is found from the data itself, so no editing path can slip past it. napari records no
change for a voxel painted with the value it already had, so such a voxel stays the model's.

A voxel the user owned when a prediction was merged stays locked afterwards even where the new
model happens to agree with the user (``ModelBaseline.locked``), so a third model cannot take it
back. Undoing a merge (Ctrl+Z right after a re-run) is recognised from the data too: when most of
the voxels that merge changed hold their values from before it again, the baseline of before the
merge applies. Nothing here knows about napari or Qt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: How many merges back an undo is recognised (each level keeps a copy of its baseline).
UNDO_DEPTH = 2


@dataclass
class Merge:
    """What one merge changed: flat indices, values before and after, and the baseline before it."""

    index: np.ndarray
    before: np.ndarray
    after: np.ndarray
    previous: ModelBaseline | None

    def undone(self, data: np.ndarray) -> bool:
        """True when ``data`` holds the values of before this merge at most of the voxels it changed."""
        if self.index.size == 0:
            return False
        now = data.reshape(-1)[self.index]
        return int((now == self.before).sum()) > int((now == self.after).sum())


@dataclass
class ModelBaseline:
    """What the model last wrote into a mask, and the voxels the user owned when it did."""

    values: np.ndarray
    locked: np.ndarray | None = None
    merge: Merge | None = None

    @classmethod
    def of_prediction(cls, labels: np.ndarray) -> ModelBaseline:
        """A fresh prediction: every voxel is the model's."""
        return cls(values=np.array(labels, copy=True))

    def _trim(self, depth: int = UNDO_DEPTH) -> None:
        """Forget merges older than ``depth`` (their baselines cost a copy of the mask each)."""
        b = self
        for _ in range(depth):
            if b.merge is None or b.merge.previous is None:
                return
            b = b.merge.previous
        b.merge = None


def current_baseline(data: np.ndarray, baseline: ModelBaseline) -> ModelBaseline:
    """The baseline that applies to ``data``: an earlier one where the user undid the merges since."""
    b = baseline
    while b.merge is not None and b.merge.previous is not None and b.merge.undone(data):
        b = b.merge.previous
    return b


def user_voxels(data: np.ndarray, baseline: ModelBaseline | None) -> np.ndarray:
    """Boolean mask of the voxels the user owns: changed since the model wrote them, or locked before.

    With no baseline (a mask the model never wrote, e.g. restored from an autosave) every voxel is
    the user's: nothing tells the corrections from the rest, and overwriting them is not allowed.
    """
    data = np.asarray(data)
    if baseline is None:
        return np.ones(data.shape, dtype=bool)
    b = current_baseline(data, baseline)
    if b.values.shape != data.shape:
        raise ValueError(f"the mask has shape {data.shape}, its prediction had {b.values.shape}")
    owned = data != b.values
    if b.locked is not None:
        owned |= b.locked
    return owned


def merge_prediction(
    data: np.ndarray, labels: np.ndarray, baseline: ModelBaseline | None, keep: bool = True
) -> tuple[np.ndarray, ModelBaseline, int]:
    """The mask after a new prediction ``labels``: the user's voxels kept (``keep``), the rest predicted.

    Returns ``(new mask, new baseline, number of the user's voxels kept)``. With ``keep=False`` the
    prediction replaces everything and the lock is cleared.
    """
    data = np.asarray(data)
    labels = np.asarray(labels).astype(data.dtype, copy=False)
    if labels.shape != data.shape:
        raise ValueError(f"the prediction has shape {labels.shape}, the mask has {data.shape}")
    if not keep:
        owned = np.zeros(data.shape, dtype=bool)
        merged = np.array(labels, copy=True)
    else:
        owned = user_voxels(data, baseline)
        merged = np.where(owned, data, labels)
    index = np.flatnonzero(merged != data)
    previous = current_baseline(data, baseline) if baseline is not None else None
    new = ModelBaseline(
        values=np.array(labels, copy=True),
        locked=owned if owned.any() else None,
        merge=Merge(index, data.reshape(-1)[index], merged.reshape(-1)[index], previous),
    )
    new._trim()
    kept = int(owned.sum())
    log.debug("merged a prediction: %d voxels changed, %d of the user's kept", index.size, kept)
    return merged, new, kept
