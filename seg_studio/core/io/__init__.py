"""Read and write scans and label maps without losing their geometry.

``read(path)`` -> ``Volume`` for NIfTI, MetaImage, NRRD, DICOM (a series folder or one file), TIFF
(2D or multi-page 3D) and PNG/JPEG/BMP/GIF (RGB becomes 3 channels). ``write(volume, path)`` goes
through ``core.atomic.atomic_write``: temp file, fsync, read back and compare, then replace; label
maps are stored with the smallest integer type that holds them and never over an input scan.
Every failure is an ``ImageLoadError``/``ImageWriteError`` with one line for the user.

Class names and colours travel with a saved label map: in the header of NRRD and MetaImage, and in
a sidecar ``NAME.labels.json`` beside formats that have no room for them (NIfTI, TIFF, PNG, BMP),
which ``read`` takes back (``sidecar_path``).

Meta keys set by ``read``: ``format``, ``kind`` ("image" or "labels"), ``source_kind`` (what the
file on disk is; a source of kind "image" is protected from being overwritten), ``dtype``, ``rgb``
for colour pictures, and DICOM tags (``modality``, ``series_description``, ``series_uid``,
``window_center``/``window_width`` ...).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write, split_suffix
from ..errors import ImageLoadError, ImageWriteError
from ..volume import LabelInfo, Volume
from ._checks import (
    check_direction,
    check_mhd,
    check_nifti,
    check_not_empty,
    check_nrrd,
    check_tiff,
    check_values,
)
from ._formats import (
    RASTER_FORMATS,
    READ_FORMATS,
    WRITE_FORMATS,
    case_name,
    detect_format,
    suffix_of,
    supported_write_list,
)
from .dicom import SeriesInfo, choose_series, list_series, read_dicom_file, read_series
from .geometry import align_to

__all__ = [
    "READ_FORMATS",
    "WRITE_FORMATS",
    "ScanGrid",
    "SeriesInfo",
    "align_to",
    "case_name",
    "find_scan_grid",
    "guess_kind",
    "has_physical_spacing",
    "set_pixel_size",
    "label_color",
    "list_series",
    "read",
    "sidecar_path",
    "smallest_int_dtype",
    "summary",
    "write",
]

log = logging.getLogger(__name__)

_LABEL_WORDS = re.compile(
    r"(^|[^a-z])(labels?|labelmap|masks?|seg|segs|segmentations?|annotations?|gt|groundtruth|manual\d*)"
    r"([^a-z]|$)",
    re.IGNORECASE,
)
#: A folder counts only when its whole name says labels (``labels/``, ``labelsTr/``, ``masks/``), so
#: ``~/seg-studio/scans/ct.nii.gz`` or a ``segmentation_project/`` of scans stays an image.
_LABEL_FOLDER = re.compile(
    r"(labels?|labels?tr|labels?ts|labelmaps?|masks?|segs?|segmentations?|annotations?|gt|groundtruth|"
    r"ground[ _-]?truth|manual\d*|\d+[ _-]?manual\d*)",
    re.IGNORECASE,
)
_MAX_LABELS = 1000
#: Header key under which NRRD and MetaImage label maps keep their names and colours (JSON).
LABELS_KEY = "seg_studio_labels"
#: Formats whose header holds class names; the others get a ``NAME.labels.json`` sidecar.
HEADER_LABEL_FORMATS = ("NRRD", "MetaImage")
SIDECAR_SUFFIX = ".labels.json"
#: Every scan ``read`` in this process, with its grid: no ``write`` may replace one, whatever layer
#: or volume it saves, and a layer that lost its geometry can find it again (``find_scan_grid``).
_INPUT_SCANS: dict[Path, ScanGrid] = {}


@dataclass(frozen=True)
class ScanGrid:
    """Where a scan read in this process lies: enough to save a mask on it without its pixels."""

    path: Path
    shape_zyx: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


def find_scan_grid(
    shape_zyx: tuple[int, ...], spacing: tuple[float, ...], origin: tuple[float, ...], atol: float = 1e-3
) -> ScanGrid | None:
    """The scan read in this process whose grid has this shape, spacing and origin (x,y,z), if exactly
    one direction fits. napari's own "new labels" layer copies a scan's scale and translate but not
    its direction; this recovers it, so such a mask is still saved in the scan's true geometry."""
    hits = [
        g
        for g in _INPUT_SCANS.values()
        if g.shape_zyx == tuple(shape_zyx)
        and np.allclose(g.spacing, spacing, rtol=1e-6, atol=atol)
        and np.allclose(g.origin, origin, atol=atol)
    ]
    if hits and all(np.allclose(h.direction, hits[0].direction, atol=1e-6) for h in hits):
        return hits[-1]
    return None


