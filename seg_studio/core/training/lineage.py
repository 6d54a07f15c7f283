"""The lineage of a checkpoint: the chain of fine-tunes back to the model it started from.

Every fine-tuned child names its parent by the SHA-256 of the parent's file (``provenance.parent``),
so the chain is found by hashing the checkpoints in a few folders (the child's own, the user's model
folder, the bundled one) and following the hashes. The panel shows the chain and can step back along
it ("use this version").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Version:
    """One checkpoint of a lineage, with what its fine-tune reported."""

    path: Path
    hash: str
    kind: str  # "finetune", "train", or "" (imported, untrained, unknown)
    date: str = ""
    dice_before: float | None = None
    dice_after: float | None = None
    better: bool | None = None
    dice_on: str = ""

    def label(self) -> str:
        """One line for a list: name, then the fine-tune's Dice (and whether it was kept better)."""
        if self.kind != "finetune":
            return f"{self.path.name} ({self.kind or 'start'})"
        scores = f"Dice {_f(self.dice_before)} -> {_f(self.dice_after)}"
        return f"{self.path.name} ({scores}{'' if self.better is not False else ', not better'})"


def _f(v: float | None) -> str:
    return "?" if v is None else f"{v:.3f}"


def _version(path: Path, file_hash: str, prov: dict[str, Any]) -> Version:
    acceptance = prov.get("acceptance") or {}
    return Version(
        path,
        file_hash,
        str(prov.get("kind") or ""),
        str(prov.get("date") or ""),
        prov.get("dice_before"),
        prov.get("dice_after"),
        acceptance.get("better"),
        str(prov.get("dice_on") or ""),
    )


def lineage(path: str | Path, folders: Iterable[str | Path] = (), limit: int = 100) -> list[Version]:
    """``[path, its parent, the parent's parent, ...]`` as far as the parents are found in ``folders``
    (and ``path``'s own folder); a parent that is nowhere to be found ends the chain."""
    from .. import checkpoint

    path = Path(path)
    by_hash: dict[str, Path] | None = None
    chain: list[Version] = []
    current: Path | None = path
    while current is not None and len(chain) < limit:
        prov = checkpoint.read_meta(current).provenance or {}
        chain.append(_version(current, checkpoint.file_hash(current), prov))
        parent_hash = prov.get("parent")
        if not parent_hash:
            break
        if by_hash is None:
            by_hash = _index(path, folders)
        current = by_hash.get(parent_hash)
        if current is not None and any(v.path == current for v in chain):
            break  # a loop cannot be a lineage
    return chain


def _index(path: Path, folders: Iterable[str | Path]) -> dict[str, Path]:
    """File hash -> checkpoint, over ``path``'s folder and ``folders`` (unreadable files skipped)."""
    from .. import checkpoint

    out: dict[str, Path] = {}
    for folder in [path.parent, *map(Path, folders)]:
        if not folder.is_dir():
            continue
        for p in sorted(folder.glob(f"*{checkpoint.SUFFIX}")):
            try:
                out.setdefault(checkpoint.file_hash(p), p)
            except OSError as exc:
                log.warning("%s: not read for the lineage (%s)", p, exc)
    return out
