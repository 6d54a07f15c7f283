"""MSD Task04 Hippocampus, all 245 pairs here: the 45 dev cases plus the 200 of ``_extra``, one folder.

The held-back part keeps what the shipped models were validated on: the dev folder's split is made
by the same rule as training's own (20 % by image hash), so its 9 held-back cases stay held back,
and 20 % of the extra cases (by image hash too) join them. Scores on the old 9 stay comparable with
today's cards; the larger held-back set (49) says more.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ImageLoadError

log = logging.getLogger(__name__)


def _hashed_pairs(images: Path, labels: Path) -> list[tuple[str, str, Path, Path]]:
    """(hash, name, image path, label path) of a folder pair, the hash as training computes it."""
    from .. import io
    from ..training.data import image_hash, pairs_from_folders

    out = []
    for src in pairs_from_folders(images, labels):
        out.append((image_hash(io.read(src.image).array), src.name, Path(src.image), Path(src.labels)))
    return out


def prepare(sources: Sequence[Path], out: Path, val_fraction: float = 0.2) -> dict[str, Any]:
    """Copy every pair of the ``sources`` (folders with images/ and labels/) into ``out``; write the split.

    Each source gets its own hash split at ``val_fraction``; the first source's matches the split of
    a run trained on it alone.
    """
    from ..training.data import Split, make_or_extend_split

    out = Path(out)
    val: list[str] = []
    train: list[str] = []
    names: dict[str, str] = {}
    for folder in sources:
        pairs = _hashed_pairs(Path(folder) / "images", Path(folder) / "labels")
        clash = [n for _, n, _, _ in pairs if n in names.values()]
        if clash:
            raise ImageLoadError(
                f"{folder}: case {clash[0]} is also in an earlier folder; names must be unique"
            )
        split, _ = make_or_extend_split([h for h, *_ in pairs], [n for _, n, _, _ in pairs], val_fraction)
        val += split.val
        train += split.train
        for h, name, img, lab in pairs:
            names[h] = name
            for src, sub in ((img, "images"), (lab, "labels")):
                (out / sub).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, out / sub / src.name)
        log.info("%s: %d pairs, %d held back", folder, len(pairs), len(split.val))
    Split(sorted(val), sorted(train), names).write(out / "split.json")
    return {"cases": len(names), "val_cases": len(val), "train_cases": len(train)}
