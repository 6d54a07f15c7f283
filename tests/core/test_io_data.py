"""Every data set in ../shared/data reads with the shape, spacing and values its README states,
and the DICOM series come out in slice order, not file-name order."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from seg_studio.cli import main
from seg_studio.core import io
from seg_studio.core.errors import ImageLoadError

TCIA = {  # case: (slices, x, y, pixel spacing, dtype)
    "PGBM-003_19950329": (22, 280, 320, 0.6875, np.uint16),
    "PGBM-006_19961210": (24, 512, 512, 0.4297, np.int16),
    "PGBM-008_19930610": (22, 280, 320, 0.6875, np.uint16),
}


def _values(a: np.ndarray) -> set[int]:
    return {int(v) for v in np.unique(a)}


def test_isbi_em_png(data_dir: Path) -> None:
    root = data_dir / "isbi2012_em_membrane"
    images = sorted((root / "images").glob("*.png"))
    assert len(images) == 22
    for img_path in images:
        img, lab = io.read(img_path), io.read(root / "labels" / img_path.name)
        assert img.spatial_shape == (512, 512) and img.channels == 1 and img.array.dtype == np.uint8
        assert img.spacing == (1.0, 1.0) and img.meta["kind"] == "image"
        assert (
            lab.spatial_shape == (512, 512)
            and _values(lab.array) <= {0, 255}
            and lab.meta["kind"] == "labels"
        )


def test_drive_rgb_tiff_and_gif_masks(data_dir: Path) -> None:
    root = data_dir / "drive_retina_vessels"
    images = sorted((root / "images").glob("*_training.tif"))
    assert len(images) == 15
    for img_path in images:
        nn = img_path.name.split("_")[0]
        img = io.read(img_path)
        assert img.channels == 3 and img.meta["rgb"] and img.spatial_shape == (584, 565)
        assert img.array.shape == (3, 584, 565) and img.array.dtype == np.uint8
        vessels = io.read(root / "labels" / f"{nn}_manual1.gif")
        fov = io.read(root / "fov_masks" / f"{nn}_training_mask.gif")
        for m in (vessels, fov):
            assert m.spatial_shape == (584, 565) and m.channels == 1 and _values(m.array) == {0, 255}
        assert 0.05 < (vessels.array == 255).mean() < 0.12  # README: about 7-10% vessel
        assert 0.6 < (fov.array == 255).mean() < 0.75  # README: about 69% inside the FOV


def test_msd_hippocampus_nifti(data_dir: Path) -> None:
    root = data_dir / "msd_task04_hippocampus"
    images = sorted((root / "images").glob("*.nii.gz"))
    assert len(images) == 45
    origins = set()
    for img_path in images:
        img, lab = io.read(img_path), io.read(root / "labels" / img_path.name)
        x, y, z = reversed(img.spatial_shape)
        assert 32 <= x <= 42 and 40 <= y <= 58 and 26 <= z <= 46, img_path.name
        assert img.spacing == (1.0, 1.0, 1.0) and img.array.dtype in (np.float32, np.uint8)
        assert lab.same_geometry(img) and lab.meta["kind"] == "labels" and _values(lab.array) <= {0, 1, 2}
        origins.add(tuple(abs(o) for o in img.origin))
    assert origins <= {(1.0, 1.0, 1.0), (0.0, 0.0, 0.0)}
    float_label = io.read(root / "labels" / "hippocampus_003.nii.gz")
    assert float_label.array.dtype == np.float32 and _values(float_label.array) == {0, 1, 2}


def test_jsrt_png(data_dir: Path) -> None:
    root = data_dir / "jsrt_chest_xray_heart_lungs"
    images = sorted((root / "images").glob("*.png"))
    assert len(images) == 36
    for img_path in images:
        img, lab = io.read(img_path), io.read(root / "labels" / img_path.name)
        assert img.spatial_shape == (224, 224) and img.array.dtype == np.uint8 and img.channels == 1
        assert lab.meta["kind"] == "labels" and _values(lab.array) <= {0, 150, 200, 250}


def test_totalsegmentator_nifti(data_dir: Path) -> None:
    root = data_dir / "totalsegmentator_ct_examples"
    ct = io.read(root / "images" / "example_ct.nii.gz")
    assert tuple(reversed(ct.spatial_shape)) == (122, 101, 112) and ct.spacing == (3.0, 3.0, 3.0)
    assert ct.array.dtype == np.int32 and (int(ct.array.min()), int(ct.array.max())) == (-1207, 3382)
    sm = io.read(root / "images" / "example_ct_sm.nii.gz")
    assert tuple(reversed(sm.spatial_shape)) == (122, 101, 30) and sm.array.dtype == np.int16
    lab = io.read(root / "labels" / "example_ct_sm.nii.gz")
    assert lab.same_geometry(sm) and lab.array.dtype == np.uint8 and len(_values(lab.array)) == 42
    assert lab.labels[5].name == "liver"  # names from the set's labels.json
    mr = io.read(root / "images" / "example_mr_sm.nii.gz")
    assert tuple(reversed(mr.spatial_shape)) == (117, 91, 20) and mr.spacing == (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def ts_dicom(data_dir: Path):
    return io.read(data_dir / "totalsegmentator_ct_examples" / "dicom" / "example_ct_dicom")


def test_totalsegmentator_dicom_with_empty_series_uid(ts_dicom, data_dir: Path) -> None:
    folder = data_dir / "totalsegmentator_ct_examples" / "dicom" / "example_ct_dicom"
    series = io.list_series(folder)
    assert [s.uid for s in series] == [""] and series[0].slice_count == 20
    vol = ts_dicom
    assert tuple(reversed(vol.spatial_shape)) == (512, 512, 20) and vol.array.dtype == np.int16
    assert vol.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert vol.meta["modality"] == "CT" and vol.meta["series_uid"] == "" and "window_center" in vol.meta
    pos = vol.meta["slice_positions"]
    assert all(b - a == pytest.approx(2.0) for a, b in zip(pos, pos[1:], strict=False))
    # its label map is stored with a flipped y axis (NIfTI convention) but covers the same voxels
    lab = io.read(data_dir / "totalsegmentator_ct_examples" / "labels" / "example_ct_dicom.nii.gz")
    assert lab.spatial_shape == vol.spatial_shape and len(_values(lab.array)) == 32

    def corners(v) -> set[tuple[float, ...]]:
        d, s, o = v.direction_matrix, np.asarray(v.spacing), np.asarray(v.origin)
        n = np.asarray(list(reversed(v.spatial_shape))) - 1
        pts = [o + d @ (s * np.asarray(c) * n) for c in np.ndindex(2, 2, 2)]
        return {tuple(np.round(p, 3)) for p in pts}

    assert corners(lab) == corners(vol)
    # align_to puts it on the DICOM grid: bone labels then sit on bone, not on the belly
    on_ct = io.align_to(lab, vol)
    assert on_ct.same_geometry(vol)
    vertebrae = [v for v, li in lab.labels.items() if li.name.startswith("vertebrae")]
    bone = np.isin(on_ct.array, vertebrae)
    assert bone.sum() > 1000 and np.median(vol.array[bone]) > 150
    assert np.median(vol.array[np.isin(lab.array, vertebrae)]) < 100  # unaligned: soft tissue or air


def _slices_by_position(folder: Path) -> list[tuple[float, Path]]:
    """Independent of seg_studio: each file's position along its slice normal, sorted."""
    out = []
    for f in folder.glob("*.dcm"):
        r = sitk.ImageFileReader()
        r.SetFileName(str(f))
        r.ReadImageInformation()
        ipp = np.array([float(v) for v in r.GetMetaData("0020|0032").split("\\")])
        iop = np.array([float(v) for v in r.GetMetaData("0020|0037").split("\\")])
        out.append((float(ipp @ np.cross(iop[:3], iop[3:])), f))
    return sorted(out)


