"""HC18 fetal head ultrasound (van den Heuvel et al. 2018, CC BY 4.0) as training pairs.

The set ships each image as a PNG without spacing, the sonographer's annotation as the OUTLINE of an
ellipse (a thin 0/255 curve), and a CSV with the pixel size (mm, isotropic) and the reference head
circumference. ``prepare`` turns each outline into the head mask (``head_mask``), gives every image its physical spacing and resamples
it to one working spacing (``WORK_SPACING_MM``) the way the inference engine will resample a scan for
a model that stores that spacing, so training sees what the app feeds the model. It writes NIfTI
pairs and a ``split.json`` that holds whole fetuses back (several images of one fetus, ``014_2HC``
and ``014_3HC``, never straddle the split).

Why one spacing in mm rather than one size in pixels: the circumference is reported in mm and its
error is dominated by the big heads, which a fixed 0.5 mm grid resolves better than the scans' own
zoom would; and a model that stores its spacing runs on any scan whose pixel size is known.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..biometry import BiometryError, ellipse_mask, fit_ellipse
from ..errors import ImageLoadError
from ..volume import Volume

log = logging.getLogger(__name__)

CSV_NAME = "pixel_size_and_hc.csv"
#: The grid the shipped model works on (mm per pixel); the scans' own pixel sizes are 0.05-0.39 mm.
WORK_SPACING_MM = 0.5


@dataclass(frozen=True)
class Reference:
    """One CSV row: the case name (``014_2HC``), its pixel size and the sonographer's HC, both in mm."""

    name: str
    pixel_mm: float
    hc_mm: float


def read_reference(folder: Path) -> dict[str, Reference]:
    """The CSV of pixel sizes and head circumferences, keyed by case name (file name without .png)."""
    path = Path(folder) / CSV_NAME
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot read the HC18 pixel-size table ({exc.strerror})") from None
    out = {}
    for row in rows[1:]:
        try:
            name = Path(row[0]).stem
            out[name] = Reference(name, float(row[1]), float(row[2]))
        except (IndexError, ValueError):
            raise ImageLoadError(f"{path}: bad row {row!r}; expected filename,pixel size,HC") from None
    return out


def fetus_id(name: str) -> str:
    """``014_2HC`` -> ``014``: images of one fetus share the number before the underscore."""
    return name.split("_")[0]


def head_mask(outline: np.ndarray) -> np.ndarray:
    """The head mask: the ellipse fitted to the annotated outline's pixels, rasterised on its grid.

    Why not fill the drawn curve: the CSV's circumference is that of the ellipse through the curve's
    centre line (fitting the outline's pixel centres reproduces it to 0.006 mm mean, 0.035 mm at most,
    over the 500 cases), while a filled curve includes its thickness and measures 1.1 mm more. The
    fit also closes the three outlines that run off the image (346_HC, 628_2HC, 787_HC).
    """
    ys, xs = np.nonzero(np.asarray(outline) > 0)
    try:
        ellipse = fit_ellipse(np.stack([xs, ys], axis=1).astype(np.float64))
    except BiometryError as exc:
        raise ImageLoadError(f"the annotation outline is not an ellipse ({exc})") from None
    return ellipse_mask(ellipse, np.asarray(outline).shape)


def read_case(
    folder: Path, name: str, references: dict[str, Reference] | None = None
) -> tuple[Volume, Volume]:
    """One case at its own resolution: the image with the CSV's pixel size, and the filled head mask."""
    from .. import io

    folder = Path(folder)
    refs = references if references is not None else read_reference(folder)
    if name not in refs:
        raise ImageLoadError(f"{name}: not in {folder / CSV_NAME}; its pixel size is unknown")
    ps = refs[name].pixel_mm
    image = io.read(folder / "images" / f"{name}.png")
    try:
        mask = head_mask(io.read(folder / "annotations" / f"{name}_Annotation.png").array)
    except ImageLoadError as exc:
        raise ImageLoadError(f"{name}: {exc}") from None
    img = Volume.from_array(np.asarray(image.array), spacing=(ps, ps))
    lab = Volume.from_array(mask.astype(np.uint8), spacing=(ps, ps))
    return img, lab


def to_spacing(image: Volume, mask: Volume, spacing_mm: float) -> tuple[Volume, Volume]:
    """Resample a pair onto a ``spacing_mm`` grid over the same extent, as the inference engine does.

    The image goes through ``transforms.resample_to_shape`` (linear), exactly the call the engine
    makes for a model that stores a spacing; the mask is resampled linearly and cut at 0.5 (a
    smoother edge than nearest-neighbour picking). The stored spacing is the exact one after
    rounding the shape, so the physical extent is kept.
    """
    from ..transforms import resample_to_shape, resampled_shape

    src = image.spatial_shape
    shape = resampled_shape(src, image.spacing, (spacing_mm,) * len(src))
    img = resample_to_shape(np.asarray(image.array, np.float32)[None], shape, "linear")[0]
    lab = resample_to_shape(np.asarray(mask.array, np.float32)[None], shape, "linear")[0] >= 0.5
    # Volume.spacing is x,y; array shapes are y,x
    spacing = tuple(
        float(s) * n / m for s, n, m in zip(image.spacing, reversed(src), reversed(shape), strict=True)
    )
    return (
        Volume.from_array(np.ascontiguousarray(img), spacing=spacing),
        Volume.from_array(lab.astype(np.uint8), spacing=spacing),
    )


