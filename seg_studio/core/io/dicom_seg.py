"""DICOM Segmentation (SEG) out and in, through highdicom, frame by frame on the source series.

A label map predicted or corrected on a DICOM series becomes a binary SEG: one segment per class
(name and colour from the checkpoint or the label table), the algorithm named with its version and
the checkpoint's SHA-256, and every frame referencing the source instance it lies on. The labels'
slice ``k`` is the series' slice ``k`` in the order ``core.io.dicom`` reads it (sorted along the
slice normal), so a series with uneven gaps or a gantry tilt keeps each frame's true position in
the SEG even where a NIfTI grid can only approximate it. Labels that are not on the series' grid, or
a series whose instances cannot be referenced (no UIDs), are refused with the reason.

Reading a SEG gives a labels ``Volume``: on the series' own grid when the series is at hand
(``like=``), else on the grid the SEG's frame positions define.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import ImageLoadError, ImageWriteError
from ..volume import LabelInfo, Volume

log = logging.getLogger(__name__)

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
SEG_SUFFIXES = (".dcm", ".dicom")
#: TrackingID prefix that records which label value a segment holds (segment numbers are 1..N).
_VALUE_TAG = "seg_studio label "
_UID_TAGS = ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID")


@dataclass(frozen=True)
class Algorithm:
    """Who made the labels: written into every segment's Algorithm Identification."""

    name: str
    version: str
    sha256: str = ""
    architecture: str = ""
    #: "AUTOMATIC" for a model's output, "SEMIAUTOMATIC" once a person corrected it, "MANUAL" without a model
    kind: str = "AUTOMATIC"

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str] | None, meta: Any, kind: str = "AUTOMATIC"
    ) -> Algorithm:
        """Name (card name or file stem), version (card version or packaging date) and file hash."""
        from ..checkpoint import file_hash

        card = dict(getattr(meta, "card", {}) or {})
        prov = dict(getattr(meta, "provenance", {}) or {})
        stem = Path(path).name.removesuffix(".segmodel") if path else ""
        name = str(card.get("name") or stem or getattr(meta, "architecture", "model"))
        version = str(card.get("version") or card.get("packaged") or prov.get("created") or "unversioned")
        digest = file_hash(path) if path and Path(path).is_file() else ""
        return cls(name, version, digest, str(getattr(meta, "architecture", "")), kind)


# --- the source series ------------------------------------------------------------------------------


def is_dicom_seg(path: str | os.PathLike[str]) -> bool:
    """True for a file whose SOP Class is Segmentation Storage (read from its header only)."""
    import pydicom

    path = Path(path)
    if not path.is_file():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # noqa: BLE001 - not DICOM at all
        return False
    return str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS_UID


