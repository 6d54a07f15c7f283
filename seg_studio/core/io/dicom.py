"""DICOM: list the series in a folder, read one of them in slice order, keep the useful tags.

File names say nothing about slice order (TCIA's ``000000.dcm`` ... are shuffled), so slices are
sorted by ImagePositionPatient projected on the slice normal (the cross product of the two
ImageOrientationPatient vectors). A folder with several series is never read as "the first one":
the caller must pick, and the error lists what is there. Uneven slice gaps (a missing slice) are
refused unless the caller allows them, because the volume would be silently stretched.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import ImageLoadError
from ..volume import Volume
from ._sitk import image_to_volume, native_stderr_to_log, read_image, sitk_reason

log = logging.getLogger(__name__)

#: DICOM tags kept in ``Volume.meta`` (the UI uses modality and window for its presets).
TAGS = {
    "modality": "0008|0060",
    "series_description": "0008|103e",
    "study_description": "0008|1030",
    "series_uid": "0020|000e",
    "study_uid": "0020|000d",
    "frame_of_reference_uid": "0020|0052",
    "manufacturer": "0008|0070",
    "body_part": "0018|0015",
    "units": "0028|1054",
}
_IPP, _IOP, _INSTANCE, _SOP_UID = "0020|0032", "0020|0037", "0020|0013", "0008|0018"
_WINDOW_CENTER, _WINDOW_WIDTH = "0028|1050", "0028|1051"


@dataclass(frozen=True)
class SeriesInfo:
    """One series in a folder, as GDCM groups them (by SeriesInstanceUID)."""

    uid: str
    description: str
    modality: str
    folder: Path
    files: tuple[Path, ...] = field(repr=False)
    rows: int = 0
    columns: int = 0

    @property
    def slice_count(self) -> int:
        return len(self.files)

    def label(self) -> str:
        """One human line: UID, description, slice count (used in error messages and the CLI)."""
        uid = self.uid or "(empty UID)"
        desc = self.description or "(no description)"
        return f"{uid} '{desc}' {self.modality or '?'} {self.slice_count} slices {self.columns}x{self.rows}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "description": self.description,
            "modality": self.modality,
            "slices": self.slice_count,
            "columns": self.columns,
            "rows": self.rows,
            "folder": str(self.folder),
        }


def _header(path: Path) -> sitk.ImageFileReader:
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.LoadPrivateTagsOff()
    with native_stderr_to_log():
        r.ReadImageInformation()
    return r


def _tag(r: sitk.ImageFileReader, key: str) -> str:
    return r.GetMetaData(key).strip() if r.HasMetaDataKey(key) else ""


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", "\\").split("\\") if v.strip()]
    except ValueError:
        return []


def list_series(folder: str | os.PathLike[str]) -> list[SeriesInfo]:
    """Every DICOM series directly in ``folder`` (not its subfolders), largest first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageLoadError(f"{folder} is not a folder")
    try:
        with native_stderr_to_log():
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise ImageLoadError(f"cannot scan {folder} for DICOM files: {sitk_reason(exc)}") from exc
    out = []
    for uid in uids:
        with native_stderr_to_log():
            files = tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if not files:
            continue
        try:
            r = _header(files[0])
        except RuntimeError:
            continue
        cols, rows = (list(r.GetSize()) + [0, 0])[:2]
        out.append(
            SeriesInfo(
                uid=uid,
                description=_tag(r, TAGS["series_description"]),
                modality=_tag(r, TAGS["modality"]),
                folder=folder,
                files=files,
                rows=int(rows),
                columns=int(cols),
            )
        )
    out.sort(key=lambda s: -s.slice_count)
    return out