# --- reading ------------------------------------------------------------------------------------


def read(
    path: str | os.PathLike[str],
    series: str | None = None,
    allow_nonuniform: bool = False,
    phase: int | None = None,
) -> Volume:
    """Read a scan or label map. ``series`` picks a DICOM series by UID when a folder holds several;
    ``allow_nonuniform`` reads a DICOM series with uneven slice gaps (average spacing) instead of
    refusing it; ``phase`` reads one cardiac phase (the N-th image at each slice position) of a cine
    series folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ImageLoadError(f"{path} does not exist; check the path")
    if not (path.is_dir() or path.is_file()):  # a pipe or a device would block or never end
        raise ImageLoadError(
            f"{path} is not a regular file or folder (a pipe or a device?); give a scan file"
        )
    try:
        if path.is_dir():
            info = choose_series(path, series)
            if info.modality == "SEG" and info.slice_count == 1:  # a DICOM SEG alone in its series
                vol = _read_file(info.files[0])
            else:
                vol = read_series(info, allow_nonuniform=allow_nonuniform, phase=phase)
            name = f"DICOM series in {path.name}"
        else:
            vol = _read_file(path)
            name = path.name
            if not vol.labels:
                vol.labels = _read_sidecar(path)
    except OSError as exc:  # permissions, a vanished network share...
        raise ImageLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except MemoryError as exc:
        from ..limits import memory_error_line

        raise ImageLoadError(f"{path.name}: {memory_error_line(exc, 'reading it')}") from exc
    check_values(vol, name)
    check_direction(vol, name)
    vol.source = path
    vol.meta.setdefault("dtype", str(vol.array.dtype))
    if vol.channels in (3, 4) and vol.ndim == 2 and vol.meta.get("format") in RASTER_FORMATS | {"DICOM"}:
        vol.meta["rgb"] = True
    kind = "labels" if vol.labels else guess_kind(vol, path)  # stored label names say so outright
    vol.meta["kind"] = vol.meta["source_kind"] = kind
    if kind == "image":  # the grid only, not the pixels
        _INPUT_SCANS[path.resolve()] = ScanGrid(
            path, vol.spatial_shape, vol.spacing, vol.origin, vol.direction
        )
    if kind == "labels" and not vol.labels:
        vol.labels = _label_names(path, vol)
    log.debug("read %s: %s %s", path, vol.spatial_shape, vol.array.dtype)
    return vol


def _read_file(path: Path) -> Volume:
    fmt = detect_format(path)
    check_not_empty(path)
    if fmt == "NIfTI":
        check_nifti(path)
    elif fmt == "TIFF":
        check_tiff(path)
    elif fmt == "MetaImage":  # .mhd always names a data file; a .mha may too
        check_mhd(path)
    elif fmt == "NRRD":
        check_nrrd(path)
    if fmt == "DICOM" and _dicom_seg().is_dicom_seg(path):
        vol = _dicom_seg().read_seg(path)
    elif fmt == "DICOM":
        vol = read_dicom_file(path)
    elif fmt in ("GIF", "BMP") or (fmt == "PNG" and _raster().is_palette_png(path)):
        vol = _raster().read_pillow(path, fmt)
    else:
        from ._sitk import image_to_volume, read_image

        img = read_image(path, fmt)
        vol = image_to_volume(img, path.name)
        if img.HasMetaDataKey(LABELS_KEY):
            vol.labels = _parse_stored_labels(img.GetMetaData(LABELS_KEY))
        if fmt == "TIFF":
            # TIFF stores resolution as float32 rationals: 1 mm comes back as 1.0000000150; keep the
            # 7 significant digits the file really holds
            vol.spacing = tuple(float(f"{s:.7g}") for s in vol.spacing)
        if vol.channels in (2, 4) and vol.ndim == 2:
            vol = _drop_opaque_alpha(vol)
    vol.meta.setdefault("format", fmt)
    return vol


def _parse_stored_labels(text: str) -> dict[int, LabelInfo]:
    """Names and colours that ``write`` stored in a NRRD/MetaImage header (absent in NIfTI)."""
    try:
        table = json.loads(text)
        return {
            int(k): LabelInfo(int(k), str(name), tuple(int(c) for c in color)[:3])  # type: ignore[misc]
            for k, (name, color) in table.items()
        }
    except (ValueError, TypeError, AttributeError) as exc:
        log.debug("ignoring unreadable label names %r: %s", text[:80], exc)
        return {}


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``mask.labels.json`` for ``mask.nii.gz``: where the class names of a label map are kept."""
    path = Path(path)
    return path.with_name(split_suffix(path)[0] + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> dict[int, LabelInfo]:
    """Class names and colours from ``sidecar_path(path)``; {} when there is none or it is unreadable."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        table = json.loads(side.read_text()).get("labels", {})
        out = {}
        for k, v in table.items():
            color = tuple(int(c) for c in v.get("color", label_color(int(k))))[:3]
            out[int(k)] = LabelInfo(int(k), str(v["name"]), color)  # type: ignore[arg-type]
        return out
    except (ValueError, TypeError, AttributeError, KeyError, OSError) as exc:
        log.warning("ignoring the class names in %s: %s", side, exc)
        return {}


def _write_sidecar(volume: Volume, path: Path, protected: list) -> None:
    """Write the label map's names beside it (atomic), so a NIfTI mask keeps "left lung", not "label 1"."""
    table = {
        str(v): {"name": li.name, "color": [int(c) for c in li.color]}
        for v, li in sorted(volume.labels.items())
    }
    text = json.dumps({"labels": table, "image": path.name}, indent=1) + "\n"
    atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text), protected=protected)