def series_sources(folder: str | os.PathLike[str], series: str | None = None) -> list[Any]:
    """The series' headers (no pixels) in the reader's slice order, checked for what a SEG needs."""
    import pydicom

    from .dicom import choose_series

    info = choose_series(Path(folder), series) if Path(folder).is_dir() else None
    files = info.files if info else (Path(folder),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
            raise ImageLoadError(f"cannot read the DICOM headers of {folder}: {exc}") from exc
    for ds in dss:
        missing = [t for t in _UID_TAGS if not str(getattr(ds, t, "") or "").strip()]
        if missing:
            raise ImageWriteError(
                f"the DICOM series in {folder} cannot be referenced by a DICOM SEG: its instances have no "
                f"{', '.join(missing)} (anonymised without UIDs); save the labels as .nii.gz instead"
            )
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise ImageWriteError(
                f"{Path(ds.filename).name} is a multi-frame image; DICOM SEG export supports series of "
                "single-frame slices"
            )
    if len(dss) > 1:
        dss = _sorted_like_reader(dss, str(folder))
    return dss


def _sorted_like_reader(dss: list[Any], where: str) -> list[Any]:
    """Sort along the slice normal, as ``dicom._slice_order`` does (stable, same tie rule)."""
    iops = [list(getattr(ds, "ImageOrientationPatient", []) or []) for ds in dss]
    ipps = [list(getattr(ds, "ImagePositionPatient", []) or []) for ds in dss]
    if not all(len(o) == 6 for o in iops) or not all(len(p) == 3 for p in ipps):
        raise ImageWriteError(
            f"the DICOM series in {where} has slices without ImagePositionPatient/ImageOrientationPatient; "
            "a DICOM SEG cannot place its frames"
        )
    iop = np.asarray(iops, dtype=float)
    if np.abs(iop - iop[0]).max() > 1e-4:
        raise ImageWriteError(
            f"the DICOM series in {where} mixes slice orientations; export each stack alone"
        )
    normal = np.cross(iop[0, :3], iop[0, 3:])
    pos = np.asarray(ipps, dtype=float) @ normal
    return [dss[int(i)] for i in np.argsort(pos, kind="stable")]


def check_on_series_grid(labels: Volume, sources: Sequence[Any]) -> list[str]:
    """Refuse labels whose voxels are not the series' pixels, frame for frame; return notes.

    Slice ``k`` of the labels must be source frame ``k``: same rows x columns, pixel spacing and
    orientation, the first frame at the labels' origin, and every frame nearer its own labels slice
    than any other (this admits uneven gaps and a gantry tilt, whose frames keep their own
    positions in the SEG, and refuses a mask resampled or cropped to another grid).
    """
    n = len(sources)
    ds0 = sources[0]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    shape = labels.spatial_shape if labels.ndim == 3 else (1, *labels.spatial_shape)
    if shape != (n, rows, cols):
        raise ImageWriteError(
            f"the labels are {' x '.join(map(str, reversed(shape)))} (x,y,z) but the DICOM series is "
            f"{cols} x {rows} x {n}; a DICOM SEG needs the mask on the series' own grid (predict on the series, "
            "or resample the labels to it)"
        )
    if labels.ndim == 2:
        return []
    d = labels.direction_matrix
    iop = np.asarray(ds0.ImageOrientationPatient, dtype=float)
    ps = np.asarray(ds0.PixelSpacing, dtype=float)  # row spacing (y), column spacing (x)
    if not (np.allclose(d[:, 0], iop[:3], atol=1e-3) and np.allclose(d[:, 1], iop[3:], atol=1e-3)):
        raise ImageWriteError(
            "the labels' orientation differs from the DICOM series'; they lie on another grid"
        )
    if not np.allclose(labels.spacing[:2], ps[::-1], rtol=1e-4):
        raise ImageWriteError(
            f"the labels' pixel spacing {labels.spacing[:2]} differs from the series' {tuple(ps[::-1])} mm"
        )
    ipp = np.asarray([ds.ImagePositionPatient for ds in sources], dtype=float)
    origin = np.asarray(labels.origin)
    tol_xy = 0.5 * float(min(labels.spacing[:2]))
    if np.linalg.norm(ipp[0] - origin) > tol_xy:
        raise ImageWriteError(
            f"the labels' origin {tuple(np.round(origin, 3))} is not the series' first slice "
            f"{tuple(np.round(ipp[0], 3))}; they lie on another grid"
        )
    normal = d[:, 2]
    along = (ipp - origin) @ normal
    grid = np.arange(n) * labels.spacing[2]
    off = np.abs(along - grid)
    gaps = np.diff(along)
    uneven = gaps.size > 0 and float(np.ptp(gaps)) > max(0.01 * float(np.median(gaps)), 1e-3)
    # uneven gaps (read with an average spacing): slice k is frame k, the slab must still match at both ends
    k = int(np.argmax(off)) if not uneven else (0 if off[0] >= off[-1] else n - 1)
    if off[k] >= 0.5 * labels.spacing[2]:
        raise ImageWriteError(
            f"slice {k + 1} of the DICOM series lies {along[k]:.2f} mm along the slice normal, but slice {k + 1} "
            f"of the labels at {grid[k]:.2f} mm; they do not share slices"
        )
    notes = []
    shift = ipp - origin - np.outer(along, normal)
    if n > 1 and np.linalg.norm(shift, axis=1).max() > tol_xy:
        tilt = float(np.degrees(np.arctan2(np.linalg.norm(shift[-1]), along[-1] - along[0])))
        notes.append(
            f"the series is sheared (gantry tilt about {tilt:.1f} deg): the SEG keeps each frame's position"
        )
    if uneven:
        notes.append("the series' slice gaps are uneven: the SEG keeps each frame's true position")
    return notes


# --- writing ----------------------------------------------------------------------------------------


def _classes(labels: Volume, values: np.ndarray) -> list[LabelInfo]:
    """One segment per foreground class of the label table (present or not), plus stray values."""
    from . import label_color

    table = {int(v): li for v, li in labels.labels.items() if int(v) != 0}
    for v in values:
        if int(v) != 0 and int(v) not in table:
            table[int(v)] = LabelInfo(int(v), f"label {int(v)}", label_color(int(v)))
    return [table[v] for v in sorted(table)]


def _segment_descriptions(classes: Sequence[LabelInfo], algorithm: Algorithm | None) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    alg = None
    if algorithm is not None and algorithm.kind != "MANUAL":
        params = {"sha256": algorithm.sha256} if algorithm.sha256 else {}
        if algorithm.architecture:
            params["architecture"] = algorithm.architecture
        alg = hd.AlgorithmIdentificationSequence(
            name=algorithm.name[:64],
            family=codes.cid7162.ArtificialIntelligence,
            version=algorithm.version[:64],
            source="seg_studio",
            parameters=params or None,
        )
    kind = algorithm.kind if algorithm is not None else "MANUAL"
    return [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=c.name[:64] or f"label {c.value}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=kind,
            algorithm_identification=alg if kind != "MANUAL" else None,
            tracking_id=f"{_VALUE_TAG}{c.value}",
            tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*[int(v) for v in c.color]),
        )
        for i, c in enumerate(classes, start=1)
    ]


