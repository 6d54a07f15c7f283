"""Clinical data sets turned into training pairs: HC18 (ellipse outlines + CSV pixel sizes) and
Sunnybrook (cine DICOM + contour text files), on the real files in ../shared/data."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from seg_studio.core import io
from seg_studio.core.biometry import Ellipse, ellipse_mask, head_biometry
from seg_studio.core.datasets import hc18, sunnybrook
from seg_studio.core.errors import ImageLoadError
from seg_studio.core.training.data import Split, image_hash, make_or_extend_split


def _outline(e: Ellipse, shape: tuple[int, int]) -> np.ndarray:
    """A one-pixel ellipse curve as a sonographer's annotation PNG holds it (0/255)."""
    t = np.linspace(0, 2 * math.pi, 4000)
    c, s = math.cos(e.angle), math.sin(e.angle)
    x = e.cx + e.a * np.cos(t) * c - e.b * np.sin(t) * s
    y = e.cy + e.a * np.cos(t) * s + e.b * np.sin(t) * c
    out = np.zeros(shape, np.uint8)
    ok = (x >= -0.5) & (x < shape[1] - 0.5) & (y >= -0.5) & (y < shape[0] - 0.5)
    out[np.round(y[ok]).astype(int), np.round(x[ok]).astype(int)] = 255
    return out


@pytest.mark.parametrize("cy", [100.0, 30.0])  # inside the image; running off its top
def test_head_mask_is_the_ellipse_through_the_outline(cy: float) -> None:
    e = Ellipse(150.0, cy, 90.0, 60.0, 0.4)
    mask = hc18.head_mask(_outline(e, (200, 300)))
    truth = ellipse_mask(e, (200, 300))
    assert (mask & truth).sum() * 2 / (mask.sum() + truth.sum()) > 0.995
    assert head_biometry(mask, (1.0, 1.0)).hc_mm == pytest.approx(e.circumference, rel=0.005)


def test_an_empty_annotation_is_one_clear_error() -> None:
    with pytest.raises(ImageLoadError, match="not an ellipse"):
        hc18.head_mask(np.zeros((50, 50), np.uint8))


def test_resampling_to_the_working_grid_keeps_extent_and_circumference() -> None:
    e = Ellipse(40.0, 25.0, 20.0, 14.0, 0.3)  # mm
    ps = 0.12
    image = io.Volume.from_array(
        np.random.default_rng(0).random((450, 700)).astype(np.float32), spacing=(ps, ps)
    )
    mask = io.Volume.from_array(ellipse_mask(e, (450, 700), (ps, ps)).astype(np.uint8), spacing=(ps, ps))
    img, lab = hc18.to_spacing(image, mask, 0.5)
    assert img.spatial_shape == lab.spatial_shape == (108, 168)
    assert img.spacing[0] * 168 == pytest.approx(ps * 700) and img.spacing[1] * 108 == pytest.approx(ps * 450)
    hc = head_biometry(np.asarray(lab.array), lab.spacing).hc_mm
    assert hc == pytest.approx(e.circumference, abs=0.5)


def test_held_back_fetuses_keep_all_their_images_together() -> None:
    names = [f"{i:03d}_HC" for i in range(200)] + [f"{i:03d}_2HC" for i in range(0, 200, 3)]
    held = hc18.held_back_fetuses(names, 0.1)
    assert len(held) == 20 and held == hc18.held_back_fetuses(list(reversed(names)), 0.1)
    assert hc18.held_back_fetuses(names, 0.0) == set()


def _copy_hc18(data_dir: Path, tmp: Path, names: list[str]) -> Path:
    src = data_dir / "hc18_fetal_head_ultrasound"
    dst = tmp / "hc18"
    (dst / "images").mkdir(parents=True)
    (dst / "annotations").mkdir()
    rows = [ln for ln in (src / hc18.CSV_NAME).read_text().splitlines() if ln.split(",")[0][:-4] in names]
    (dst / hc18.CSV_NAME).write_text(
        "filename,pixel size(mm),head circumference (mm)\n" + "\n".join(rows) + "\n"
    )
    for n in names:
        shutil.copy(src / "images" / f"{n}.png", dst / "images")
        shutil.copy(src / "annotations" / f"{n}_Annotation.png", dst / "annotations")
    return dst


