"""Training pairs: where they come from, how labels map to classes, the fixed split, patch sampling.

Everything is preloaded into memory as tensors (our data sets are small; a 2-core CPU cannot afford a
loader that decodes PNGs every step) and patches are cut and stacked in torch. Label arrays use
``IGNORE_INDEX`` (-1) for voxels that must not count (untouched voxels of a correction, padding,
values mapped to ``ignore``).

The validation split is chosen once per data set by *image content hash* (so renaming or moving
files, or correcting a case's labels, does not move it between train and validation) and stored as
JSON beside the run; later runs and fine-tunes read it back and never reshuffle it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TrainingError
from ..io import case_name
from ..volume import Volume

log = logging.getLogger(__name__)

#: Label value meaning "no supervision here" in the arrays training consumes.
IGNORE_INDEX = -1


# --- where pairs come from -------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSource:
    """One case: an image and its labels, as paths or in-memory Volumes (from the GUI)."""

    name: str
    image: Path | Volume
    labels: Path | Volume


def _entries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise TrainingError(f"{folder}: no such folder")
    return [
        p
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".") and (p.is_dir() or case_name(p) != p.name)
    ]


def pairs_from_folders(images: Path, labels: Path) -> list[PairSource]:
    """Match ``images/`` and ``labels/`` entries by name.

    Exact stems first (``a.png`` <-> ``a.png``, DICOM case folders by folder name); entries still
    unmatched are paired by their first ``_``-separated token when that is unique on both sides
    (DRIVE's ``22_training.tif`` <-> ``22_manual1.gif``). Unmatched images are reported, not skipped.
    """
    imgs = {case_name(p): p for p in _entries(Path(images))}
    labs = {case_name(p): p for p in _entries(Path(labels))}
    pairs = {n: PairSource(n, imgs[n], labs[n]) for n in imgs.keys() & labs.keys()}
    rest_i = {n: p for n, p in imgs.items() if n not in pairs}
    rest_l = {n: p for n, p in labs.items() if n not in pairs}

    def by_token(d: dict[str, Path]) -> dict[str, Path]:
        tok: dict[str, list[Path]] = {}
        for n, p in d.items():
            tok.setdefault(n.split("_")[0], []).append(p)
        return {t: ps[0] for t, ps in tok.items() if len(ps) == 1}

    ti, tl = by_token(rest_i), by_token(rest_l)
    for t in ti.keys() & tl.keys():
        pairs[t] = PairSource(t, ti[t], tl[t])
        rest_i.pop(case_name(ti[t]), None)
        rest_l.pop(case_name(tl[t]), None)
    if not pairs:
        raise TrainingError(f"no image in {images} has a label file of the same name in {labels}")
    if rest_i:
        log.warning("%d image(s) without labels left out: %s", len(rest_i), ", ".join(sorted(rest_i)[:5]))
    return [pairs[n] for n in sorted(pairs)]


@dataclass
class DatasetInfo:
    """What an MSD ``dataset.json`` says besides the file list."""

    name: str = ""
    modality: dict[str, str] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)


def pairs_from_dataset_json(path: Path) -> tuple[list[PairSource], DatasetInfo]:
    """Read an MSD-style ``dataset.json``: ``training`` list of {image, label} relative to its folder."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{path}: not a readable dataset.json ({exc})") from None
    root = path.parent
    items = d.get("training")
    if not isinstance(items, list) or not items:
        raise TrainingError(f"{path}: has no 'training' list of {{image, label}} entries")
    pairs = []
    for it in items:
        try:
            img, lab = root / it["image"], root / it["label"]
        except (KeyError, TypeError):
            raise TrainingError(f"{path}: a training entry lacks 'image' or 'label': {it!r}") from None
        pairs.append(PairSource(case_name(img), img, lab))
    labels = {}
    for k, v in (d.get("labels") or {}).items():
        try:
            labels[int(k)] = str(v)
        except ValueError:  # MSD v2 style {"name": value}
            labels[int(v)] = str(k)
    modality = {str(k): str(v) for k, v in (d.get("modality") or d.get("channel_names") or {}).items()}
    return pairs, DatasetInfo(str(d.get("name", "")), modality, labels)


def pairs_from_list(items: Iterable[tuple[Any, Any]]) -> list[PairSource]:
    """Explicit ``(image, labels)`` pairs: paths or Volumes."""
    out = []
    for i, (img, lab) in enumerate(items):
        if not isinstance(img, Volume):
            img = Path(img)
        if not isinstance(lab, Volume):
            lab = Path(lab)
        if isinstance(img, Path):
            name = case_name(img)
        else:
            name = case_name(Path(img.source)) if img.source else f"case{i}"
        out.append(PairSource(name, img, lab))
    if not out:
        raise TrainingError("no training pairs given")
    return out