def build_seg(labels: Volume, sources: Sequence[Any], algorithm: Algorithm | None = None) -> Any:
    """The SEG dataset for ``labels`` on ``sources`` (sorted like the reader); checks the grid first."""
    import highdicom as hd

    from ... import __version__

    notes = check_on_series_grid(labels, sources)
    arr = np.asarray(labels.array)
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise ImageWriteError("a label map must hold whole numbers to become a DICOM SEG")
    values = _unique_values(arr)
    if values.size and values.min() < 0:
        raise ImageWriteError("a DICOM SEG holds label values 0 and up; this mask has negative values")
    classes = _classes(labels, values)
    if not classes:
        raise ImageWriteError("the mask has no foreground classes to store as DICOM SEG segments")
    lut = np.zeros(int(max(values.max(initial=0), max(c.value for c in classes))) + 1, dtype=np.uint16)
    for i, c in enumerate(classes, start=1):
        lut[c.value] = i
    segments = lut[arr.astype(np.int64)]
    if labels.ndim == 3:
        segments = segments.reshape(len(sources), *segments.shape[-2:])
    name = algorithm.name if algorithm is not None else "manual"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=segments,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(classes, algorithm),
            series_instance_uid=hd.UID(),
            series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 9000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="seg_studio",
            manufacturer_model_name="seg_studio",
            software_versions=str(__version__),
            device_serial_number="0",
            omit_empty_frames=False,
            content_label="SEGMENTATION",
            content_description=f"seg_studio {name}"[:64],
        )
    seg.SeriesDescription = f"SEG {name}"[:64]
    for note in notes:
        log.info("%s", note)
    return seg


def _unique_values(arr: np.ndarray) -> np.ndarray:
    from . import _unique

    return _unique(np.asarray(arr)).astype(np.int64)