def find_series_folders(root: Path, max_depth: int = 3, limit: int = 20) -> list[tuple[Path, int]]:
    """Subfolders of ``root`` that hold DICOM series (for the 'pick a subfolder' message)."""
    found: list[tuple[Path, int]] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, _ in os.walk(root):
        d = Path(dirpath)
        if len(d.parts) - base_depth >= max_depth:
            dirnames[:] = []
        dirnames.sort()
        if d == root:
            continue
        with native_stderr_to_log():
            n = len(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)))
        if n:
            found.append((d, n))
            if len(found) >= limit:
                break
    return found


def choose_series(folder: Path, series: str | None) -> SeriesInfo:
    """The one series to read: the only one, or the one named by UID (exact, else a unique part)."""
    all_series = list_series(folder)
    if not all_series:
        sub = find_series_folders(folder)
        if sub:
            names = ", ".join(f"{p.relative_to(folder)}/ ({n} series)" for p, n in sub)
            raise ImageLoadError(f"no DICOM files directly in {folder}; open one of its subfolders: {names}")
        others = sorted({p.suffix.lower() or "(no extension)" for p in folder.iterdir() if p.is_file()})
        hint = f" (it holds {', '.join(others)} files; open a file instead)" if others else " (it is empty)"
        raise ImageLoadError(f"no DICOM series found in {folder}{hint}")
    listing = "; ".join(s.label() for s in all_series)
    if series is None:
        if len(all_series) == 1:
            return all_series[0]
        raise ImageLoadError(
            f"{folder} holds {len(all_series)} DICOM series; choose one with --series UID "
            f"(series=...): {listing}"
        )
    exact = [s for s in all_series if s.uid == series]
    if exact:
        return exact[0]
    partial = [s for s in all_series if series and series in s.uid]
    if len(partial) == 1:
        return partial[0]
    raise ImageLoadError(f"no single DICOM series matches '{series}' in {folder}; it holds: {listing}")


def _slice_order(
    files: tuple[Path, ...], headers: list[sitk.ImageFileReader], allow_nonuniform: bool, label: str
) -> tuple[list[int], dict[str, Any]]:
    """Indices of ``files`` in slice order, and facts about the stack for ``Volume.meta``."""
    ipps = [_floats(_tag(r, _IPP)) for r in headers]
    iops = [_floats(_tag(r, _IOP)) for r in headers]
    meta: dict[str, Any] = {}
    if all(len(p) == 3 for p in ipps) and all(len(o) == 6 for o in iops):
        iop = np.asarray(iops, dtype=float)
        if np.abs(iop - iop[0]).max() > 1e-4:
            raise ImageLoadError(
                f"DICOM series {label} mixes slice orientations (a localizer or several stacks); "
                "export each stack as its own series"
            )
        normal = np.cross(iop[0, :3], iop[0, 3:])
        pos = np.asarray(ipps, dtype=float) @ normal
        order = [int(i) for i in np.argsort(pos, kind="stable")]
        pos = pos[order]
        meta["slice_positions"] = [round(float(p), 6) for p in pos]
        meta.update(_gantry_tilt(np.asarray(ipps, dtype=float)[order], normal, label))
        if len(pos) > 1:
            gaps = np.diff(pos)
            step = float(np.median(gaps))
            if step <= 1e-6 or gaps.min() <= 1e-6:
                i = int(np.argmin(gaps))
                raise ImageLoadError(
                    f"DICOM series {label} has {len(pos)} slices but slices {i + 1} and {i + 2} share the "
                    f"position {pos[i]:.3f} mm (several echoes, phases or volumes in one series); read one "
                    "cardiac phase of a cine series with --phase N (phase=N), or export them as separate series"
                )
            bad = np.flatnonzero(np.abs(gaps - step) > max(0.01 * step, 1e-3))
            if bad.size:
                i = int(bad[0])
                msg = (
                    f"DICOM series {label} has non-uniform slice spacing: a gap of {gaps[i]:.4g} mm between "
                    f"slices {i + 1} and {i + 2} (at {pos[i]:.2f} and {pos[i + 1]:.2f} mm along the slice "
                    f"normal) where the other slices are {step:.4g} mm apart; a slice is probably missing"
                )
                if not allow_nonuniform:
                    damaged = _unreadable_dicom_files(files[0].parent)
                    if damaged:
                        shown = ", ".join(p.name for p in damaged[:5]) + (" ..." if len(damaged) > 5 else "")
                        msg += f" ({len(damaged)} damaged DICOM file(s) in the folder: {shown})"
                    raise ImageLoadError(
                        msg + "; read it anyway with --allow-nonuniform (allow_nonuniform=True)"
                    )
                log.warning("%s; reading it anyway with an average spacing", msg)
                meta["nonuniform_spacing"] = True
        return order, meta
    if len(files) == 1:  # one picture (an X-ray): there is no stack to place
        return [0], meta
    missing = sum(len(p) != 3 for p in ipps) or sum(len(o) != 6 for o in iops)
    what = "ImagePositionPatient" if any(len(p) != 3 for p in ipps) else "ImageOrientationPatient"
    text = (
        f"DICOM series {label}: {missing} of its {len(files)} slices have no {what}, so the gap between "
        "slices, the order of the slices and where the volume lies in the patient are unknown"
    )
    if not allow_nonuniform:
        raise ImageLoadError(
            text + "; export the series again with its positions, or read it anyway with --allow-nonuniform "
            "(allow_nonuniform=True: slices 1 mm apart, origin 0, sorted by InstanceNumber)"
        )
    meta["invented_geometry"] = True
    numbers = [_floats(_tag(r, _INSTANCE)) for r in headers]
    if all(len(n) == 1 for n in numbers):
        log.warning("%s; reading it with slices 1 mm apart at origin 0, sorted by InstanceNumber", text)
        return sorted(range(len(files)), key=lambda i: numbers[i][0]), meta
    log.warning("%s; reading it with slices 1 mm apart at origin 0, sorted by file name", text)
    return sorted(range(len(files)), key=lambda i: files[i].name), meta