# --- label values ----------------------------------------------------------------------------------


def parse_label_map(text: str | Mapping[Any, Any] | None) -> dict[int, int]:
    """``"255:1,250:1,0:ignore"`` (or a dict) -> {source value: class value or IGNORE_INDEX}."""
    if not text:
        return {}
    items = text.items() if isinstance(text, Mapping) else (kv.split(":", 1) for kv in str(text).split(","))
    out: dict[int, int] = {}
    for kv in items:
        try:
            src, dst = kv
            s = str(dst).strip().lower()
            out[int(str(src).strip())] = IGNORE_INDEX if s in ("ignore", "-1") else int(s)
        except ValueError:
            raise TrainingError(
                f"bad label map {text!r}: write SOURCE:TARGET pairs like 255:1,250:2 (TARGET may be 'ignore')"
            ) from None
    return out


def apply_label_map(
    array: np.ndarray, label_map: Mapping[int, int], ignore_value: int | None = None
) -> np.ndarray:
    """Map label values (int64 out); ``ignore_value`` and values mapped to ignore become IGNORE_INDEX."""
    a = np.asarray(array)
    if a.dtype.kind == "f":
        if not np.array_equal(a, np.round(a)):
            raise TrainingError("a label map holds whole numbers; got fractional values")
    a = a.astype(np.int64)
    out = a.copy()
    for src, dst in label_map.items():
        out[a == src] = dst
    if ignore_value is not None:
        out[a == ignore_value] = IGNORE_INDEX
    out[a == IGNORE_INDEX] = IGNORE_INDEX
    return out


# --- hashing and the fixed split ---------------------------------------------------------------------


def image_hash(array: np.ndarray) -> str:
    """Content hash of an image array (shape + dtype + bytes): the case's identity for the split."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.shape}|{a.dtype.str}|".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:20]


@dataclass
class Split:
    """Which cases (by image hash) validate; everything else trains. Stored as JSON beside a run."""

    val: list[str]
    train: list[str]
    names: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "created": self.created,
            "val": self.val,
            "train": self.train,
            "names": self.names,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Split:
        return cls(
            list(d.get("val", [])),
            list(d.get("train", [])),
            dict(d.get("names", {})),
            str(d.get("created", "")),
        )

    @classmethod
    def read(cls, path: Path) -> Split:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise TrainingError(
                f"{path}: not a readable split file ({exc}); delete it to make a new split"
            ) from None

    def write(self, path: Path) -> Path:
        from ..atomic import atomic_write

        text = json.dumps(self.to_json(), indent=1, sort_keys=True)
        return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def make_or_extend_split(
    hashes: Sequence[str], names: Sequence[str], val_fraction: float, existing: Split | None = None
) -> tuple[Split, bool]:
    """Keep every assignment of ``existing``; place new cases. Returns (split, changed).

    A fresh split sorts the cases by hash and validates the first ``round(fraction * n)`` (at least one
    when there are 3+ cases): deterministic, independent of file order and names. Cases added later
    train, so a validation Dice stays comparable across runs and fine-tunes.
    """
    if existing is not None:
        known = set(existing.val) | set(existing.train)
        new = [h for h in hashes if h not in known]
        if not new:
            return existing, False
        split = Split(
            list(existing.val), list(existing.train) + sorted(new), dict(existing.names), existing.created
        )
        split.names.update({h: n for h, n in zip(hashes, names, strict=True) if h in new})
        return split, True
    order = sorted(set(hashes))
    n_val = 0 if len(order) < 3 or val_fraction <= 0 else max(1, int(round(val_fraction * len(order))))
    n_val = min(n_val, len(order) - 1)
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return Split(order[:n_val], order[n_val:], dict(zip(hashes, names, strict=True)), now), True


# --- preloaded cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One preloaded case: normalised image ``(C, *spatial)`` and class indices (IGNORE_INDEX = none)."""

    name: str
    hash: str
    image: torch.Tensor
    target: torch.Tensor
    spacing_zyx: tuple[float, ...]
    #: flat indices of voxels per class index present (subsampled), for foreground oversampling
    class_voxels: dict[int, torch.Tensor] = field(default_factory=dict)
    #: flat indices of supervised voxels when the labels are partial (else None: all are)
    labelled_voxels: torch.Tensor | None = None
    #: the user's recorded clicks drawn as maps ``(2 * (classes - 1), *spatial)`` (positive, negative per
    #: foreground class index), which an interactive fine-tune trains on (``clicksim``); None: no clicks
    recorded: torch.Tensor | None = None

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.target.shape)


