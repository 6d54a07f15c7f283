"""Clicks: what a user (or a simulated user) says about a structure, and where the next one goes.

A ``Click`` names the label value of the structure, whether the voxel belongs to it, and the voxel in
the scan's array index order (as ``core.io.read`` returns it: z, y, x or y, x). ``next_click`` places
the simulated user's next click the way DeepGrow and DeepEdit do: at the centre (the voxel farthest
from the border) of the largest false-negative or false-positive region. Training, the benchmark and
the tests all use it, so they simulate the same user.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SegStudioError

#: Largest label value a click may name (label maps are written as uint16 at most).
MAX_CLASS_VALUE = 65535
#: More clicks than anyone makes on one scan; a longer file is refused rather than run for hours.
MAX_CLICKS = 10_000


class ClickError(SegStudioError):
    """A clicks file or a click does not fit the scan (bad JSON, a voxel outside, class 0...)."""


@dataclass(frozen=True)
class Click:
    """One click: ``value`` is the structure's label value, ``voxel`` array indices (z, y, x or y, x)."""

    value: int
    positive: bool
    voxel: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"class": self.value, "positive": self.positive, "voxel": list(self.voxel)}


def check_click(click: Click, shape: Sequence[int], where: str = "click") -> None:
    """Refuse a click whose class or voxel does not fit a scan of ``shape``."""
    if not 1 <= click.value <= MAX_CLASS_VALUE:
        raise ClickError(f"{where}: class {click.value} is not a structure (give a label value 1..65535)")
    if len(click.voxel) != len(shape):
        raise ClickError(
            f"{where}: voxel {list(click.voxel)} has {len(click.voxel)} indices; the scan is {len(shape)}D"
        )
    if any(not 0 <= v < s for v, s in zip(click.voxel, shape, strict=True)):
        raise ClickError(
            f"{where}: voxel {list(click.voxel)} lies outside the scan (array shape {list(shape)})"
        )


def click_from_json(item: Any, where: str) -> Click:
    """One ``{"class": VALUE, "positive": bool, "voxel": [i, j(, k)]}`` record, types checked."""
    if not isinstance(item, dict) or set(item) != {"class", "positive", "voxel"}:
        raise ClickError(
            f'{where}: a click is {{"class": VALUE, "positive": true|false, "voxel": [i, j, k]}}'
        )
    value, positive, voxel = item["class"], item["positive"], item["voxel"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClickError(f"{where}: class must be an integer label value, got {json.dumps(value)[:40]}")
    if not isinstance(positive, bool):
        raise ClickError(f"{where}: positive must be true or false, got {json.dumps(positive)[:40]}")
    if (
        not isinstance(voxel, list)
        or len(voxel) not in (2, 3)
        or any(isinstance(v, bool) or not isinstance(v, int) for v in voxel)
    ):
        raise ClickError(f"{where}: voxel must be 2 or 3 integer array indices, got {json.dumps(voxel)[:60]}")
    return Click(value, positive, tuple(voxel))


def read_clicks(path: str | Path, shape: Sequence[int] | None = None) -> list[Click]:
    """The clicks of a JSON file in the order clicked; each checked against ``shape`` when given."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ClickError(f"{path}: cannot read the clicks file ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ClickError(f"{path.name}: not a JSON list of clicks ({exc})") from None
    if not isinstance(data, list) or not data:
        raise ClickError(f"{path.name}: a clicks file is a non-empty JSON list of clicks")
    if len(data) > MAX_CLICKS:
        raise ClickError(f"{path.name}: {len(data)} clicks (at most {MAX_CLICKS})")
    clicks = [click_from_json(item, f"{path.name}: click {i + 1}") for i, item in enumerate(data)]
    if shape is not None:
        for i, c in enumerate(clicks):
            check_click(c, shape, f"{path.name}: click {i + 1}")
    return clicks


def write_clicks(path: str | Path, clicks: Sequence[Click]) -> Path:
    """Save clicks (atomically) in the format ``read_clicks`` reads: they travel with the labels."""
    from ..atomic import atomic_write

    text = json.dumps([c.to_json() for c in clicks], indent=1)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def next_click(
    predicted: np.ndarray, target: np.ndarray, spacing_zyx: Sequence[float] | None = None
) -> tuple[bool, tuple[int, ...]] | None:
    """The simulated user's next click: (positive, voxel) at the centre of the largest error region,
    positive for a missed region (false negative), negative for a wrong one; None when there is none."""
    from scipy import ndimage

    pred, want = predicted.astype(bool), target.astype(bool)
    best: tuple[int, bool, np.ndarray, tuple[slice, ...]] | None = None
    for positive, err in ((True, want & ~pred), (False, pred & ~want)):
        if not err.any():
            continue
        lab, n = ndimage.label(err)
        sizes = np.bincount(lab.ravel())[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            box = ndimage.find_objects(lab)[k]
            best = (int(sizes[k]), positive, lab[box] == k + 1, box)
    if best is None:
        return None
    _, positive, region, box = best
    dist = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing_zyx)[
        (slice(1, -1),) * region.ndim
    ]
    # Among the deepest voxels (a band, in an elongated region) the one nearest their middle.
    deepest = np.argwhere(dist >= dist.max() - 1e-6)
    local = deepest[int(np.argmin(((deepest - deepest.mean(0)) ** 2).sum(1)))]
    return positive, tuple(int(b.start + i) for b, i in zip(box, local, strict=True))