def _check_slices_agree(files: tuple[Path, ...], headers: list[sitk.ImageFileReader], label: str) -> None:
    """Every slice of a stack must have the size and pixel spacing of the others: ITK would keep
    the first slice's spacing for all (a 0.9 mm slice among 0.6875 mm ones is silently misplaced)
    and fails on another size with a message about image regions."""
    from collections import Counter

    if len(headers) < 2:
        return
    sizes = [tuple(int(v) for v in r.GetSize()[:2]) for r in headers]
    common, n = Counter(sizes).most_common(1)[0]
    odd = [i for i, sz in enumerate(sizes) if sz != common]
    if odd:
        i = odd[0]
        raise ImageLoadError(
            f"DICOM series {label}: slice {files[i].name} is {sizes[i][0]}x{sizes[i][1]} pixels where "
            f"{n} other slice(s) are {common[0]}x{common[1]} ({len(odd)} slice(s) differ); it belongs to "
            "another series or was resized: remove it from the folder or export the series again"
        )
    spacings = [tuple(float(v) for v in r.GetSpacing()[:2]) for r in headers]
    ref = Counter(spacings).most_common(1)[0][0]
    odd = [i for i, sp in enumerate(spacings) if not np.allclose(sp, ref, rtol=1e-4, atol=1e-6)]
    if odd:
        i = odd[0]
        raise ImageLoadError(
            f"DICOM series {label}: slice {files[i].name} has a pixel spacing of "
            f"{spacings[i][0]:.6g} x {spacings[i][1]:.6g} mm where the others have {ref[0]:.6g} x {ref[1]:.6g} mm "
            f"({len(odd)} slice(s) differ); one volume cannot hold both: remove the odd slice(s) or export "
            "the series again"
        )