@pytest.mark.parametrize("case", sorted(TCIA))
def test_tcia_series_in_slice_order_matching_their_masks(data_dir: Path, case: str) -> None:
    n, x, y, px, dtype = TCIA[case]
    root = data_dir / "tcia_brain_tumor_progression_dicom"
    img, mask = io.read(root / "images" / case), io.read(root / "labels" / case)
    assert tuple(reversed(img.spatial_shape)) == (x, y, n) and img.array.dtype == dtype
    assert img.spacing[:2] == pytest.approx((px, px)) and img.spacing[2] == pytest.approx(6.5, abs=1e-3)
    assert img.meta["series_description"] == "T1post" and img.meta["kind"] == "image"
    assert mask.meta["series_description"] == "Mask_Tumor" and mask.meta["kind"] == "labels"
    assert mask.same_geometry(img, atol=1e-4) and _values(mask.array) == {0, 1}
    positions = {}
    for name, vol, folder in (("image", img, root / "images" / case), ("mask", mask, root / "labels" / case)):
        order = _slices_by_position(folder)
        positions[name] = [p for p, _ in order]
        assert [f.name for _, f in order] != sorted(f.name for _, f in order), "names would sort the same"
        for k, (_, f) in enumerate(order):
            single = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))[0]
            assert np.array_equal(vol.array[k], single), (name, k, f.name)
    # image slice k and mask slice k sit at the same position (voxel-for-voxel pairing)
    np.testing.assert_allclose(positions["image"], positions["mask"], atol=1e-4)
    # and the tumour is brighter than the brain on post-contrast T1 (an alignment sanity check)
    tumour = mask.array.astype(bool)
    assert img.array[tumour].mean() > img.array[img.array > 0].mean()


