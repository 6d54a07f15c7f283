"""core.measure and ``seg-studio measure``: sizes, extents, components and intensities that can be counted by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seg_studio.cli import main
from seg_studio.core import io, measure
from seg_studio.core.volume import LabelInfo, Volume


def _boxes() -> tuple[Volume, Volume]:
    lab = np.zeros((10, 20, 30), np.uint8)
    lab[2:6, 5:10, 10:20] = 1  # 4 x 5 x 10 = 200 voxels
    lab[0:2, 0:2, 0:2] = 2  # 8 voxels ...
    lab[8:10, 18:20, 28:30] = 2  # ... and 8 more, apart: two pieces of equal size
    lab[7, 15, 5] = 2  # and one stray voxel
    rng = np.random.default_rng(1)
    img = rng.integers(-1000, 2000, lab.shape).astype(np.int16)
    spacing = (0.5, 0.8, 2.5)  # x, y, z mm
    labels = Volume.from_array(
        lab, spacing=spacing, labels={1: LabelInfo(1, "liver"), 2: LabelInfo(2, "cyst")}
    )
    image = Volume.from_array(img, spacing=spacing, meta={"modality": "CT"})
    return labels, image


def test_sizes_extents_components_and_ct_statistics() -> None:
    labels, image = _boxes()
    r = measure.measure(labels, image)
    liver, cyst = r.classes
    assert (liver.name, liver.voxels, liver.components, liver.largest_component_share) == (
        "liver",
        200,
        1,
        1.0,
    )
    assert liver.size == pytest.approx(200 * 0.5 * 0.8 * 2.5 / 1000) and liver.size_unit == "ml"
    assert liver.bbox_min_xyz == [10, 5, 2] and liver.bbox_max_xyz == [19, 9, 5]
    assert liver.extent_mm_xyz == pytest.approx([10 * 0.5, 5 * 0.8, 4 * 2.5])
    assert (
        cyst.voxels == 17 and cyst.components == 3 and cyst.largest_component_share == pytest.approx(8 / 17)
    )
    inside = image.array[labels.array == 1].astype(float)
    s = liver.intensity
    assert r.intensity_unit == "HU"
    assert s.mean == pytest.approx(inside.mean()) and s.sd == pytest.approx(inside.std())
    for p in measure.PERCENTILES:  # the histogram path gives np.percentile's numbers exactly
        assert s.percentiles[f"p{p}"] == pytest.approx(np.percentile(inside, p))
    assert (s.minimum, s.maximum) == (inside.min(), inside.max())


def test_float_images_and_2d_pictures_without_spacing() -> None:
    lab = np.zeros((40, 50), np.uint8)
    lab[10:20, 10:30] = 3
    picture = Volume.from_array(lab, meta={"format": "PNG"})
    img = Volume.from_array(
        np.linspace(0, 1, lab.size).reshape(lab.shape).astype(np.float32), meta={"format": "PNG"}
    )
    r = measure.measure(picture, img)
    (c,) = r.classes
    assert (c.value, c.size, c.size_unit, c.extent_mm_xyz) == (3, 200.0, "pixels", [])
    assert not r.physical and r.notes
    assert c.intensity.percentiles["p50"] == pytest.approx(np.percentile(img.array[lab == 3], 50))
    mm = measure.measure(Volume.from_array(lab, spacing=(0.2, 0.3)))
    assert mm.classes[0].size == pytest.approx(200 * 0.06) and mm.classes[0].size_unit == "mm²"


def test_a_registered_2d_measure_joins_the_class_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure, "EXTRA_2D", {})
    measure.register_2d_measure("rows_tall_mm", lambda m, sp: float(m.any(axis=1).sum() * sp[1]))
    lab = np.zeros((30, 30), np.uint8)
    lab[5:15, 2:4] = 1
    r = measure.measure(Volume.from_array(lab, spacing=(1.0, 0.5)))
    assert r.classes[0].extras == {"rows_tall_mm": 5.0}
    assert "rows_tall_mm" in measure.rows_for_csv(r)[0]


def test_cli_measure_csv_and_json(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    labels, image = _boxes()
    labels.meta["kind"] = "labels"
    lp = io.write(labels, tmp_path / "case_labels.nrrd")
    ip = io.write(image, tmp_path / "case.nrrd")
    assert main(["measure", str(lp), "--image", str(ip), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [c["voxels"] for c in d["classes"]] == [200, 17] and d["classes"][0]["name"] == "liver"
    assert main(["measure", str(lp), "--csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("value,name,voxels,size_ml") and lines[1].startswith(
        "1,liver,200,0.2,10 5 2,19 9 5,5 4 10,1,1.0"
    )
    assert main(["measure", str(lp)]) == 0
    assert "liver" in capsys.readouterr().out


def test_measure_a_dicom_seg_on_its_series(data_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from seg_studio.core.io import dicom_seg

    folder = data_dir / "tcia_brain_tumor_progression_dicom" / "images" / "PGBM-008_19930610"
    scan = io.read(folder)
    mask = io.read(data_dir / "tcia_brain_tumor_progression_dicom" / "labels" / "PGBM-008_19930610").array > 0
    labels = scan.with_array(
        mask.astype(np.uint8), labels={1: LabelInfo(1, "tumour")}, meta={"kind": "labels"}, source=None
    )
    seg = dicom_seg.write_seg(labels, folder, tmp_path / "t.dcm")
    assert main(["measure", str(seg), "--image", str(folder), "--json"]) == 0
    (c,) = json.loads(capsys.readouterr().out)["classes"]
    assert c["voxels"] == int(mask.sum()) and c["name"] == "tumour"
    assert c["size"] == pytest.approx(mask.sum() * np.prod(scan.spacing) / 1000)
    assert c["intensity"]["mean"] == pytest.approx(scan.array[mask].mean())


def test_a_2d_measure_for_named_classes_in_mm_needs_a_pixel_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure, "EXTRA_2D", {})
    measure.register_2d_measure("rows_mm", lambda m, sp: float(m.any(axis=1).sum() * sp[1]), "mm", {"Head"})
    lab = np.zeros((30, 30), np.uint8)
    lab[5:15, 2:4] = 1
    lab[20:22, 2:4] = 2
    names = {1: LabelInfo(1, "head"), 2: LabelInfo(2, "arm")}
    r = measure.measure(Volume.from_array(lab, spacing=(1.0, 0.5), labels=names))
    assert [c.extras for c in r.classes] == [{"rows_mm": 5.0}, {}]  # only the named class (any case)
    png = Volume.from_array(lab, labels=names, meta={"format": "PNG"})
    assert measure.measure(png).classes[0].extras == {}  # a length in pixels is not shown as mm
    assert measure.measure(io.set_pixel_size(png, (0.5,))).classes[0].extras == {"rows_mm": 5.0}


def test_the_head_biometry_rows_measure_a_drawn_ellipse() -> None:
    from seg_studio.core.biometry import Ellipse, ellipse_mask

    truth = Ellipse(cx=40.0, cy=30.0, a=25.0, b=18.0, angle=0.3)
    mask = ellipse_mask(truth, (120, 160), (0.5, 0.5)).astype(np.uint8)
    r = measure.measure(Volume.from_array(mask, spacing=(0.5, 0.5), labels={1: LabelInfo(1, "head")}))
    extras = r.classes[0].extras
    assert extras["HC (mm)"] == pytest.approx(truth.circumference, rel=0.01)
    assert (extras["BPD (mm)"], extras["OFD (mm)"]) == pytest.approx((36.0, 50.0), rel=0.02)
    assert "HC (mm)" in measure.format_table(r) and "HC (mm)" in measure.rows_for_csv(r)[0]


def test_a_pixel_size_is_refused_for_a_file_that_stores_one(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    labels, _ = _boxes()
    with pytest.raises(io.ImageLoadError, match="stores its own voxel size"):
        io.set_pixel_size(labels, (0.3,))
    lp = io.write(labels, tmp_path / "case_labels.nrrd")
    assert main(["measure", str(lp), "--pixel-size", "0.3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stores its own voxel size" in err[0] and "Traceback" not in err[0]


HC18_HELD_BACK = "063_2HC"  # a fetus held back from hc18_fetal_head's training (its card lists it)


def test_cli_gives_the_head_circumference_in_mm_of_an_hc18_frame(
    data_dir: Path, tmp_path: Path, capsys
) -> None:  # noqa: ANN001
    """predict with the CSV's pixel size (the PNG stores none), then measure: HC, BPD and OFD in mm, and
    the HC close to the sonographer's (CSV)."""
    from seg_studio.core.datasets import hc18

    folder = data_dir / "hc18_fetal_head_ultrasound"
    ref = hc18.read_reference(folder)[HC18_HELD_BACK]
    png = folder / "images" / f"{HC18_HELD_BACK}.png"
    model = Path(__file__).resolve().parents[2] / "resources/models/hc18_fetal_head.segmodel"
    out = tmp_path / "head.nii.gz"
    argv = ["predict", str(png), "--model", str(model), "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--pixel-size", str(ref.pixel_mm)]) == 0
    assert "warning:" not in capsys.readouterr().err  # the scan fits the model once its pixel size is known
    assert main(["measure", str(out), "--json"]) == 0
    (head,) = json.loads(capsys.readouterr().out)["classes"]
    assert head["name"] == "head" and head["size_unit"] == "mm²"
    assert abs(head["extras"]["HC (mm)"] - ref.hc_mm) < 2.5, (head["extras"], ref.hc_mm)
    assert head["extras"]["BPD (mm)"] < head["extras"]["OFD (mm)"]
    # the same frame without its pixel size: the CLI says so, and no millimetres are made up
    assert main([*argv[:-4], "--out", str(tmp_path / "head.png"), "--device", "cpu"]) == 0
    assert "stores no pixel size" in capsys.readouterr().err
    assert main(["measure", str(tmp_path / "head.png"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert not d["physical"] and all("HC (mm)" not in c["extras"] for c in d["classes"])