def _check_series_fits(headers: list[sitk.ImageFileReader], label: str) -> None:
    from ..limits import check_fits
    from ._sitk import image_nbytes

    r = headers[0]
    per_slice = image_nbytes(
        tuple(int(v) for v in r.GetSize()), r.GetPixelID(), int(r.GetNumberOfComponents())
    )
    check_fits(
        2 * per_slice * len(headers),
        f"DICOM series {label} ({len(headers)} slices of {r.GetSize()[0]} x {r.GetSize()[1]}) needs",
        "read fewer slices (split the series) or use a machine with more memory",
        ImageLoadError,
    )


def _gantry_tilt(ipp: np.ndarray, normal: np.ndarray, label: str) -> dict[str, Any]:
    """A gantry-tilted CT steps obliquely from slice to slice: ITK then takes the oblique step as the
    slice spacing (too large by 1/cos(tilt), so every volume is too large) and places the slices
    as if stacked straight. The spacing is put back to the true gap along the normal; the in-plane
    shift, which no orthogonal grid can hold, is reported (a DICOM SEG keeps each frame's position)."""
    if len(ipp) < 2:
        return {}
    steps = np.diff(ipp, axis=0)
    along = steps @ normal
    shift = steps - np.outer(along, normal)
    per_slice = float(np.median(np.linalg.norm(shift, axis=1)))
    gap = float(np.median(np.abs(along)))
    if gap <= 0 or per_slice <= 1e-3 * gap + 1e-4:
        return {}
    tilt = float(np.degrees(np.arctan2(per_slice, gap)))
    log.warning(
        "DICOM series %s is sheared (gantry tilt %.2f deg, each slice shifted %.3f mm in-plane): the volume "
        "keeps the slices as stored with the true %.4g mm gap; a NIfTI grid cannot hold the shift",
        label,
        tilt,
        per_slice,
        gap,
    )
    return {"gantry_tilt_deg": round(tilt, 3), "slice_gap_mm": gap}


def _unreadable_dicom_files(folder: Path) -> list[Path]:
    """Files that look like DICOM (extension or preamble) but that GDCM put in no series."""
    from ._formats import has_dicom_preamble

    listed = {f for s in list_series(folder) for f in s.files}
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p not in listed and (p.suffix.lower() in (".dcm", ".ima") or has_dicom_preamble(p))
    )


def _tag_meta(r: sitk.ImageFileReader) -> dict[str, Any]:
    meta: dict[str, Any] = {k: _tag(r, key) for k, key in TAGS.items() if _tag(r, key)}
    centers, widths = _floats(_tag(r, _WINDOW_CENTER)), _floats(_tag(r, _WINDOW_WIDTH))
    if centers and widths:
        meta["window_center"], meta["window_width"] = centers[0], widths[0]
        meta["windows"] = [[c, w] for c, w in zip(centers, widths, strict=False)]
    return meta


def _one_phase(
    files: tuple[Path, ...], headers: list[sitk.ImageFileReader], phase: int, label: str
) -> tuple[tuple[Path, ...], list[sitk.ImageFileReader], int]:
    """The images of one cardiac phase of a cine series, which holds several images per slice position:
    at each position the ``phase``-th by InstanceNumber (the order the scanner wrote the phases in).
    Returns (files, headers, number of phases at the fullest position)."""
    ipps = [_floats(_tag(r, _IPP)) for r in headers]
    iops = [_floats(_tag(r, _IOP)) for r in headers]
    if not all(len(p) == 3 for p in ipps) or not all(len(o) == 6 for o in iops):
        raise ImageLoadError(
            f"DICOM series {label}: its images have no positions, so phases cannot be told apart"
        )
    normal = np.cross(iops[0][:3], iops[0][3:])
    groups: dict[float, list[tuple[float, int]]] = {}
    for i, p in enumerate(ipps):
        number = (_floats(_tag(headers[i], _INSTANCE)) or [float(i)])[0]
        groups.setdefault(round(float(np.dot(p, normal)), 2), []).append((number, i))
    short = [pos for pos, g in groups.items() if len(g) <= phase]
    if phase < 0 or short:
        fewest = min(len(g) for g in groups.values())
        raise ImageLoadError(
            f"DICOM series {label} has {fewest} image(s) at its slice position {short[0] if short else ''} mm: "
            f"phase {phase} does not exist there; give --phase 0 to {fewest - 1}"
        )
    picked = sorted(sorted(g)[phase][1] for g in groups.values())
    return tuple(files[i] for i in picked), [headers[i] for i in picked], max(len(g) for g in groups.values())