def held_back_fetuses(names: Sequence[str], fraction: float) -> set[str]:
    """The fetuses held back: the first ``round(fraction * n)`` ids in order of their SHA-256.

    A hash of the id, not of the pixels, so re-preparing at another spacing holds back the same fetuses.
    """
    ids = sorted({fetus_id(n) for n in names}, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    return set(ids[: max(1, int(round(fraction * len(ids))))]) if fraction > 0 else set()


def prepare(
    source: Path, out: Path, spacing_mm: float = WORK_SPACING_MM, val_fraction: float = 0.1
) -> dict[str, Any]:
    """Write ``out/images``, ``out/labels`` (NIfTI at ``spacing_mm``) and ``out/split.json``.

    The split lists every case by the hash of its written image as training reads it back, with whole
    fetuses held back; ``seg-studio train`` takes it through the recipe's ``split`` setting.
    """
    from .. import io
    from ..training.data import Split, image_hash

    source, out = Path(source), Path(out)
    refs = read_reference(source)
    if not refs:
        raise ImageLoadError(f"{source / CSV_NAME}: lists no images")
    held = held_back_fetuses(list(refs), val_fraction)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    val: list[str] = []
    train: list[str] = []
    names: dict[str, str] = {}
    for name in sorted(refs):
        img, lab = to_spacing(*read_case(source, name, refs), spacing_mm)
        io.write(img, out / "images" / f"{name}.nii.gz")
        io.write(lab, out / "labels" / f"{name}.nii.gz")
        h = image_hash(io.read(out / "images" / f"{name}.nii.gz").array)
        names[h] = name
        (val if fetus_id(name) in held else train).append(h)
    Split(sorted(val), sorted(train), names).write(out / "split.json")
    log.info("HC18: %d cases (%d held back, %d fetuses) -> %s", len(names), len(val), len(held), out)
    return {"cases": len(names), "val_cases": len(val), "val_fetuses": len(held), "split": out / "split.json"}


def held_back_names(split_path: Path) -> list[str]:
    """Case names of the split's validation cases (the split stores their names by hash)."""
    from ..training.data import Split

    split = Split.read(Path(split_path))
    return sorted(split.names[h] for h in split.val)


def evaluate_biometry(
    checkpoint_path: Path | Sequence[Path],
    source: Path,
    names: Sequence[str],
    device: str = "cpu",
    tta: bool = False,
) -> dict[str, Any]:
    """Segment HC18 cases at their own resolution and compare HC with the CSV's, per case (mm).

    What the challenge scores: the head circumference of the ellipse fitted to the predicted mask
    against the sonographer's. Several checkpoints are scored as one ensemble.
    """
    from .. import checkpoint
    from ..biometry import BiometryError, measure_head
    from ..inference import PredictOptions, predict
    from ..models.ensemble import Ensemble

    paths = [checkpoint_path] if isinstance(checkpoint_path, str | Path) else list(checkpoint_path)
    model, meta = checkpoint.load(paths[0]) if len(paths) == 1 else Ensemble.from_checkpoints(paths)
    refs = read_reference(source)
    cases: dict[str, dict[str, float | None]] = {}
    for name in names:
        image, _ = read_case(source, name, refs)
        pred = predict(image, model, meta, PredictOptions(device=device, tta=tta))
        try:
            hb = measure_head(pred.labels)
            hc: float | None = hb.hc_mm
        except BiometryError:
            hc = None  # no head found: counted as a failure below, never skipped silently
        cases[name] = {"hc_mm": hc, "reference_hc_mm": refs[name].hc_mm}
    diffs = np.array([c["hc_mm"] - c["reference_hc_mm"] for c in cases.values() if c["hc_mm"] is not None])
    nan = float("nan")
    return {
        "mean_abs_hc_error_mm": float(np.abs(diffs).mean()) if diffs.size else nan,
        "max_abs_hc_error_mm": float(np.abs(diffs).max()) if diffs.size else nan,
        "mean_hc_error_mm": float(diffs.mean()) if diffs.size else nan,  # the bias: + = too large
        "failed": [n for n, c in cases.items() if c["hc_mm"] is None],
        "cases": cases,
    }


def held_back_pairs(source: Path, split_path: Path) -> list[Any]:
    """The split's held-back cases at their own resolution, as training pairs (for scoring)."""
    from ..training.data import PairSource

    refs = read_reference(source)
    return [PairSource(n, *read_case(source, n, refs)) for n in held_back_names(split_path)]
