"""Labels are untrusted too: their grid (spacing, origin, direction), their values and their content
are checked where training, fine-tuning and scoring start; DICOM slices that do not belong together
are refused with what differs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from badinput import Bad, labels_like, run_case, scan, tiny_model

from seg_studio.core.volume import Volume

SHAPE3 = (16, 24, 24)
FLIP_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _disc(img: Path) -> np.ndarray:
    from seg_studio.core import io

    return (io.read(img).array > 2).astype(np.int64)


def _pair(
    tmp: Path, values: Callable[[np.ndarray], np.ndarray] | None = None, **geometry: Any
) -> tuple[Path, Path]:
    """images/case.nii.gz and labels/case.nii.gz; ``geometry`` changes the labels' grid."""
    (tmp / "images").mkdir(exist_ok=True)
    (tmp / "labels").mkdir(exist_ok=True)
    img = scan(tmp / "images" / "case.nii.gz", SHAPE3, spacing=(1.0, 1.0, 1.0))
    v = _disc(img)
    labels_like(tmp / "labels" / "case.nii.gz", img, values(v) if values else v, **geometry)
    return tmp / "images", tmp / "labels"


def finetune_case(case_id: str, given: str, expect: str, values: Any = None, extra: tuple[str, ...] = (), rc: int = 2,
                  **geometry: Any) -> Bad:  # fmt: skip
    def make(tmp: Path) -> list[str]:
        images, labels = _pair(tmp, values, **geometry)
        parent = tiny_model(tmp / "parent.segmodel", dims=3)
        return ["finetune", "--model", str(parent), "--images", str(images), "--labels", str(labels),
                "--out", str(tmp / "child.segmodel"), "--steps", "1", "--budget", "30", "-q", "--device", "cpu",
                *extra]  # fmt: skip

    def after(tmp: Path, out: str, err: str) -> None:
        assert (tmp / "child.segmodel").exists() == (rc == 0)

    return Bad(case_id, "labels (finetune)", given, make, expect, rc, after)


def train_case(case_id: str, given: str, expect: str, values: Any = None, **geometry: Any) -> Bad:
    def make(tmp: Path) -> list[str]:
        images, labels = _pair(tmp, values, **geometry)
        return ["train", "--images", str(images), "--labels", str(labels), "--out", str(tmp / "run"),
                "--steps", "1", "-q", "--device", "cpu"]  # fmt: skip

    return Bad(case_id, "labels (train)", given, make, expect)


def evaluate_case(case_id: str, given: str, expect: str, values: Any = None, **geometry: Any) -> Bad:
    def make(tmp: Path) -> list[str]:
        img = scan(tmp / "scan.nii.gz", SHAPE3, spacing=(1.0, 1.0, 1.0))
        pred = labels_like(tmp / "pred.nii.gz", img)
        truth = labels_like(tmp / "truth.nii.gz", img, values(_disc(img)) if values else None, **geometry)
        return ["evaluate", "--pred", str(pred), "--truth", str(truth)]

    return Bad(case_id, "labels (evaluate)", given, make, expect)


def _rgb_labels(tmp: Path) -> list[str]:
    from seg_studio.core import io

    (tmp / "images").mkdir()
    (tmp / "labels").mkdir()
    scan(tmp / "images" / "case.nii.gz", (40, 48))
    rgb = np.zeros((3, 40, 48), np.uint8)
    io.write(Volume.from_array(rgb, channels=3), tmp / "labels" / "case.png")
    parent = tiny_model(tmp / "parent.segmodel", dims=2)
    return ["finetune", "--model", str(parent), "--images", str(tmp / "images"), "--labels", str(tmp / "labels"),
            "--out", str(tmp / "child.segmodel"), "--steps", "1", "-q"]  # fmt: skip


def _escaped_labels_json(tmp: Path) -> list[str]:
    import json

    (tmp / "labels").mkdir()
    img = scan(tmp / "scan.nii.gz", SHAPE3, spacing=(1.0, 1.0, 1.0))
    labels_like(tmp / "labels" / "mask.nii.gz", img)
    (tmp / "labels" / "labels.json").write_text(json.dumps({"1": "\x1b[2Jliver"}))
    return ["info", str(tmp / "labels" / "mask.nii.gz")]