def write_seg(
    labels: Volume,
    series: str | os.PathLike[str] | Sequence[Any],
    path: str | os.PathLike[str],
    algorithm: Algorithm | None = None,
    series_uid: str | None = None,
    protected: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Write ``labels`` as a DICOM SEG on ``series`` (a folder, a file, or sorted headers), atomically.

    The temp file is read back with highdicom and must give exactly the labels' segments frame for
    frame before it replaces ``path``.
    """
    sources = series if isinstance(series, Sequence) and not isinstance(series, str) else None
    if sources is None:
        sources = series_sources(series, series_uid)  # type: ignore[arg-type]
    seg = build_seg(labels, sources, algorithm)
    expected = _frames_by_source(seg, sources)
    src_paths = [getattr(ds, "filename", None) for ds in sources]

    def write(tmp: Path) -> None:
        seg.save_as(tmp, enforce_file_format=True)

    def verify(tmp: Path) -> None:
        got = _frames_by_source(read_seg_dataset(tmp), sources)
        if got.shape != expected.shape or not np.array_equal(got, expected):
            raise ImageWriteError(
                f"the DICOM SEG written to {Path(path).name} did not read back to the same voxels"
            )

    return atomic_write(path, write, verify, protected=[*protected, *src_paths, labels.source])


def _frames_by_source(seg: Any, sources: Sequence[Any]) -> np.ndarray:
    """The SEG's segments as one array (segment numbers), one frame per source instance, in order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(
            seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in sources],
                combine_segments=True,
                skip_overlap_checks=True,
            )
        )


# --- reading ----------------------------------------------------------------------------------------


def read_seg_dataset(path: str | os.PathLike[str]) -> Any:
    """The SEG as a ``highdicom.seg.Segmentation``, or one ``ImageLoadError`` line."""
    import highdicom as hd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001 - highdicom/pydicom raise many types for bad files
        raise ImageLoadError(f"{Path(path).name} is not a readable DICOM SEG: {exc}") from exc


def _segment_table(seg: Any) -> dict[int, LabelInfo]:
    """Segment number -> LabelInfo with the label value the segment was written from."""
    out: dict[int, LabelInfo] = {}
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        tracking = str(getattr(item, "TrackingID", "") or "")
        value = int(tracking[len(_VALUE_TAG) :]) if tracking.startswith(_VALUE_TAG) else number
        color = (255, 0, 0)
        lab = getattr(item, "RecommendedDisplayCIELabValue", None)
        if lab is not None:
            import highdicom as hd

            color = tuple(int(c) for c in hd.color.CIELabColor.from_dicom_value(list(lab)).to_rgb())
        out[number] = LabelInfo(value, str(item.SegmentLabel), color)  # type: ignore[arg-type]
    return out


def _to_values(segments: np.ndarray, table: Mapping[int, LabelInfo]) -> np.ndarray:
    lut = np.zeros(max(table, default=0) + 1, dtype=np.int64)
    for number, li in table.items():
        lut[number] = li.value
    out = lut[segments.astype(np.int64)]
    from . import smallest_int_dtype

    return out.astype(smallest_int_dtype(out))


def read_seg(path: str | os.PathLike[str], like: Volume | None = None) -> Volume:
    """A SEG as a labels Volume: on ``like``'s grid (its series, read by ``core.io``) when given,
    else on the grid of the SEG's own frame positions."""
    path = Path(path)
    seg = read_seg_dataset(path)
    table = _segment_table(seg)
    labels = {0: LabelInfo(0, "background", (0, 0, 0)), **{li.value: li for li in table.values()}}
    if like is not None:
        sources = _like_sources(seg, like)
        arr = _to_values(_frames_by_source(seg, sources), table)
        arr = arr.reshape(like.spatial_shape)
        vol = like.with_array(arr, labels=labels, meta={})
    else:
        vol = _seg_on_own_grid(seg, table, labels, path.name)
    vol.source = path
    vol.meta.update(_seg_meta(seg))
    return vol


@dataclass(frozen=True)
class _Ref:
    SOPInstanceUID: str


def _like_sources(seg: Any, like: Volume) -> list[_Ref]:
    """The SEG's referenced instances in ``like``'s slice order (``like.meta['sop_instance_uids']``)."""
    uids = list(like.meta.get("sop_instance_uids") or [])
    if not uids:
        raise ImageLoadError("the series the SEG should lie on was not read from DICOM (no instance UIDs)")
    referenced = {str(u[2]) for u in seg.get_source_image_uids()}
    missing = [u for u in uids if u not in referenced]
    if len(missing) == len(uids):
        raise ImageLoadError("the DICOM SEG does not reference this series; open the series it was made on")
    return [_Ref(u) for u in uids]


