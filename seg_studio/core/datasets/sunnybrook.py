"""Sunnybrook Cardiac Data (Radau et al. 2009, CC0) as 2D training pairs: LV blood pool and myocardium.

A patient's folder is a cine short-axis series: several images share each slice position (one per
cardiac phase), so it is not one 3D volume. The contours are text files named after the image they
were drawn on (``IM-0001-0048-icontour-manual.txt`` belongs to the image whose DICOM instance
number is 48; in the copy in ../shared/data that image is ``48.dcm``), one ``x y`` pixel point per
line: ``i-contours`` = endocardium (the blood pool), ``o-contours`` = epicardium, drawn on fewer
images (here on one of the two contoured phases only).

Classes: 1 = LV blood pool (inside the endocardium), 2 = myocardium (between epi- and endocardium).
Where an image has no epicardium the myocardium is unknown, so a band around the endocardium
(``MYO_BAND_MM``, thicker than any LV wall) is marked ignore and only what lies beyond it counts as
background: the model learns the blood pool from every image and the wall only where it was drawn.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import ImageLoadError
from ..volume import Volume

log = logging.getLogger(__name__)

#: Label value of pixels whose class is unknown (no epicardium drawn): training ignores it.
IGNORE_VALUE = 255
#: Width of the ignored band around an endocardium without epicardium (LV walls are 6-16 mm).
MYO_BAND_MM = 20.0
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


def label_image(item: ContouredImage, shape: tuple[int, int], spacing: tuple[float, ...]) -> np.ndarray:
    """0 background, 1 blood pool, 2 myocardium; ``IGNORE_VALUE`` around an endocardium without epicardium."""
    endo = polygon_mask(read_contour(item.endo), shape)
    lab = np.zeros(shape, np.uint8)
    if item.epi is not None:
        epi = polygon_mask(read_contour(item.epi), shape)
        lab[epi] = 2
    else:
        dist_mm = ndimage.distance_transform_edt(~endo, sampling=tuple(reversed(spacing)))  # y, x
        lab[dist_mm <= MYO_BAND_MM] = IGNORE_VALUE
    lab[endo] = 1
    return lab


def read_item(item: ContouredImage) -> tuple[Volume, Volume]:
    """The DICOM image (its own spacing) and its label map."""
    from .. import io

    image = io.read(item.dicom)
    if image.ndim != 2:
        raise ImageLoadError(f"{item.dicom}: expected one 2D cine image, got a {image.ndim}D scan")
    lab = label_image(item, image.spatial_shape, image.spacing)
    return image, Volume.from_array(
        lab, spacing=image.spacing, origin=image.origin, direction=image.direction
    )


def held_back_patient(patients: list[str]) -> str:
    """The patient held back: the first in order of the SHA-256 of its id (fixed, not by pixels)."""
    return sorted(patients, key=lambda p: hashlib.sha256(p.encode()).hexdigest())[0]


def prepare(source: Path, out: Path) -> dict[str, Any]:
    """Write ``out/images``, ``out/labels`` (NIfTI) and ``out/split.json`` (one whole patient held back)."""
    from .. import io
    from ..training.data import Split, image_hash

    items = contoured_images(source)
    if not items:
        raise ImageLoadError(f"{source}: no contoured images found")
    held = held_back_patient(sorted({i.patient for i in items}))
    out = Path(out)
    val: list[str] = []
    train: list[str] = []
    names: dict[str, str] = {}
    for item in items:
        image, lab = read_item(item)
        io.write(image, out / "images" / f"{item.name}.nii.gz")
        io.write(lab, out / "labels" / f"{item.name}.nii.gz")
        h = image_hash(io.read(out / "images" / f"{item.name}.nii.gz").array)
        names[h] = item.name
        (val if item.patient == held else train).append(h)
    Split(sorted(val), sorted(train), names).write(out / "split.json")
    epi = sum(i.epi is not None for i in items)
    log.info("Sunnybrook: %d images (%d with epicardium), %s held back -> %s", len(items), epi, held, out)
    return {"images": len(items), "with_epicardium": epi, "held_back": held, "val_images": len(val)}