def read_pair(src: PairSource) -> tuple[Volume, Volume]:
    """Read (or take) the image and labels of a case and check they share a grid."""
    from ..io import read
    from .checks import check_pair

    img = src.image if isinstance(src.image, Volume) else read(src.image)
    lab = src.labels if isinstance(src.labels, Volume) else read(src.labels)
    if lab.channels > 1:
        raise TrainingError(f"{src.name}: the label image has {lab.channels} channels; a label map has one")
    check_pair(src.name, img, lab)  # size, spacing, origin, direction and whole values
    return img, lab


def index_voxels(
    target: torch.Tensor, max_per_class: int = 20000, seed: int = 0
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Per class present, up to ``max_per_class`` flat voxel indices; labelled voxels when partial."""
    flat = target.reshape(-1)
    g = torch.Generator().manual_seed(seed)
    out: dict[int, torch.Tensor] = {}

    def sub(idx: torch.Tensor) -> torch.Tensor:
        if idx.numel() > max_per_class:
            idx = idx[torch.randperm(idx.numel(), generator=g)[:max_per_class]]
        return idx

    for c in torch.unique(flat).tolist():
        if c == IGNORE_INDEX:
            continue
        out[int(c)] = sub(torch.nonzero(flat == c).reshape(-1))
    ignored = flat == IGNORE_INDEX
    labelled = sub(torch.nonzero(~ignored).reshape(-1)) if bool(ignored.any()) else None
    return out, labelled


def make_case(
    name: str,
    image: Volume,
    values: np.ndarray,
    value_to_index: Mapping[int, int],
    normalization: Mapping[str, Any],
    in_channels: int | None = None,
) -> Case:
    """Normalise the image and turn mapped label values into class indices (unknown value = error)."""
    from ..transforms import normalize

    arr = image.channel_first()
    if in_channels is not None and arr.shape[0] != in_channels:
        if in_channels == 3 and arr.shape[0] == 1:
            arr = np.repeat(arr, 3, axis=0)
        elif in_channels == 1 and arr.shape[0] in (3, 4):
            arr = arr[:3].astype(np.float32).mean(axis=0, keepdims=True)
        else:
            raise TrainingError(
                f"{name}: the image has {arr.shape[0]} channel(s) but the model takes {in_channels}"
            )
    img = torch.from_numpy(normalize(arr, normalization))
    lut_keys = np.array(sorted(value_to_index), dtype=np.int64)
    present = np.unique(values)
    unknown = [int(v) for v in present if v != IGNORE_INDEX and v not in value_to_index]
    if unknown:
        raise TrainingError(
            f"{name}: label value(s) {unknown[:6]} are not classes; map them with --label-map "
            f"(e.g. {unknown[0]}:1) or mark them ignore ({unknown[0]}:ignore)"
        )
    idx = np.full(values.shape, IGNORE_INDEX, dtype=np.int16)
    for v in lut_keys:
        idx[values == v] = value_to_index[int(v)]
    target = torch.from_numpy(idx)
    cv, lab = index_voxels(target)
    return Case(name, image_hash(image.array), img, target, tuple(image.spacing_zyx), cv, lab)


def slices_as_2d(image: Volume, labels: np.ndarray) -> list[tuple[Volume, np.ndarray]]:
    """The labelled z-slices of a 3D pair as 2D pairs (a 2D model fine-tuned on touched slices)."""
    out = []
    arr = image.channel_first()
    for z in range(labels.shape[0]):
        if np.any(labels[z] != IGNORE_INDEX):
            sl = arr[:, z] if image.channels > 1 else arr[0, z]
            vol = Volume.from_array(
                np.ascontiguousarray(sl), spacing=tuple(image.spacing[:2]), channels=image.channels
            )
            out.append((vol, labels[z]))
    return out


# --- patches -------------------------------------------------------------------------------------------


def fit_patch(patch: Sequence[int], cases: Sequence[Case]) -> tuple[int, ...]:
    """Clip a patch size to the largest case extent per axis (no point padding a 224^2 X-ray to 256^2)."""
    biggest = [max(c.spatial[i] for c in cases) for i in range(len(patch))]
    return tuple(int(min(p, b)) for p, b in zip(patch, biggest, strict=True))


class PatchSampler:
    """Random patches with foreground oversampling, cut from preloaded tensors and stacked.

    With probability ``fg_prob`` a patch is centred (with jitter) on a voxel of a random class present
    in the case (background excluded), so rare structures are seen every few steps; otherwise it is
    placed uniformly. Partially labelled cases always centre on a labelled voxel. Areas outside the
    image are padded: image 0 (the normalised mean), labels IGNORE_INDEX.
    """

    def __init__(
        self, cases: Sequence[Case], patch: Sequence[int], fg_prob: float = 0.5, seed: int = 0
    ) -> None:
        if not cases:
            raise TrainingError(
                "no training cases left after the validation split; add cases or set val_fraction 0"
            )
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch)
        self.fg_prob = float(fg_prob)
        self.g = torch.Generator().manual_seed(seed)
        #: recorded-click channels after the image's (0: no case has any); cases without get zeros
        self.extra = next((int(c.recorded.shape[0]) for c in self.cases if c.recorded is not None), 0)

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.g))

    def _randint(self, n: int) -> int:
        return int(torch.randint(0, max(1, n), (), generator=self.g))

    def _center(self, case: Case) -> tuple[int, ...] | None:
        pool: torch.Tensor | None = None
        if case.labelled_voxels is not None and case.labelled_voxels.numel():
            fg = [c for c in case.class_voxels if c != 0]
            if fg and self._rand() < max(self.fg_prob, 0.5):
                pool = case.class_voxels[fg[self._randint(len(fg))]]
            else:
                pool = case.labelled_voxels
        elif self._rand() < self.fg_prob:
            fg = [c for c in case.class_voxels if c != 0]
            if fg:
                pool = case.class_voxels[fg[self._randint(len(fg))]]
        if pool is None or pool.numel() == 0:
            return None
        flat = int(pool[self._randint(pool.numel())])
        return tuple(int(v) for v in np.unravel_index(flat, case.spatial))

    def sample_one(self) -> tuple[torch.Tensor, torch.Tensor]:
        case = self.cases[self._randint(len(self.cases))]
        spatial = case.spatial
        center = self._center(case)
        starts = []
        for i, (n, p) in enumerate(zip(spatial, self.patch, strict=True)):
            if center is None:
                lo, hi = min(0, n - p), max(0, n - p)
                starts.append(lo + self._randint(hi - lo + 1))
            else:
                jitter = self._randint(p // 2 + 1) - p // 4
                s = center[i] - p // 2 + jitter
                starts.append(int(min(max(s, min(0, n - p)), max(0, n - p))))
        x, y = crop_padded(case.image, case.target, starts, self.patch)
        if not self.extra:
            return x, y
        if case.recorded is None:
            return torch.cat([x, x.new_zeros((self.extra, *self.patch))]), y
        rec, _ = crop_padded(case.recorded, case.target, starts, self.patch)
        return torch.cat([x, rec.to(x.dtype)]), y

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(self.sample_one() for _ in range(batch)), strict=True)
        return torch.stack(xs), torch.stack(ys)


def crop_padded(
    image: torch.Tensor, target: torch.Tensor, starts: Sequence[int], patch: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``patch`` at ``starts`` (may be negative / run past the end: padded)."""
    spatial = target.shape
    if all(s >= 0 and s + p <= n for s, p, n in zip(starts, patch, spatial, strict=True)):
        sl = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
        return image[(slice(None), *sl)], target[sl].long()
    x = image.new_zeros((image.shape[0], *patch))
    y = torch.full(tuple(patch), IGNORE_INDEX, dtype=torch.long)
    src, dst = [], []
    for s, p, n in zip(starts, patch, spatial, strict=True):
        a, b = max(s, 0), min(s + p, n)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    x[(slice(None), *dst)] = image[(slice(None), *src)]
    y[tuple(dst)] = target[tuple(src)].long()
    return x, y


def symmetric_axes(cases: Sequence[Case], tolerance: float = 0.2) -> list[int]:
    """Spatial axes along which mirroring keeps the labels plausible.

    An axis is unsafe when some foreground class sits mostly on one side (JSRT's left/right lungs,
    MSD hippocampus head/tail): mirroring would teach the model that a left lung can be on the right.
    A class counts as lateralised when over ``0.5 + tolerance`` of its voxels lie in one half.
    """
    if not cases:
        return []
    nd = cases[0].target.ndim
    ok = []
    for ax in range(nd):
        fractions: dict[int, list[float]] = {}
        for case in cases:
            t = case.target
            n = t.shape[ax]
            first = t.narrow(ax, 0, n // 2)
            for c in case.class_voxels:
                if c == 0:
                    continue
                total = int((t == c).sum())
                if total:
                    fractions.setdefault(c, []).append(int((first == c).sum()) / total)
        lateral = any(abs(float(np.mean(f)) - 0.5) > tolerance for f in fractions.values())
        if not lateral:
            ok.append(ax)
    return ok


def default_patch(dims: int, spatial: Sequence[int] | None = None) -> tuple[int, ...]:
    """256^2 in 2D, 64^3 in 3D (fits a CPU step in about a second), clipped to the data later."""
    return (256, 256) if dims == 2 else (64, 64, 64)
