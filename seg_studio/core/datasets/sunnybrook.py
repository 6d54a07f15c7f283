"""Sunnybrook Cardiac Data (Radau et al. 2009, CC0) as 2D training pairs: LV blood pool and myocardium.

A patient's folder is a cine short-axis series: several images share each slice position (one per
cardiac phase), so it is not one 3D volume. The contours are text files named after the image they
were drawn on (``IM-0001-0048-icontour-manual.txt`` belongs to the image whose DICOM instance
number is 48; in the copy in ../shared/data that image is ``48.dcm``), one ``x y`` pixel point per
line: ``i-contours`` = endocardium (the blood pool), ``o-contours`` = epicardium, drawn on fewer
images (here on one of the two contoured phases only).

Two label sets: the blood pool alone (1 = inside the endocardium) on every contoured image, or
blood pool + myocardium (2 = between epi- and endocardium) on the images that have both contours.
Not one set mixing the two: on an image without epicardium the wall is unknown, and marking it
"ignore" also hides any blood pool that grows into it, from the loss and from the score (a first
model trained that way read Dice 0.999 on such images while its blood pool was 10-15 % too big).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageLoadError
from ..volume import Volume

log = logging.getLogger(__name__)

_CONTOUR = re.compile(r"IM-\d+-(\d+)-([io])contour-manual\.txt$")


@dataclass(frozen=True)
class ContouredImage:
    """One image with its contours: the DICOM file and the endo- (and maybe epi-)cardium text files."""

    patient: str
    instance: int
    dicom: Path
    endo: Path
    epi: Path | None

    @property
    def name(self) -> str:
        return f"{self.patient}_{self.instance:04d}"


def read_contour(path: Path) -> np.ndarray:
    """``(n, 2)`` x (column), y (row) pixel points of one contour file."""
    try:
        pts = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"{path}: not a contour file of 'x y' lines ({exc})") from None
    if pts.shape[1] != 2 or pts.shape[0] < 3:
        raise ImageLoadError(f"{path}: a contour needs 3 or more 'x y' points, got shape {pts.shape}")
    return pts


def polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """True where a pixel centre (integer x, y) lies inside the closed polygon (even-odd rule)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    inside = np.zeros(shape, bool)
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
        if ay == by:
            continue
        crosses = (ay > ys) != (by > ys)
        x_at = ax + (ys - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (xs < x_at)
    return inside


def _instances(folder: Path) -> dict[int, Path]:
    """DICOM files of one patient by instance number (the header's, else the file's number)."""
    import pydicom

    out: dict[int, Path] = {}
    for p in sorted(folder.glob("*.dcm")):
        try:
            n = int(
                pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["InstanceNumber"]).InstanceNumber
            )
        except (AttributeError, TypeError, ValueError):
            n = int(p.stem) if p.stem.isdigit() else -1
        if n in out:
            raise ImageLoadError(f"{folder}: two images have instance number {n} ({out[n].name}, {p.name})")
        out[n] = p
    return out


def contoured_images(root: Path) -> list[ContouredImage]:
    """Every image that has an endocardium contour, over the patients in ``root/dicom``."""
    root = Path(root)
    if not (root / "dicom").is_dir() or not (root / "contours").is_dir():
        raise ImageLoadError(f"{root}: expected dicom/<patient>/ and contours/<patient>/ folders")
    out = []
    for pdir in sorted(p for p in (root / "dicom").iterdir() if p.is_dir()):
        images = _instances(pdir)
        found: dict[int, dict[str, Path]] = {}
        for c in sorted((root / "contours" / pdir.name).glob("?-contours/*.txt")):
            m = _CONTOUR.search(c.name)
            if m:
                found.setdefault(int(m.group(1)), {})[m.group(2)] = c
        for inst, files in sorted(found.items()):
            if "i" not in files:
                log.warning("%s: epicardium without endocardium on image %d, left out", pdir.name, inst)
                continue
            if inst not in images:
                raise ImageLoadError(
                    f"{pdir}: no DICOM image with instance number {inst} for {files['i'].name}"
                )
            out.append(ContouredImage(pdir.name, inst, images[inst], files["i"], files.get("o")))
    return out


def label_image(item: ContouredImage, shape: tuple[int, int], myocardium: bool = False) -> np.ndarray:
    """0 background, 1 blood pool (and 2 myocardium: only for images with an epicardium contour)."""
    endo = polygon_mask(read_contour(item.endo), shape)
    lab = np.zeros(shape, np.uint8)
    if myocardium:
        if item.epi is None:
            raise ImageLoadError(f"{item.name}: no epicardium contour, so its myocardium is unknown")
        lab[polygon_mask(read_contour(item.epi), shape)] = 2
    lab[endo] = 1
    return lab


def read_item(item: ContouredImage, myocardium: bool = False) -> tuple[Volume, Volume]:
    """The DICOM image (its own spacing) and its label map (see ``label_image``)."""
    from .. import io

    image = io.read(item.dicom)
    if image.ndim != 2:
        raise ImageLoadError(f"{item.dicom}: expected one 2D cine image, got a {image.ndim}D scan")
    lab = label_image(item, image.spatial_shape, myocardium)
    return image, Volume.from_array(
        lab, spacing=image.spacing, origin=image.origin, direction=image.direction
    )