def test_prepare_hc18_writes_pairs_at_half_a_millimetre_and_a_split_training_reuses(
    data_dir: Path, tmp_path: Path
) -> None:
    names = ["000_HC", "014_2HC", "014_3HC", "346_HC", "802_HC"]  # 346_HC's outline runs off the image
    src = _copy_hc18(data_dir, tmp_path, names)
    summary = hc18.prepare(src, tmp_path / "out", val_fraction=0.25)
    assert summary["cases"] == 5 and summary["val_fetuses"] == 1
    refs = hc18.read_reference(src)
    split = Split.read(tmp_path / "out" / "split.json")
    hashes, case_names = [], []
    for n in names:
        img = io.read(tmp_path / "out" / "images" / f"{n}.nii.gz")
        lab = io.read(tmp_path / "out" / "labels" / f"{n}.nii.gz")
        assert img.spacing == pytest.approx((0.5, 0.5), rel=0.01) and lab.spatial_shape == img.spatial_shape
        assert set(np.unique(lab.array)) == {0, 1}
        hc = head_biometry(np.asarray(lab.array), lab.spacing).hc_mm
        assert hc == pytest.approx(refs[n].hc_mm, abs=1.0), n  # the CSV's HC survives the resampling
        hashes.append(image_hash(img.array))
        case_names.append(n)
    # training reads the split back unchanged: every written image is in it, fetus 014 on one side
    again, changed = make_or_extend_split(hashes, case_names, 0.2, split)
    assert not changed
    side = {split.names[h]: h in split.val for h in hashes}
    assert side["014_2HC"] == side["014_3HC"]
    assert hc18.held_back_names(tmp_path / "out" / "split.json") == sorted(n for n, v in side.items() if v)


def test_polygon_mask_fills_pixel_centres_inside() -> None:
    square = np.array([[1.5, 1.5], [4.5, 1.5], [4.5, 3.5], [1.5, 3.5]])  # x, y
    m = sunnybrook.polygon_mask(square, (6, 7))
    expected = np.zeros((6, 7), bool)
    expected[2:4, 2:5] = True
    assert np.array_equal(m, expected)


def test_sunnybrook_contours_find_their_cine_image_by_instance_number(data_dir: Path) -> None:
    items = sunnybrook.contoured_images(data_dir / "sunnybrook_cardiac_mri")
    assert len(items) == 74 and sum(i.epi is not None for i in items) == 37
    assert {i.patient for i in items} == {"SCD0000101", "SCD0000201", "SCD0000301", "SCD0000401"}
    for i in items:
        assert i.dicom.stem == str(i.instance) and f"-{i.instance:04d}-" in i.endo.name


def test_sunnybrook_images_at_one_slice_position_get_their_own_labels(data_dir: Path) -> None:
    items = {i.name: i for i in sunnybrook.contoured_images(data_dir / "sunnybrook_cardiac_mri")}
    a, la = sunnybrook.read_item(items["SCD0000101_0048"])  # the same slice position, two phases
    b, lb = sunnybrook.read_item(items["SCD0000101_0059"], myocardium=True)
    la, lb = np.asarray(la.array), np.asarray(lb.array)
    assert set(np.unique(la)) == {0, 1} and set(np.unique(lb)) == {0, 1, 2}
    assert (la == 1).sum() < 0.7 * (lb == 1).sum()  # 48 is the contracted phase: a smaller blood pool
    img = np.asarray(b.array, float)
    assert img[lb == 1].mean() > 2 * img[lb == 2].mean()  # bright blood, dark wall: contours sit right
    assert la.shape == a.spatial_shape and a.spacing == pytest.approx((1.367188, 1.367188))
    with pytest.raises(ImageLoadError, match="no epicardium"):
        sunnybrook.read_item(items["SCD0000101_0048"], myocardium=True)


def test_sunnybrook_reads_instance_numbers_from_the_header_not_the_file_name(
    data_dir: Path, tmp_path: Path
) -> None:
    src = data_dir / "sunnybrook_cardiac_mri"
    root = tmp_path / "sb"
    (root / "dicom" / "P1").mkdir(parents=True)
    shutil.copytree(src / "contours" / "SCD0000101", root / "contours" / "P1")
    for n in (48, 59):
        shutil.copy(src / "dicom" / "SCD0000101" / f"{n}.dcm", root / "dicom" / "P1" / f"phase_{100 - n}.dcm")
    with pytest.raises(ImageLoadError, match="instance number 68"):
        sunnybrook.contoured_images(root)  # contours without their image: one clear line
    for c in (root / "contours" / "P1").glob("?-contours/*.txt"):
        if "-0048-" not in c.name and "-0059-" not in c.name:
            c.unlink()
    items = sunnybrook.contoured_images(root)
    assert [(i.instance, i.dicom.name) for i in items] == [(48, "phase_52.dcm"), (59, "phase_41.dcm")]
    summary = sunnybrook.prepare(root, tmp_path / "out")
    assert summary == {"images": 2, "with_epicardium": 1, "held_back": "P1", "val_images": 2}
    assert sunnybrook.prepare(root, tmp_path / "myo", myocardium=True)["images"] == 1
    assert [p.name for p in (tmp_path / "myo" / "labels").iterdir()] == ["P1_0059.nii.gz"]


