"""Checks on training labels, at the door of training and fine-tuning.

Labels drawn on another grid (2 mm for a 1 mm scan, or shifted by 50 mm) would train a model on the
wrong voxels without any error, since only the array sizes have to agree; negative or huge label
values would become classes that no label map can hold; labels with no foreground would write a
model trained on background alone. Each is refused here with one line that says what to do.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..checkpoint_schema import MAX_CLASS_VALUE
from ..errors import TrainingError
from ..volume import Volume

#: Label value meaning "no supervision here" (the same as ``data.IGNORE_INDEX``).
_IGNORE = -1


def check_pair(name: str, image: Volume, labels: Volume) -> None:
    """Refuse labels whose size, spacing, origin or direction differ from the image's, or whose
    values are not whole numbers."""
    a = labels.array
    if a.dtype.kind == "f" and a.size and not np.array_equal(a, np.round(a)):
        raise TrainingError(
            f"{name}: the label map holds fractional values (a probability map or an interpolated mask?); "
            "labels are whole numbers: threshold it or resample it with nearest neighbour"
        )
    if a.dtype.kind not in "biuf":
        raise TrainingError(f"{name}: the label map holds {a.dtype} values, not whole numbers")
    diff = labels.grid_difference(image)
    if diff:
        raise TrainingError(
            f"{name}: {diff}; resample the labels onto the image (nearest-neighbour interpolation) and try again"
        )


def check_label_values(values: np.ndarray, name: str) -> None:
    """Mapped label values must be classes: whole numbers in 0..65535, or -1 (ignore)."""
    if values.size == 0:
        raise TrainingError(f"{name}: the label map is empty")
    lo, hi = int(values.min()), int(values.max())
    if lo < _IGNORE:
        bad = sorted({int(v) for v in np.unique(values[values < _IGNORE])})[:6]
        raise TrainingError(
            f"{name}: label value(s) {bad} are negative; classes are 0, 1, 2, ... (-1 marks ignored voxels): "
            f"map them with --label-map (e.g. {bad[0]}:1 or {bad[0]}:ignore)"
        )
    if hi > MAX_CLASS_VALUE:
        raise TrainingError(
            f"{name}: label value {hi} is too large for a class (at most {MAX_CLASS_VALUE}); "
            f"map it with --label-map (e.g. {hi}:1)"
        )


def check_has_foreground(labelled: Iterable[tuple[str, np.ndarray]]) -> None:
    """Some voxel of some case must be a class other than background (0) and ignore (-1)."""
    names, any_labelled = [], False
    for name, values in labelled:
        names.append(name)
        fg = (values != 0) & (values != _IGNORE)
        if bool(fg.any()):
            return
        any_labelled = any_labelled or bool((values == 0).any())
    what = "only background (0)" if any_labelled else "only ignored voxels"
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    raise TrainingError(
        f"the labels of {len(names)} case(s) ({shown}) hold {what}: there is nothing to learn; "
        "paint the structures to segment (or check --label-map and --ignore-value) and try again"
    )