def has_physical_spacing(volume: Volume) -> bool:
    """False for pictures (PNG, JPEG, TIFF...) that store no pixel size: their spacing of 1 is a placeholder,
    so lengths are in pixels, not millimetres (unless the user gave it: ``set_pixel_size``)."""
    if volume.meta.get("pixel_size_given"):
        return True
    fmt = str(volume.meta.get("format") or "").upper()
    return not (fmt in RASTER_FORMATS and all(abs(s - 1.0) < 1e-9 for s in volume.spacing))


def set_pixel_size(volume: Volume, pixel_size: tuple[float, ...]) -> Volume:
    """Give a picture that stores no pixel size (a PNG, e.g. an HC18 ultrasound frame whose pixel size is in
    a CSV) its pixel size in mm: one value (square pixels) or one per axis, x,y(,z). A file that stores its
    own spacing is refused: overriding it would silently change every length measured on it."""
    from ..errors import ImageLoadError

    where = volume.source.name if volume.source else "the scan"
    if has_physical_spacing(volume):
        raise ImageLoadError(
            f"{where} stores its own voxel size ({' x '.join(f'{s:g}' for s in volume.spacing)} mm); "
            "a pixel size can only be given for pictures that store none (PNG, JPEG, TIFF)"
        )
    values = tuple(float(v) for v in pixel_size)
    if len(values) == 1:
        values = values * volume.ndim
    if len(values) != volume.ndim or not all(0 < v < 1e3 for v in values):
        raise ImageLoadError(
            f"pixel size {pixel_size}: give one positive size in mm, or {volume.ndim} (x,y{',z' if volume.ndim == 3 else ''})"
        )
    volume.spacing = values
    volume.meta["pixel_size_given"] = True
    return volume


def _dicom_seg():  # noqa: ANN202 - a module (highdicom is imported only for DICOM files)
    from . import dicom_seg as mod

    return mod