def test_hippocampus_245_keeps_the_dev_folders_held_back_cases(data_dir: Path, tmp_path: Path) -> None:
    """Each folder is split by the training rule, so the dev folder's held-back cases stay held back."""
    from seg_studio.core.datasets import hippocampus

    dev, extra = data_dir / "msd_task04_hippocampus", data_dir / "msd_task04_hippocampus_extra"
    sources = []
    for folder, n in ((dev, 6), (extra, 5)):
        dst = tmp_path / folder.name
        for sub in ("images", "labels"):
            (dst / sub).mkdir(parents=True)
            for p in sorted((folder / sub).iterdir())[:n]:
                shutil.copy(p, dst / sub)
        sources.append(dst)
    summary = hippocampus.prepare(sources, tmp_path / "all")
    assert summary == {"cases": 11, "val_cases": 2, "train_cases": 9}
    split = Split.read(tmp_path / "all" / "split.json")
    hashes = [image_hash(io.read(p).array) for p in sorted((sources[0] / "images").iterdir())]
    alone, _ = make_or_extend_split(hashes, [str(i) for i in range(6)], 0.2)
    assert set(alone.val) <= set(split.val)
    assert len(list((tmp_path / "all" / "images").iterdir())) == 11
    with pytest.raises(ImageLoadError, match="also in an earlier folder"):
        hippocampus.prepare([sources[0], sources[0]], tmp_path / "again")


def test_a_cine_folder_reads_one_phase_at_a_time_with_its_true_slice_gap(data_dir: Path) -> None:
    """Two images per slice position (two phases): refused with the way out, read per phase with it; the
    gap is the 10 mm along the slice normal (SpacingBetweenSlices), not SliceLocation's 6.68 mm steps."""
    folder = data_dir / "sunnybrook_cardiac_mri" / "dicom" / "SCD0000201"
    with pytest.raises(ImageLoadError, match="--phase N"):
        io.read(folder)
    first, second = io.read(folder, phase=0), io.read(folder, phase=1)
    assert first.spatial_shape == second.spatial_shape == (9, 256, 256)
    assert first.spacing[2] == pytest.approx(10.0, abs=0.02) and first.meta["phases"] == 2
    assert not np.array_equal(first.array, second.array)
    with pytest.raises(ImageLoadError, match="give --phase 0 to 1"):
        io.read(folder, phase=2)


def test_cli_gives_the_held_back_patients_lv_volume_per_phase(data_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """predict on the cine folder, one phase, then measure: the LV blood pool in ml, near the contours'
    (area x 10 mm summed: 180.2 ml and 241.5 ml, sunnybrook.evaluate_blood_pool)."""
    import json

    from seg_studio.cli import main

    folder = data_dir / "sunnybrook_cardiac_mri" / "dicom" / "SCD0000201"
    model = Path(__file__).resolve().parents[2] / "resources/models/sunnybrook_lv.segmodel"
    truth = sunnybrook.evaluate_blood_pool(model, data_dir / "sunnybrook_cardiac_mri", "SCD0000201")["phases"]
    for phase in (0, 1):
        out = tmp_path / f"lv_{phase}.nii.gz"
        argv = ["predict", str(folder), "--phase", str(phase), "--model", str(model), "--out", str(out)]
        assert main([*argv, "--device", "cpu", "--largest-component"]) == 0
        capsys.readouterr()
        assert main(["measure", str(out), "--json"]) == 0
        (lv,) = json.loads(capsys.readouterr().out)["classes"]
        assert lv["size_unit"] == "ml"
        assert lv["size"] == pytest.approx(truth[phase]["volume_ml"], rel=0.1), (phase, lv["size"])


def test_cli_info_and_convert_read_one_phase_of_a_cine_folder(data_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from seg_studio.cli import main

    folder = str(data_dir / "sunnybrook_cardiac_mri" / "dicom" / "SCD0000201")
    assert main(["info", folder]) == 2
    assert "--phase N" in capsys.readouterr().err
    assert main(["info", folder, "--phase", "1"]) == 0
    assert "x 9 (x,y,z)" in capsys.readouterr().out
    assert main(["convert", folder, str(tmp_path / "phase1.nii.gz"), "--phase", "1"]) == 0
    assert io.read(tmp_path / "phase1.nii.gz").spatial_shape == (9, 256, 256)
