"""Metrics: Dice/IoU by hand, HD95 against a brute-force surface distance, files and folders, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from seg_studio.cli import main
from seg_studio.core.errors import SegStudioError
from seg_studio.core.io import write
from seg_studio.core.metrics import dice, evaluate, evaluate_paths, hd95, iou, summarise
from seg_studio.core.volume import Volume


def test_dice_and_iou_by_hand() -> None:
    truth = np.zeros((4, 4), np.uint8)
    pred = np.zeros((4, 4), np.uint8)
    truth[0, :3] = 1  # 3 voxels
    pred[0, 1:] = 1  # 3 voxels, 2 shared
    truth[3, 3] = 2  # class 2 missed entirely
    assert dice(pred, truth) == {1: pytest.approx(4 / 6), 2: 0.0}
    assert iou(pred, truth)[1] == pytest.approx(2 / 4)
    assert math.isnan(dice(pred, truth, classes=[5])[5])  # absent from both: left out, not 1.0
    ign = truth.copy()
    ign[0, 3] = 255  # the false positive there is not counted
    assert dice(pred, ign, classes=[1], ignore=255)[1] == pytest.approx(4 / 5)


def _brute_hd95(p: np.ndarray, t: np.ndarray, spacing: tuple[float, ...]) -> float:
    def surf(m: np.ndarray) -> np.ndarray:
        return np.argwhere(m & ~ndimage.binary_erosion(m, np.ones((3,) * m.ndim, bool), border_value=0))

    a, b = surf(p) * spacing, surf(t) * spacing
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def test_hd95_in_mm_matches_brute_force_on_anisotropic_grid() -> None:
    rng = np.random.default_rng(0)
    spacing = (2.5, 0.7, 0.9)  # z,y,x
    t = ndimage.binary_dilation(rng.random((10, 14, 12)) > 0.93, iterations=2)
    p = ndimage.binary_dilation(rng.random((10, 14, 12)) > 0.93, iterations=2)
    got = hd95(p.astype(np.uint8), t.astype(np.uint8), spacing)[1]
    assert got == pytest.approx(_brute_hd95(p, t, spacing), rel=1e-6)
    one, other = np.zeros((5, 5, 5), np.uint8), np.zeros((5, 5, 5), np.uint8)
    one[1, 2, 2] = 1
    other[3, 2, 2] = 1
    assert hd95(one, other, spacing)[1] == pytest.approx(5.0)  # 2 slices of 2.5 mm
    assert math.isinf(hd95(one, np.zeros_like(one), spacing)[1])


def test_evaluate_uses_the_truth_geometry_and_refuses_other_grids() -> None:
    t = np.zeros((6, 6), np.uint8)
    t[1:4, 1:4] = 1
    truth = Volume.from_array(t, spacing=(0.5, 2.0))
    m = evaluate(truth.with_array(t.copy()), truth)
    assert m.dice[1] == 1.0 and m.hd95[1] == 0.0
    assert m.size_truth[1] == pytest.approx(9 * 0.5 * 2.0)  # 2D: an area in mm2, not "ml"
    assert (m.length_unit, m.size_unit, m.size_name) == ("mm", "mm2", "area")
    with pytest.raises(SegStudioError, match="same grid"):
        evaluate(Volume.from_array(t, spacing=(1.0, 1.0)), truth)
    with pytest.raises(SegStudioError, match="shape"):
        evaluate(Volume.from_array(t[:5]), truth)


def _folder(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    root.mkdir()
    for name, a in arrays.items():
        write(Volume.from_array(a, spacing=(1.0, 1.5, 2.0), meta={"kind": "labels"}), root / f"{name}.nii.gz")
    return root


def test_folders_and_cli_table_json_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t1 = np.zeros((4, 8, 8), np.uint8)
    t1[1:3, 2:6, 2:6] = 1
    t2 = np.zeros((4, 8, 8), np.uint8)
    t2[0:2, 0:3, 0:3] = 2
    p1 = t1.copy()
    p1[1:3, 2:6, 5] = 0
    truth = _folder(tmp_path / "truth", {"a": t1, "b": t2})
    pred = _folder(tmp_path / "pred", {"a": p1, "b": t2})
    cases = evaluate_paths(pred, truth)
    assert [c.name for c in cases] == ["a", "b"]
    assert cases[0].dice[1] == pytest.approx(2 * 24 / (24 + 32)) and cases[1].dice[2] == 1.0
    assert summarise(cases)["dice"][1] == pytest.approx(cases[0].dice[1])  # NaN of case b left out

    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cases"][0]["case"] == "a" and out["cases"][0]["dice"] == pytest.approx(cases[0].dice[1])
    assert (
        main(["evaluate", "--pred", str(pred / "a.nii.gz"), "--truth", str(truth / "a.nii.gz"), "--csv"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("case,class,name,dice") and len(lines) == 2
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 0
    assert "HD95 mm" in capsys.readouterr().out

    (pred / "b.nii.gz").unlink()
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 2
    assert "no prediction for ['b']" in capsys.readouterr().err


def test_label_map_applies_to_the_truth(data_dir: Path, tmp_path: Path) -> None:
    from seg_studio.core.io import read

    src = data_dir / "jsrt_chest_xray_heart_lungs" / "labels" / "JPCLN002.png"
    lab = read(src)
    mapped = np.zeros(lab.array.shape, np.uint8)
    for v, c in ((250, 1), (200, 2), (150, 3)):
        mapped[lab.array == v] = c
    pred = tmp_path / "JPCLN002.nii.gz"
    write(lab.with_array(mapped, meta={"kind": "labels"}), pred)
    cases = evaluate_paths(pred, src, label_map="250:1,200:2,150:3")
    assert cases[0].dice == {1: 1.0, 2: 1.0, 3: 1.0}


def test_evaluate_names_the_classes_of_a_saved_mask(data_dir: Path, tmp_path: Path, capsys) -> None:
    """The app saves a NIfTI mask with its class names beside it; evaluate shows them, not "class 1"."""
    from seg_studio.core.io import read
    from seg_studio.core.volume import LabelInfo

    truth = data_dir / "msd_task04_hippocampus" / "labels" / "hippocampus_003.nii.gz"
    t = read(truth)
    names = {0: LabelInfo(0, "background", (0, 0, 0)), 1: LabelInfo(1, "anterior", (255, 0, 0))}
    names[2] = LabelInfo(2, "posterior", (0, 255, 0))
    pred = write(
        t.with_array(np.asarray(t.array), labels=names, meta={"kind": "labels"}), tmp_path / "p.nii.gz"
    )
    case = evaluate_paths(pred, truth)[0]
    assert case.class_names[1] == "anterior" and case.class_names[2] == "posterior"
    assert (case.length_unit, case.size_unit) == ("mm", "ml")
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 0
    out = capsys.readouterr().out
    assert "1 anterior" in out and "2 posterior" in out and "class 1" not in out and "HD95 mm" in out
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["cases"][0]
    assert row["name"] == "anterior" and "hd95_mm" in row and "volume_pred_ml" in row


def test_pictures_without_a_pixel_size_report_pixels(data_dir: Path, tmp_path: Path, capsys) -> None:
    """A PNG stores no pixel size: its HD95 and areas are in pixels, never "mm" and "ml"."""
    from seg_studio.core.io import read

    src = data_dir / "jsrt_chest_xray_heart_lungs" / "labels" / "JPCLN002.png"
    lab = read(src)
    pred = tmp_path / "JPCLN002.png"
    write(lab.with_array(np.asarray(lab.array), meta={"kind": "labels"}), pred)
    case = evaluate_paths(pred, src)[0]
    assert not case.physical and (case.length_unit, case.size_unit) == ("px", "px")
    values = [v for v in case.dice]
    assert case.size_truth[values[0]] == float((np.asarray(lab.array) == values[0]).sum())  # a pixel count
    assert main(["evaluate", "--pred", str(pred), "--truth", str(src)]) == 0
    out = capsys.readouterr().out
    assert "HD95 px" in out and "area px" in out and " mm" not in out and " ml" not in out
    assert main(["evaluate", "--pred", str(pred), "--truth", str(src), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert "hd95_px" in got["cases"][0] and "area_pred_px" in got["cases"][0] and "hd95_px" in got["mean"]
    assert not any("mm" in k or "ml" in k for k in got["cases"][0])
