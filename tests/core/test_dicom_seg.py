"""DICOM SEG out and in (core.io.dicom_seg): real TCIA series, a tilted and a gapped CT made from real slices."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from seg_studio.core import io
from seg_studio.core.errors import ImageWriteError
from seg_studio.core.io import dicom_seg
from seg_studio.core.volume import LabelInfo, Volume

TCIA = ("tcia_brain_tumor_progression_dicom",)
CASE = "PGBM-003_19950329"


def _hd_read(path: Path):  # noqa: ANN202
    import highdicom as hd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hd.seg.segread(str(path))


def _labels_on(scan, arr: np.ndarray):  # noqa: ANN001, ANN202
    vol = scan.with_array(
        arr.astype(np.uint8),
        labels={
            0: LabelInfo(0, "background", (0, 0, 0)),
            1: LabelInfo(1, "tumour", (230, 25, 75)),
            2: LabelInfo(2, "bright", (60, 180, 75)),
        },
        meta={"kind": "labels"},
        source=None,
    )
    return vol


def _affine_lps(vol) -> np.ndarray:  # noqa: ANN001 - our Volume's voxel (z,y,x) -> LPS mm
    d = vol.direction_matrix * np.asarray(vol.spacing)  # columns: x, y, z steps
    a = np.eye(4)
    a[:3, :3] = d[:, ::-1]  # (slice, row, column) order, as highdicom's Volume
    a[:3, 3] = vol.origin
    return a


@pytest.fixture(scope="module")
def tcia(data_dir: Path):  # noqa: ANN201
    folder = data_dir.joinpath(*TCIA, "images", CASE)
    scan = io.read(folder)
    mask = io.read(data_dir.joinpath(*TCIA, "labels", CASE)).array > 0
    arr = mask.astype(np.uint8)
    arr[(scan.array > np.percentile(scan.array, 99.5)) & ~mask] = 2
    return folder, scan, arr


def test_oblique_series_seg_reads_back_by_highdicom_to_the_nifti_voxels(tcia, tmp_path: Path) -> None:
    folder, scan, arr = tcia
    assert not np.allclose(scan.direction_matrix, np.eye(3), atol=1e-3)  # really oblique
    labels = _labels_on(scan, arr)
    alg = dicom_seg.Algorithm("demo_model", "2026-11-25", "ab" * 32, "unet")
    out = dicom_seg.write_seg(labels, folder, tmp_path / "result.dcm", alg)
    nifti = io.read(io.write(labels, tmp_path / "result.nii.gz"))

    seg = _hd_read(out)
    assert seg.SOPClassUID == dicom_seg.SEG_SOP_CLASS_UID and seg.SegmentationType == "BINARY"
    hvol = seg.get_volume(combine_segments=True)
    harr, haff = np.asarray(hvol.array), np.asarray(hvol.affine)
    if np.dot(haff[:3, 0], _affine_lps(nifti)[:3, 0]) < 0:  # highdicom may stack the other way
        harr, haff = harr[::-1], haff @ _flip(harr.shape[0])
    assert np.array_equal(harr, nifti.array)
    assert np.allclose(haff, _affine_lps(nifti), atol=1e-3)

    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert names == ["tumour", "bright"]
    alg_item = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert alg_item.AlgorithmName == "demo_model" and alg_item.AlgorithmVersion == "2026-11-25"
    assert "sha256=" + "ab" * 32 in alg_item.AlgorithmParameters
    # every frame references the source instance it lies on, in the reader's slice order
    uids = scan.meta["sop_instance_uids"]
    by_source = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    assert np.array_equal(by_source, arr)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == scan.meta["series_uid"]

    back = io.read(out)  # our reader: a labels volume on the series' grid, with names and colours
    assert back.meta["kind"] == "labels" and np.array_equal(back.array, arr)
    assert back.same_geometry(scan, atol=1e-4)
    assert (
        back.labels[1].name == "tumour"
        and max(abs(a - b) for a, b in zip(back.labels[1].color, (230, 25, 75), strict=True)) <= 2
    )


def _flip(n: int) -> np.ndarray:
    f = np.eye(4)
    f[0, 0], f[0, 3] = -1, n - 1
    return f


def test_seg_summary_names_segments_algorithm_and_series(tcia, tmp_path: Path) -> None:
    folder, scan, arr = tcia
    out = dicom_seg.write_seg(
        _labels_on(scan, arr), folder, tmp_path / "s.dcm", dicom_seg.Algorithm("m", "1", "cd" * 32)
    )
    s = dicom_seg.seg_summary(out)
    assert [x["label"] for x in s["segments"]] == ["tumour", "bright"]
    assert s["segments"][0]["algorithm"] == {"name": "m", "version": "1", "sha256": "cd" * 32}
    assert s["referenced_series_uids"] == [scan.meta["series_uid"]]
    assert s["referenced_instances"] == scan.spatial_shape[0]


def test_labels_off_the_series_grid_are_refused_and_nothing_is_written(tcia, tmp_path: Path) -> None:
    folder, scan, arr = tcia
    labels = _labels_on(scan, arr)
    shifted = labels.with_array(labels.array, origin=tuple(o + 3.0 for o in scan.origin))
    with pytest.raises(ImageWriteError, match="origin"):
        dicom_seg.write_seg(shifted, folder, tmp_path / "x.dcm")
    cropped = Volume(arr[:, :200].copy(), scan.spacing, scan.origin, scan.direction, meta={"kind": "labels"})
    with pytest.raises(ImageWriteError, match="series' own grid"):
        dicom_seg.write_seg(cropped, folder, tmp_path / "x.dcm")
    assert list(tmp_path.iterdir()) == []


def test_a_series_without_uids_is_refused_with_why(data_dir: Path, tmp_path: Path) -> None:
    folder = data_dir / "totalsegmentator_ct_examples" / "dicom" / "example_ct_dicom"
    scan = io.read(folder)
    labels = scan.with_array((scan.array > 200).astype(np.uint8), meta={"kind": "labels"}, source=None)
    with pytest.raises(ImageWriteError, match="no SOPInstanceUID"):
        dicom_seg.write_seg(labels, folder, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


@pytest.mark.parametrize(
    ("tilt", "drop"), [(15.0, ()), (0.0, (7,))], ids=["gantry_tilt_15deg", "missing_slice"]
)
def test_tilted_or_gapped_ct_seg_keeps_the_nifti_voxels_and_true_positions(
    data_dir: Path, tmp_path: Path, tilt: float, drop: tuple[int, ...]
) -> None:
    from synth_dicom import write_series

    folder = write_series(data_dir, tmp_path / "series", tilt_deg=tilt, drop=drop)
    scan = io.read(folder, allow_nonuniform=bool(drop))
    if tilt:  # the true gap along the normal, not ITK's oblique step (2 / cos 15 deg = 2.07)
        assert scan.spacing[2] == pytest.approx(2.0, abs=1e-6)
        assert scan.meta["gantry_tilt_deg"] == pytest.approx(15.0, abs=0.01)
    arr = (scan.array > 150).astype(np.uint8) + (scan.array > 600).astype(np.uint8)
    labels = _labels_on(scan, arr)
    out = dicom_seg.write_seg(labels, folder, tmp_path / "ct.dcm", dicom_seg.Algorithm("m", "1"))
    nifti = io.read(io.write(labels, tmp_path / "ct.nii.gz"))
    seg = _hd_read(out)
    by_source = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=scan.meta["sop_instance_uids"], combine_segments=True
    )
    assert np.array_equal(by_source, nifti.array)
    # each frame keeps its source's true position (sheared / with the gap), which the NIfTI grid cannot
    import pydicom

    sources = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f) for f in sorted(folder.iterdir()))}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        assert np.allclose(pos, np.asarray(sources[ref].ImagePositionPatient, float), atol=1e-4)
    back = io.read(out)  # without the series: stacked along the normal at the frames' positions
    assert np.array_equal(back.array, nifti.array)
    assert back.spacing[:2] == pytest.approx(nifti.spacing[:2], abs=1e-4)