def read_series(info: SeriesInfo, allow_nonuniform: bool = False, phase: int | None = None) -> Volume:
    """Read one series in slice order; geometry from ITK (which computes it from the sorted files).
    ``phase`` reads one cardiac phase of a cine series (several images per slice position)."""
    label = f"'{info.description or info.uid or info.folder.name}'"
    try:
        headers = [_header(f) for f in info.files]
    except RuntimeError as exc:
        raise ImageLoadError(f"a file of DICOM series {label} is damaged: {sitk_reason(exc)}") from exc
    _check_slices_agree(info.files, headers, label)
    _check_series_fits(headers, label)
    all_files, phases = info.files, None
    if phase is not None:
        all_files, headers, phases = _one_phase(info.files, headers, phase, label)
    order, meta = _slice_order(all_files, headers, allow_nonuniform, label)
    if phases is not None:
        meta.update(phase=phase, phases=phases)
    files = [str(all_files[i]) for i in order]
    if len(files) == 1:
        vol = read_dicom_file(Path(files[0]))
        vol.meta.update(meta)
        return vol
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOff()
    try:
        with native_stderr_to_log():
            img = reader.Execute()
    except RuntimeError as exc:
        raise ImageLoadError(f"DICOM series {label} could not be read: {sitk_reason(exc)}") from exc
    vol = image_to_volume(img, f"DICOM series {label}")
    if "gantry_tilt_deg" in meta:  # ITK took the oblique step as the gap (see _gantry_tilt)
        vol.spacing = (*vol.spacing[:2], float(meta["slice_gap_mm"]))
    vol.meta.update(_tag_meta(headers[order[0]]))
    uids = [_tag(headers[i], _SOP_UID) for i in order]
    if all(uids):  # a DICOM SEG made on this volume references its instances in this order
        vol.meta["sop_instance_uids"] = uids
    vol.meta.update(meta)
    vol.meta["format"] = "DICOM series"
    vol.meta.setdefault("series_uid", info.uid)
    vol.meta["slices"] = len(files)
    return vol


def read_dicom_file(path: Path) -> Volume:
    """One DICOM file on its own. A single frame becomes a 2D image (an X-ray, one MR slice); its
    placement in the patient (3D origin and direction) is kept in ``meta["patient_geometry"]``."""
    img = read_image(path, "DICOM")
    vol = image_to_volume(img, path.name)
    try:
        hdr = _header(path)
        vol.meta.update(_tag_meta(hdr))
    except RuntimeError:
        pass
    vol.meta["format"] = "DICOM"
    if vol.ndim == 3 and vol.spatial_shape[0] == 1:
        d3 = vol.direction_matrix
        vol.meta["patient_geometry"] = {
            "spacing": list(vol.spacing),
            "origin": list(vol.origin),
            "direction": list(vol.direction),
        }
        in_plane_identity = np.allclose(d3[:2, :2], np.eye(2), atol=1e-6)
        arr = vol.array[:, 0] if vol.channels > 1 else vol.array[0]
        vol2 = Volume(
            array=arr,
            spacing=vol.spacing[:2],
            origin=vol.origin[:2] if in_plane_identity else (0.0, 0.0),
            direction=(1.0, 0.0, 0.0, 1.0),
            channels=vol.channels,
            meta=vol.meta,
        )
        return vol2
    return vol