def _copy(files, dest: Path, prefix: str = "") -> None:
    dest.mkdir(exist_ok=True)
    for f in files:
        shutil.copy(f, dest / f"{prefix}{f.name}")


def test_folder_with_two_series_needs_a_choice(data_dir: Path, tmp_path: Path, capfd) -> None:
    root = data_dir / "tcia_brain_tumor_progression_dicom"
    both = tmp_path / "both"
    _copy((root / "images" / "PGBM-003_19950329").glob("*.dcm"), both, "img_")
    _copy((root / "labels" / "PGBM-003_19950329").glob("*.dcm"), both, "msk_")
    series = io.list_series(both)
    assert sorted(s.description for s in series) == ["Mask_Tumor", "T1post"]
    with pytest.raises(ImageLoadError) as err:
        io.read(both)
    msg = str(err.value)
    for s in series:
        assert s.uid in msg and s.description in msg
    assert msg.count("22 slices") == 2 and "--series" in msg
    t1 = next(s for s in series if s.description == "T1post")
    vol = io.read(both, series=t1.uid)
    assert vol.meta["series_description"] == "T1post" and vol.spatial_shape[0] == 22
    from seg_studio.core.io.dicom import choose_series

    assert choose_series(both, t1.uid[-12:]).uid == t1.uid  # a unique part of the UID is enough
    capfd.readouterr()
    assert main(["convert", str(both), str(tmp_path / "out.nii.gz")]) == 2
    err_lines = capfd.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "2 DICOM series" in err_lines[0]
    assert not (tmp_path / "out.nii.gz").exists()
    assert main(["info", str(both)]) == 0 and "T1post" in capfd.readouterr().out
    assert main(["convert", str(both), str(tmp_path / "t1.nii.gz"), "--series", t1.uid]) == 0
    t1_nii = io.read(tmp_path / "t1.nii.gz")
    np.testing.assert_array_equal(t1_nii.array, vol.array)
    assert t1_nii.same_geometry(vol)  # DICOM (oblique) -> NIfTI keeps the geometry


def test_series_with_a_missing_slice(data_dir: Path, tmp_path: Path) -> None:
    folder = data_dir / "tcia_brain_tumor_progression_dicom" / "images" / "PGBM-003_19950329"
    order = _slices_by_position(folder)
    gap = tmp_path / "gap"
    _copy([f for k, (_, f) in enumerate(order) if k != 10], gap)
    with pytest.raises(ImageLoadError) as err:
        io.read(gap)
    msg = str(err.value)
    assert "non-uniform slice spacing" in msg and "gap of 13 mm between slices 10 and 11" in msg
    assert "allow" in msg
    vol = io.read(gap, allow_nonuniform=True)
    assert vol.spatial_shape[0] == 21 and vol.meta["nonuniform_spacing"]
    # a damaged file (cut short by a failed copy) is named in the message
    _, victim = order[10]
    (gap / victim.name).write_bytes(victim.read_bytes()[:20000])
    with pytest.raises(ImageLoadError, match=f"1 damaged DICOM file.*{victim.name}"):
        io.read(gap)


def test_single_dicom_file_reads_alone(data_dir: Path) -> None:
    folder = data_dir / "tcia_brain_tumor_progression_dicom" / "images" / "PGBM-006_19961210"
    pos, f = _slices_by_position(folder)[5]
    vol = io.read(f)
    assert (
        vol.ndim == 2 and vol.spatial_shape == (512, 512) and vol.spacing == pytest.approx((0.4297, 0.4297))
    )
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(sitk.ReadImage(str(f)))[0])
    assert vol.meta["patient_geometry"]["origin"] is not None and vol.meta["modality"] == "MR"


def test_cli_info_on_every_data_set(data_dir: Path, capsys) -> None:
    cases = {
        "msd_task04_hippocampus/images/hippocampus_014.nii.gz": "1 x 1 x 1 mm",
        "totalsegmentator_ct_examples/images/example_ct.nii.gz": "122 x 101 x 112",
        "tcia_brain_tumor_progression_dicom/images/PGBM-006_19961210": "0.4297 x 0.4297 x 6.5 mm",
        "drive_retina_vessels/images/22_training.tif": "565 x 584 (x,y), 3 channels",
        "isbi2012_em_membrane/images/1.png": "512 x 512 (x,y)",
        "jsrt_chest_xray_heart_lungs/labels/JPCLN002.png": "4 distinct values",
    }
    for rel, expect in cases.items():
        assert main(["info", str(data_dir / rel)]) == 0
        assert expect in capsys.readouterr().out, rel
