"""A series of corrected scans: earlier pairs kept beside the model, replayed in the next fine-tune.

Fine-tuning on scan N+1 alone forgets scans 1..N; retraining on all of them from nothing wastes the
budget. So each fine-tune of a series stores its corrected pairs in a folder (``<child>.replay/`` beside
the first child, then the folder its parent's provenance names), by image content hash, with the label
values already mapped to classes (-1 where nothing was corrected), and the next fine-tune trains on them
too. A scan corrected again replaces its earlier pair. The folder's ``replay.json`` lists the pairs; a
pair whose files are gone is skipped with a warning, never an error.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TrainingError
from ..volume import Volume
from .data import PairSource

log = logging.getLogger(__name__)

INDEX = "replay.json"
FOLDER_SUFFIX = ".replay"


@dataclass
class ReplayPair:
    """One stored pair: its image hash and name, its two files in the folder, and what trained on it."""

    hash: str
    name: str
    image: str
    labels: str
    added: str
    model: str = ""


class ReplayStore:
    """The corrected pairs of one series, in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def entries(self) -> dict[str, ReplayPair]:
        """The stored pairs by image hash ({} for a new folder)."""
        index = self.folder / INDEX
        if not index.exists():
            return {}
        try:
            raw = json.loads(index.read_text())
            return {h: ReplayPair(**e) for h, e in raw.get("pairs", {}).items()}
        except (OSError, ValueError, TypeError) as exc:
            raise TrainingError(
                f"{index}: not a readable replay index ({exc}); move the folder away to start a new series"
            ) from None

    def pairs(self) -> list[PairSource]:
        """Every stored pair whose files still exist, by its own name, oldest first."""
        out = []
        for e in sorted(self.entries().values(), key=lambda e: e.added):
            img, lab = self.folder / e.image, self.folder / e.labels
            if img.exists() and lab.exists():
                out.append(PairSource(e.name, img, lab))
            else:
                log.warning("replay pair %s (%s) has lost its files; left out", e.name, e.hash)
        return out

    def add(self, image_hash: str, name: str, image: Volume, values: np.ndarray, model: str) -> ReplayPair:
        """Store (or replace) the pair of ``image_hash``: the image as it was, the class values as trained."""
        from ..atomic import atomic_write
        from ..io import write

        self.folder.mkdir(parents=True, exist_ok=True)
        entry = ReplayPair(image_hash, name, f"{image_hash}_image.mha", f"{image_hash}_labels.mha",
                           _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), model)  # fmt: skip
        write(image, self.folder / entry.image)
        labels = Volume.from_array(
            np.asarray(values, dtype=np.int16), spacing=image.spacing, origin=image.origin,
            direction=image.direction, meta={"kind": "labels"},
        )  # fmt: skip
        write(labels, self.folder / entry.labels)
        entries = self.entries()
        entries[image_hash] = entry
        text = json.dumps({"pairs": {h: asdict(e) for h, e in entries.items()}}, indent=1)
        atomic_write(self.folder / INDEX, lambda tmp: tmp.write_text(text))
        return entry


def replay_folder(replay: bool | str | Path, parent_provenance: dict[str, Any], out: Path) -> Path | None:
    """Where a fine-tune's series lives: the folder given; with ``True``, the one the parent's provenance
    names (the series goes on) or a new ``<out stem>.replay/`` beside ``out``; None without replay."""
    if replay is False or replay is None:
        return None
    if replay is not True:
        return Path(replay)
    known = (parent_provenance.get("replay") or {}).get("folder")
    if known and Path(known).is_dir():
        return Path(known)
    stem = out.name[: -len(".segmodel")] if out.name.endswith(".segmodel") else out.stem
    return out.with_name(stem + FOLDER_SUFFIX)