def _val_other_grid(tmp: Path) -> list[str]:
    (tmp / "train").mkdir()
    (tmp / "val").mkdir()
    images, labels = _pair(tmp / "train")
    vimages, vlabels = _pair(tmp / "val", origin=(0.0, 0.0, 30.0))
    parent = tiny_model(tmp / "parent.segmodel", dims=3)
    return ["finetune", "--model", str(parent), "--images", str(images), "--labels", str(labels),
            "--val-images", str(vimages), "--val-labels", str(vlabels), "--out", str(tmp / "child.segmodel"),
            "--steps", "1", "-q", "--device", "cpu"]  # fmt: skip


# fmt: off
CASES: list[Bad] = [
    finetune_case("lb-ft-spacing", "finetune labels at 2 mm for a 1 mm image (trained before)", r"spacing 2 x 2 x 2 vs 1 x 1 x 1 mm.*resample the labels", spacing=(2.0, 2.0, 2.0)),
    finetune_case("lb-ft-origin", "finetune labels shifted 50 mm (trained before)", r"origin .*\(50 mm apart\)", origin=(0.0, 30.0, 40.0)),
    finetune_case("lb-ft-direction", "finetune labels with the x axis flipped", r"direction .*cosines differ", direction=FLIP_X),
    finetune_case("lb-ft-size", "finetune labels of another size", r"size", values=lambda v: v[:, :20]),
    finetune_case("lb-ft-negative", "finetune label value -3 (a crash at predict time before)", r"label value\(s\) \[-3\] are negative", values=lambda v: np.where(v > 0, -3, 0)),
    finetune_case("lb-ft-fractional", "finetune labels with the value 0.5", r"fractional values", values=lambda v: v * 0.5),
    finetune_case("lb-ft-huge", "finetune label value 2**40", r"label value 1099511627776 is too large", values=lambda v: v * 2**40),
    finetune_case("lb-ft-all-zero", "finetune labels that are all background (a 'Dice 0 -> 0' model before)", r"hold only background", values=lambda v: v * 0),
    finetune_case("lb-ft-all-ignore", "finetune labels that are all ignore", r"ignore", values=lambda v: v * 0 + 7, extra=("--ignore-value", "7")),
    finetune_case("lb-ft-mapped-ok", "finetune label -3 mapped with --label-map -3:1", r"wrote", values=lambda v: np.where(v > 0, -3, 0), extra=("--label-map=-3:1",), rc=0),
    Bad("lb-ft-rgb", "labels (finetune)", "finetune labels that are an RGB picture", _rgb_labels, r"channels"),
    Bad("lb-ft-val-grid", "labels (finetune)", "finetune validation labels shifted 30 mm", _val_other_grid, r"origin .*30 mm apart"),
    train_case("lb-tr-spacing", "train labels at 2 mm for a 1 mm image", r"not on the same grid .*spacing", spacing=(2.0, 2.0, 2.0)),
    train_case("lb-tr-origin", "train labels shifted 70 mm", r"70 mm apart", origin=(0.0, 0.0, 70.0)),
    train_case("lb-tr-all-zero", "train labels that are all background", r"hold only background", values=lambda v: v * 0),
    train_case("lb-tr-negative", "train label value -3", r"are negative", values=lambda v: np.where(v > 0, -3, 0)),
    train_case("lb-tr-huge", "train label value 70000 (a loop over every value before)", r"70000 is too large", values=lambda v: v * 70000),
    evaluate_case("lb-ev-origin", "evaluate a truth shifted 50 mm (scored before)", r"origin .*50 mm apart", origin=(0.0, 30.0, 40.0)),
    evaluate_case("lb-ev-direction", "evaluate a truth with another direction (scored before)", r"direction", direction=FLIP_X),
    evaluate_case("lb-ev-spacing", "evaluate a truth at 2 mm", r"spacing", spacing=(2.0, 2.0, 2.0)),
    evaluate_case("lb-ev-fractional", "evaluate a truth with fractional values", r"whole numbers", values=lambda v: v * 0.5),
    evaluate_case("lb-ev-size", "evaluate a truth of another size", r"shape", values=lambda v: v[:8]),
    Bad("lb-names-escapes", "labels (names)", "a labels.json whose class name clears the screen", _escaped_labels_json, r"\\x1b\[2Jliver", rc=0),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_labels(case: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_case(case, tmp_path, capsys)


# --- the one comparison, its tolerances ----------------------------------------------------------------


def test_grid_difference_tolerates_float32_geometry_and_names_every_difference() -> None:
    base = Volume.from_array(np.zeros(SHAPE3), spacing=(0.7, 0.7, 2.5), origin=(-100.25, 30.5, 12.0))
    same = Volume.from_array(
        np.zeros(SHAPE3),
        spacing=tuple(float(np.float32(s)) for s in base.spacing),
        origin=tuple(float(np.float32(o)) + 1e-4 for o in base.origin),
    )
    assert same.grid_difference(base) is None  # what NIfTI's float32 header does to a grid
    moved = Volume.from_array(np.zeros(SHAPE3), spacing=(0.7, 0.7, 2.5), origin=(-100.25, 30.5, 12.2))
    assert "0.2 mm apart" in (moved.grid_difference(base) or "")  # 0.29 of a 0.7 mm voxel
    bad = Volume.from_array(np.zeros((16, 24, 25)), spacing=(1.4, 0.7, 2.5), direction=FLIP_X)
    text = bad.grid_difference(base) or ""
    for word in (
        "size 25x24x16 vs 24x24x16",
        "spacing 1.4 x 0.7 x 2.5 vs 0.7 x 0.7 x 2.5",
        "up to 2 times",
        "origin",
        "direction",
    ):
        assert word in text, text


# --- DICOM series whose slices disagree ----------------------------------------------------------------


def _series(tmp: Path, data_dir: Path, change: Callable[[list[Any]], None]) -> Path:
    pydicom = pytest.importorskip("pydicom")
    src = data_dir / "tcia_brain_tumor_progression_dicom" / "images" / "PGBM-003_19950329"
    dst = tmp / "series"
    shutil.copytree(src, dst)
    files = sorted(dst.glob("*.dcm"))
    ds = [pydicom.dcmread(f) for f in files]
    change(ds)
    for d, f in zip(ds, files, strict=True):
        d.save_as(f)
    return dst


def _spacing(ds: list[Any]) -> None:
    ds[7].PixelSpacing = [0.9, 0.9]


def _no_position(ds: list[Any]) -> None:
    for d in ds:
        del d.ImagePositionPatient


def _small_slice(ds: list[Any]) -> None:
    d = ds[5]
    d.Rows, d.Columns = 200, 200
    d.PixelData = np.zeros((200, 200), np.int16).tobytes()


def _escape_description(ds: list[Any]) -> None:
    for d in ds:
        d.SeriesDescription = "\x1b]0;pwned\x07\x1b[2JT1post"


def dicom_case(case_id: str, given: str, change: Callable[[list[Any]], None], expect: str, rc: int = 2,
               extra: tuple[str, ...] = ()) -> Bad:  # fmt: skip
    def make(tmp: Path) -> list[str]:
        return ["info", str(_series(tmp, _DATA[0], change)), *extra]

    return Bad(case_id, "DICOM series", given, make, expect, rc)


_DATA: list[Path] = []

# fmt: off
DICOM_CASES = [
    dicom_case("dc-pixel-spacing", "one slice at 0.9 mm among 0.6875 mm (kept at 0.6875 before)", _spacing, r"slice .* pixel spacing of 0.9 x 0.9 mm where the others have 0.6875"),
    dicom_case("dc-no-position", "a series without ImagePositionPatient (1 mm gap and origin 0 invented before)", _no_position, r"22 of its 22 slices have no ImagePositionPatient"),
    dicom_case("dc-no-position-allowed", "the same with --allow-nonuniform: read, and said so", _no_position, r'"invented_geometry": true', rc=0, extra=("--allow-nonuniform", "--json")),
    dicom_case("dc-description-escapes", "a series description that retitles and clears the terminal", _escape_description, r"\\x1b\]0;pwned", rc=0),
    dicom_case("dc-slice-size", "one 200x200 slice among 280x320 ('Size: [200, 200, 1]' before)", _small_slice, r"is 200x200 pixels where 21 other slice\(s\) are 280x320"),
]
# fmt: on


@pytest.mark.parametrize("case", DICOM_CASES, ids=[c.id for c in DICOM_CASES])
def test_bad_dicom_series(
    case: Bad, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _DATA[:] = [data_dir]
    run_case(case, tmp_path, capsys)


def test_real_pairs_still_match(data_dir: Path) -> None:
    """The shipped data sets' images and labels are on the same grids (no false refusals)."""
    from seg_studio.core.training import pairs_from_folders
    from seg_studio.core.training.data import read_pair

    for ds in ("msd_task04_hippocampus", "isbi2012_em_membrane", "drive_retina_vessels", "jsrt_chest_xray_heart_lungs",
               "tcia_brain_tumor_progression_dicom"):  # fmt: skip
        for src in pairs_from_folders(data_dir / ds / "images", data_dir / ds / "labels")[:3]:
            read_pair(src)