def held_back_patient(patients: list[str]) -> str:
    """The patient held back: the first in order of the SHA-256 of its id (fixed, not by pixels)."""
    return sorted(patients, key=lambda p: hashlib.sha256(p.encode()).hexdigest())[0]


def prepare(source: Path, out: Path, myocardium: bool = False) -> dict[str, Any]:
    """Write ``out/images``, ``out/labels`` (NIfTI) and ``out/split.json`` (one whole patient held back).

    ``myocardium``: only the images with both contours, labelled 0/1/2; else every image, 0/1.
    """
    from .. import io
    from ..training.data import Split, image_hash

    items = [i for i in contoured_images(source) if i.epi is not None or not myocardium]
    if not items:
        raise ImageLoadError(f"{source}: no contoured images found")
    held = held_back_patient(sorted({i.patient for i in items}))
    out = Path(out)
    val: list[str] = []
    train: list[str] = []
    names: dict[str, str] = {}
    for item in items:
        image, lab = read_item(item, myocardium)
        io.write(image, out / "images" / f"{item.name}.nii.gz")
        io.write(lab, out / "labels" / f"{item.name}.nii.gz")
        h = image_hash(io.read(out / "images" / f"{item.name}.nii.gz").array)
        names[h] = item.name
        (val if item.patient == held else train).append(h)
    Split(sorted(val), sorted(train), names).write(out / "split.json")
    epi = sum(i.epi is not None for i in items)
    log.info("Sunnybrook: %d images (%d with epicardium), %s held back -> %s", len(items), epi, held, out)
    return {"images": len(items), "with_epicardium": epi, "held_back": held, "val_images": len(val)}


def _slice_location(path: Path) -> float:
    """The image's position (mm) along its slice normal: ImagePositionPatient projected on the cross
    product of ImageOrientationPatient's axes, as ``io`` orders a series. Not SliceLocation: on these
    oblique short-axis stacks it moves 6.68 mm per slice where the slices are 10 mm apart (the tag is
    the position along a scanner axis), which made every volume a third too small."""
    import pydicom

    tags = ["ImagePositionPatient", "ImageOrientationPatient"]
    d = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    try:
        iop = np.asarray(d.ImageOrientationPatient, dtype=float)
        return float(np.dot(np.asarray(d.ImagePositionPatient, dtype=float), np.cross(iop[:3], iop[3:])))
    except (AttributeError, TypeError, ValueError):
        raise ImageLoadError(f"{path}: no image position or orientation; the slice gap is unknown") from None


def evaluate_blood_pool(
    checkpoint_path: Path,
    source: Path,
    patient: str,
    device: str = "cpu",
    postprocess: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The held-back patient's blood pool as a cardiologist reads it: per image and per phase.

    Per image: Dice and the cavity area (mm^2) against the contour. Per patient: the Dice of all its
    pixels pooled (small apical slices weigh by their size, as in a volume Dice), and per phase the
    blood-pool volume over the contoured slices (area x slice gap summed; the phase of an image is its
    rank among the images at its slice position, by instance number). ``postprocess`` is what
    ``seg-studio predict --largest-component`` etc. apply (``{"largest_component": True}``).
    """
    from .. import checkpoint, metrics
    from ..inference import PredictOptions, predict

    model, meta = checkpoint.load(checkpoint_path)
    items = [i for i in contoured_images(source) if i.patient == patient]
    if not items:
        raise ImageLoadError(f"{source}: patient {patient} has no contoured images")
    per_image: dict[str, dict[str, float]] = {}
    inter = total = 0
    by_position: dict[float, list[tuple[int, str]]] = {}
    for item in items:
        image, lab = read_item(item)
        truth = np.asarray(lab.array) == 1
        opts = PredictOptions(device=device, postprocess=postprocess)
        pred = np.asarray(predict(image, model, meta, opts).labels.array) == 1
        px = float(image.spacing[0] * image.spacing[1])
        d = metrics.dice(pred.astype(np.int64), truth.astype(np.int64), [1])[1]
        per_image[item.name] = {"dice": d, "area_mm2": truth.sum() * px, "pred_area_mm2": pred.sum() * px}
        inter += int((pred & truth).sum())
        total += int(pred.sum() + truth.sum())
        by_position.setdefault(round(_slice_location(item.dicom), 2), []).append((item.instance, item.name))
    positions = sorted(by_position)
    gap = float(np.median(np.diff(positions))) if len(positions) > 1 else float("nan")
    phases: dict[int, dict[str, float]] = {}
    for pos in positions:
        for phase, (_, name) in enumerate(sorted(by_position[pos])):
            v = phases.setdefault(phase, {"volume_ml": 0.0, "pred_volume_ml": 0.0, "slices": 0})
            v["volume_ml"] += per_image[name]["area_mm2"] * abs(gap) / 1000.0
            v["pred_volume_ml"] += per_image[name]["pred_area_mm2"] * abs(gap) / 1000.0
            v["slices"] += 1
    return {
        "mean_image_dice": metrics.mean_ignoring_nan(r["dice"] for r in per_image.values()),
        "pooled_dice": 2 * inter / total if total else float("nan"),
        "mean_abs_area_error_mm2": float(
            np.mean([abs(r["pred_area_mm2"] - r["area_mm2"]) for r in per_image.values()])
        ),
        "slice_gap_mm": abs(gap),
        "phases": phases,
        "images": per_image,
    }