def _seg_on_own_grid(
    seg: Any, table: Mapping[int, LabelInfo], labels: dict[int, LabelInfo], name: str
) -> Volume:
    """The SEG's frames stacked along their slice normal; the grid they define (regular or not)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uids = [str(u[2]) for u in seg.get_source_image_uids()]
        positions = _frame_positions(seg)
    if not positions:
        raise ImageLoadError(f"{name}: the DICOM SEG's frames have no positions; open it with its series")
    iop = np.asarray(
        seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float
    )
    ps = np.asarray(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing, float)
    normal = np.cross(iop[:3], iop[3:])
    order = sorted(positions, key=lambda u: float(np.dot(positions[u], normal)))
    order = [u for u in order if u in set(uids)] or order
    segments = _frames_by_source(seg, [_Ref(u) for u in order])
    ipp = np.asarray([positions[u] for u in order], dtype=float)
    along = (ipp - ipp[0]) @ normal
    gaps = np.diff(along)
    dz = float(np.mean(gaps)) if gaps.size else float(getattr(seg, "SliceThickness", 1.0) or 1.0)
    meta: dict[str, Any] = {"sop_instance_uids": order}
    if gaps.size and np.abs(gaps - dz).max() > max(0.01 * dz, 1e-3):
        meta["nonuniform_spacing"] = True
        log.warning(
            "%s: the SEG's slices are unevenly spaced; its grid uses their mean gap %.4g mm", name, dz
        )
    direction = np.column_stack([iop[:3], iop[3:], normal]).ravel()
    arr = _to_values(segments, table)
    return Volume(
        array=arr,
        spacing=(float(ps[1]), float(ps[0]), dz),
        origin=tuple(float(v) for v in ipp[0]),
        direction=tuple(float(v) for v in direction),
        labels=labels,
        meta=meta,
    )


def _frame_positions(seg: Any) -> dict[str, np.ndarray]:
    """Source instance UID -> the position of the SEG frames that reference it."""
    out: dict[str, np.ndarray] = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        pos = frame.PlanePositionSequence[0].ImagePositionPatient
        derivation = frame.DerivationImageSequence[0].SourceImageSequence[0]
        out[str(derivation.ReferencedSOPInstanceUID)] = np.asarray(pos, dtype=float)
    return out


def _seg_meta(seg: Any) -> dict[str, Any]:
    ref = list(getattr(seg, "ReferencedSeriesSequence", []) or [])
    return {
        "format": "DICOM SEG",
        "kind": "labels",
        "source_kind": "labels",
        "modality": "SEG",
        "series_uid": str(seg.SeriesInstanceUID),
        "study_uid": str(getattr(seg, "StudyInstanceUID", "")),
        "series_description": str(getattr(seg, "SeriesDescription", "")),
        "referenced_series_uids": [str(r.SeriesInstanceUID) for r in ref],
        "frame_of_reference_uid": str(getattr(seg, "FrameOfReferenceUID", "")),
    }


def seg_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``seg-studio info`` prints for a SEG: its segments, algorithm and referenced series."""
    seg = read_seg_dataset(path)
    table = _segment_table(seg)
    segments = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        algs = list(getattr(item, "SegmentationAlgorithmIdentificationSequence", []) or [])
        alg = algs[0] if algs else None
        segments.append(
            {
                "number": number,
                "label": str(item.SegmentLabel),
                "value": table[number].value,
                "color": list(table[number].color),
                "algorithm_type": str(item.SegmentAlgorithmType),
                "algorithm": None
                if alg is None
                else {
                    "name": str(alg.AlgorithmName),
                    "version": str(alg.AlgorithmVersion),
                    **_alg_params(alg),
                },
            }
        )
    out = {"path": str(path), **_seg_meta(seg), "frames": int(seg.NumberOfFrames)}
    out.update(size_xy=[int(seg.Columns), int(seg.Rows)], segments=segments)
    out["referenced_instances"] = len(seg.get_source_image_uids())
    return out


def _alg_params(alg: Any) -> dict[str, str]:
    text = str(getattr(alg, "AlgorithmParameters", "") or "")
    out = {}
    for part in text.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out