def _raster():  # noqa: ANN202 - a module
    from . import _pillow as mod

    return mod


def _drop_opaque_alpha(vol: Volume) -> Volume:
    alpha = vol.array[-1]
    if np.issubdtype(alpha.dtype, np.integer) and (alpha == np.iinfo(alpha.dtype).max).all():
        arr = vol.array[:-1]
        channels = arr.shape[0]
        return vol.with_array(arr[0] if channels == 1 else arr, channels=channels)
    return vol


def guess_kind(vol: Volume, path: Path | None = None) -> str:
    """ "labels" for single-channel integer-valued maps whose name says so (mask, label, seg...),
    with at most 1000 distinct values; "image" otherwise. Names decide because a CT is integer
    too; values veto because a file called "seg_ct" can still be a scan."""
    if vol.channels != 1:
        return "image"
    names = [str(vol.meta.get("series_description", ""))]
    folders: list[str] = []
    if path is not None:
        names.append(split_suffix(path)[0])
        folders = [path.parent.name, path.parent.parent.name]
    said = any(_LABEL_WORDS.search(n.replace("_", " ")) for n in names if n) or any(
        _LABEL_FOLDER.fullmatch(f) for f in folders if f
    )
    if not said:
        return "image"
    a = vol.array
    if a.dtype.kind == "f":
        if a.size and not np.array_equal(a, np.round(a)):
            return "image"
        if a.size and (a.min() < -(2**31) or a.max() > 2**31 - 1):
            return "image"
    elif a.dtype.kind not in "iub":
        return "image"
    return "labels" if len(_unique(a)) <= _MAX_LABELS else "image"


def _unique(a: np.ndarray) -> np.ndarray:
    """np.unique, but via bincount for small-range integers (10x faster on big label maps)."""
    if a.size == 0:
        return np.zeros(0, a.dtype)
    if a.dtype.kind in "iub":
        lo, hi = int(a.min()), int(a.max())
        if hi - lo < 1 << 20:
            counts = np.bincount(a.ravel().astype(np.int64) - lo)
            return np.flatnonzero(counts) + lo
    return np.unique(a)


def label_color(value: int) -> tuple[int, int, int]:
    """A stable, distinct colour per label value (golden-angle hues), for labels without one."""
    import colorsys

    h = (value * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _label_names(path: Path, vol: Volume) -> dict[int, LabelInfo]:
    """Names from a ``labels.json`` beside the file or one folder up ({"1": "liver"} or
    {"labels": {...}}, the nnU-Net/TotalSegmentator shape); generic names otherwise."""
    names: dict[int, str] = {}
    for cand in (path.parent / "labels.json", path.parent.parent / "labels.json"):
        if cand.is_file():
            try:
                data = json.loads(cand.read_text())
                table = data.get("labels", data) if isinstance(data, dict) else {}
                for k, v in table.items():
                    if isinstance(v, str):  # {"1": "liver"}
                        names[int(k)] = v
                    elif isinstance(v, int | float):  # nnU-Net: {"liver": 1}
                        names[int(v)] = str(k)
                break
            except (ValueError, OSError, AttributeError) as exc:
                log.debug("ignoring %s: %s", cand, exc)
    values = [int(v) for v in _unique(vol.array) if v != 0]
    out = {0: LabelInfo(0, names.get(0, "background"), (0, 0, 0))}
    for v in values:
        out[v] = LabelInfo(v, names.get(v, f"label {v}"), label_color(v))
    return out


# --- writing ------------------------------------------------------------------------------------


def smallest_int_dtype(array: np.ndarray) -> np.dtype:
    """The smallest integer dtype holding every value (unsigned when none is negative)."""
    if array.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(array.min()), int(array.max())
    order = (
        (np.uint8, np.uint16, np.uint32, np.uint64) if lo >= 0 else (np.int8, np.int16, np.int32, np.int64)
    )
    for dt in order:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    raise ImageWriteError(f"label values {lo}..{hi} do not fit a 64-bit integer")


def _prepare_array(vol: Volume, fmt: str) -> np.ndarray:
    arr = vol.array
    if vol.meta.get("kind") == "labels":
        if vol.channels != 1:
            raise ImageWriteError("a label map has one channel; this one has several")
        if arr.dtype.kind == "b":
            arr = arr.astype(np.uint8)
        elif arr.dtype.kind == "f":
            if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
                raise ImageWriteError("a label map must hold whole numbers; this one has fractions or NaN")
        elif arr.dtype.kind not in "iu":
            raise ImageWriteError(f"a label map must hold integers, not {arr.dtype}")
        arr = arr.astype(smallest_int_dtype(arr), copy=False)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if fmt in ("PNG", "BMP"):
        if vol.ndim != 2:
            raise ImageWriteError(f"{fmt} holds one 2D picture; save a 3D volume as .nii.gz, .mha or .nrrd")
        allowed = (np.uint8,) if fmt == "BMP" else (np.uint8, np.uint16)
        if arr.dtype.type not in allowed:
            names = " or ".join(np.dtype(d).name for d in allowed)
            raise ImageWriteError(
                f"{fmt} holds {names} pixels, this image is {arr.dtype}; save it as .tif, .nii.gz or .nrrd"
            )
        if vol.channels not in (1, 3, 4):
            raise ImageWriteError(f"{fmt} holds grey or RGB(A) pictures, not {vol.channels} channels")
    return arr


def write(
    volume: Volume,
    path: str | os.PathLike[str],
    protected: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Save ``volume`` atomically in its own geometry; returns the path written.

    Refuses (``ImageWriteError``) formats that cannot hold the pixels or geometry (checked by
    reading the temp file back), and paths in ``protected`` or the volume's source scan.
    """
    path = Path(path).expanduser()
    suffix = suffix_of(path)
    fmt = WRITE_FORMATS.get(suffix)
    if fmt is None:
        dcm = " (a DICOM SEG needs its series: seg-studio export LABELS --like DICOM_DIR --out result.dcm)"
        raise ImageWriteError(
            f"cannot save as {suffix or '(no extension)'}; use one of {supported_write_list()}"
            + (dcm if suffix in (".dcm", ".dicom") else "")
        )
    protected = list(protected) + sorted(_INPUT_SCANS)
    if volume.source is not None and volume.meta.get("source_kind", "image") != "labels":
        protected.append(volume.source)  # a scan, or a map derived from one: never overwrite the scan
    arr = _prepare_array(volume, fmt)
    from ._sitk import volume_to_image, write_image

    img = volume_to_image(volume, arr)
    if volume.meta.get("kind") == "labels" and volume.labels and fmt in ("NRRD", "MetaImage"):
        table = {str(v): [li.name, [int(c) for c in li.color]] for v, li in sorted(volume.labels.items())}
        img.SetMetaData(LABELS_KEY, json.dumps(table))
    compress = fmt in ("NIfTI", "MetaImage", "NRRD") and suffix != ".mhd"
    expected = volume.with_array(arr, channels=volume.channels)

    def verify(tmp: Path) -> None:
        _verify_written(tmp, expected, fmt, path.name)

    if suffix == ".mhd":
        out = _write_mhd(img, path, verify, protected)
    else:
        out = atomic_write(
            path, lambda tmp: write_image(img, tmp, compress), verify=verify, protected=protected
        )
    if volume.meta.get("kind") == "labels" and fmt not in HEADER_LABEL_FORMATS:
        if volume.labels:
            _write_sidecar(volume, out, protected)
        else:
            _drop_stale_sidecar(out)
    return out


def _drop_stale_sidecar(path: Path) -> None:
    """A map saved without names over one that had them: the old names must not come back with it."""
    side = sidecar_path(path)
    try:
        if side.is_file() and json.loads(side.read_text()).get("image") == path.name:
            side.unlink()
    except (ValueError, OSError, AttributeError) as exc:
        log.warning("could not remove the stale class names %s: %s", side, exc)


def _write_mhd(img: Any, path: Path, verify: Any, protected: list) -> Path:
    """MetaImage header + raw pair, staged and verified in a hidden folder beside the target; then the
    raw data is swapped in, then the header (whose temp copy already points at the final ``.raw``
    name, so verifying it again reads the real data)."""
    import shutil
    import tempfile

    from ._sitk import write_image

    stem = split_suffix(path)[0]
    raw = path.with_name(stem + ".raw")
    prot = list(protected) + [Path(p).with_suffix(".raw") for p in protected if p and suffix_of(p) == ".mhd"]
    from ..atomic import is_protected

    if is_protected(path, prot) or is_protected(raw, prot):
        raise ImageWriteError(f"refusing to overwrite the input scan {path}; choose another file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..atomic import clean_stale_temps, in_transaction, writer_tag

    clean_stale_temps(path.parent)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{stem}.tmp-{writer_tag()}-") as tmpdir:
        staged = Path(tmpdir) / (stem + ".mhd")
        write_image(img, staged, compress=False)
        verify(staged)  # check the staged pair before touching an existing one
        atomic_write(raw, lambda t: shutil.move(staged.with_suffix(".raw"), t), protected=prot)
        # in a transaction the .raw is not in place yet: the staged pair was verified above
        final_check = None if in_transaction() else verify
        return atomic_write(path, lambda t: shutil.move(staged, t), verify=final_check, protected=prot)


def _verify_written(tmp: Path, expected: Volume, fmt: str, name: str) -> None:
    """Read the temp file back: same pixels exactly, same geometry to the format's precision."""
    try:
        got = _read_file(tmp)
    except ImageLoadError as exc:
        raise ImageWriteError(f"{name} could not be read back after saving: {exc}") from exc
    hint = "save as .nii.gz, .mha or .nrrd instead"
    if got.spatial_shape != expected.spatial_shape or got.channels != expected.channels:
        raise ImageWriteError(f"{fmt} did not keep the image shape {expected.spatial_shape}; {hint}")
    if not np.array_equal(got.array, expected.array):
        raise ImageWriteError(f"{fmt} did not keep the pixel values exactly; {hint}")
    # NIfTI and TIFF store geometry as float32: allow that precision, and nothing more.
    checks = [
        ("spacing", expected.spacing, got.spacing, 1e-6, 1e-9),
        ("origin", expected.origin, got.origin, 1e-6, 1e-4),
        ("direction", expected.direction, got.direction, 0.0, 1e-5),
    ]
    for what, want, have, rtol, atol in checks:
        if not np.allclose(want, have, rtol=rtol, atol=atol):
            raise ImageWriteError(
                f"{fmt} cannot store this image's {what} {tuple(round(v, 6) for v in want)}; {hint}"
            )


# --- describing ---------------------------------------------------------------------------------


def summary(vol: Volume) -> dict[str, Any]:
    """What ``seg-studio info`` prints: geometry, type and intensity range, JSON-able."""
    a = vol.array
    out: dict[str, Any] = {
        "path": str(vol.source) if vol.source else None,
        "format": vol.meta.get("format"),
        "kind": vol.meta.get("kind", "image"),
        "dims": vol.ndim,
        "size_xyz": list(reversed(vol.spatial_shape)),
        "channels": vol.channels,
        "spacing": list(vol.spacing),
        "physical_spacing": has_physical_spacing(vol),
        "origin": list(vol.origin),
        "direction": list(vol.direction),
        "dtype": str(a.dtype),
        "range": [_num(a.min()), _num(a.max())] if a.size else None,
    }
    if vol.meta.get("kind") == "labels":
        vals = _unique(a)
        out["label_values"] = len(vals)
        out["labels"] = {str(k): v.name for k, v in sorted(vol.labels.items())}
    for key in (
        "modality",
        "series_description",
        "series_uid",
        "slices",
        "window_center",
        "window_width",
        "nonuniform_spacing",
        "invented_geometry",
        "rgb",
        "palette",
    ):
        if key in vol.meta:
            out[key] = vol.meta[key]
    return out


def _num(v: Any) -> float | int:
    v = v.item() if hasattr(v, "item") else v
    return int(v) if isinstance(v, int | np.integer | bool) else float(v)
