"""Where to correct first: ranking slices/regions by uncertainty, on synthetic maps and on real scans."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from seg_studio.cli import main
from seg_studio.core import checkpoint as ckpt
from seg_studio.core import io
from seg_studio.core.review import entropy_map, rank_regions, review_order, uncertainty_map
from seg_studio.core.volume import Volume

REPO = Path(__file__).resolve().parents[2]
HIPPO_MODEL = REPO / "seg_studio" / "resources" / "models" / "hippocampus_unet.segmodel"


def _probs(shape: tuple[int, ...], k: int = 3) -> np.ndarray:
    """Certain everywhere: class 0 with p = 1."""
    p = np.zeros((k, *shape), np.float32)
    p[0] = 1.0
    return p


def test_the_uniform_slice_ranks_first_and_certain_slices_score_zero() -> None:
    p = _probs((6, 8, 8))
    p[:, 4] = 1.0 / 3.0  # every class equally likely on slice 4: entropy 1 per voxel
    p[:, 1, :2] = [[[0.5]], [[0.5]], [[0.0]]]  # two unsure rows on slice 1
    items = review_order(Volume.from_array(p, channels=3))
    assert [it.index for it in items[:2]] == [4, 1]
    assert items[0].kind == "slice" and items[0].rank == 1
    assert items[0].score == pytest.approx(64.0, rel=1e-4) and items[0].mean == pytest.approx(1.0, rel=1e-4)
    assert items[0].bounds == [[4, 5], [0, 8], [0, 8]]
    assert all(it.score == pytest.approx(0.0, abs=1e-3) for it in items[2:])


def test_a_2d_scan_ranks_grid_regions_with_their_bounds() -> None:
    p = _probs((40, 60), k=2)
    p[:, 30:40, 45:60] = 0.5  # bottom-right tile of the 4 x 4 grid
    items = review_order(Volume.from_array(p, channels=2))
    assert len(items) == 16 and items[0].kind == "region"
    assert items[0].bounds == [[30, 40], [45, 60]] and items[0].index == 15
    assert items[0].mean == pytest.approx(1.0, rel=1e-4)
    assert len(rank_regions(np.zeros((3, 3), np.float32), grid=4)) == 9  # never an empty tile


def test_uint8_probabilities_and_a_single_sigmoid_channel() -> None:
    p = np.random.default_rng(0).dirichlet([1, 1, 1], size=(5, 7)).transpose(2, 0, 1).astype(np.float32)
    q = np.round(p * 255).astype(np.uint8)
    assert np.allclose(entropy_map(q, 1 / 255), entropy_map(p), atol=0.02)
    sig = np.full((1, 4, 4), 0.5, np.float32)
    assert np.allclose(entropy_map(sig), 1.0, atol=1e-4)  # p = 0.5 of a sigmoid: fully unsure


def test_the_tta_spread_counts_where_it_is_larger() -> None:
    p = _probs((4, 4), k=2)
    spread = np.zeros((4, 4), np.float32)
    spread[0, 0] = 0.25  # flips disagree there although the mean is certain
    u = uncertainty_map(Volume.from_array(p, channels=2), Volume.from_array(spread))
    assert u[0, 0] == pytest.approx(0.5) and u[1, 1] == pytest.approx(0.0, abs=1e-4)


def test_on_real_hippocampus_scans_the_top_slices_hold_more_errors_than_the_bottom(data_dir: Path) -> None:
    """The shipped hippocampus model: across 4 scans, the 5 slices ranked first hold more wrong voxels
    than the 5 ranked last (the order points the clinician at the errors)."""
    from seg_studio.core.inference import PredictOptions, predict

    model, meta = ckpt.load(HIPPO_MODEL, device="cpu")
    top = bottom = 0
    for case in ("hippocampus_003", "hippocampus_014", "hippocampus_015", "hippocampus_020"):
        folder = data_dir / "msd_task04_hippocampus"
        scan = io.read(folder / "images" / f"{case}.nii.gz")
        truth = np.asarray(io.read(folder / "labels" / f"{case}.nii.gz").array)
        pred = predict(scan, model, meta, PredictOptions(device="cpu", probabilities=True, backend="torch"))
        items = review_order(pred.probabilities)
        assert len(items) == scan.spatial_shape[0]
        wrong = (np.asarray(pred.labels.array) != truth).sum(axis=(1, 2))
        top += int(sum(wrong[it.index] for it in items[:5]))
        bottom += int(sum(wrong[it.index] for it in items[-5:]))
    assert top > 3 * max(bottom, 1), (top, bottom)


def test_cli_writes_csv_and_json_and_refuses_other_suffixes(data_dir: Path, tmp_path: Path, capsys) -> None:
    scan = data_dir / "msd_task04_hippocampus" / "images" / "hippocampus_003.nii.gz"
    base = ["predict", str(scan), "--model", str(HIPPO_MODEL), "--backend", "torch"]
    assert main([*base, "--out", str(tmp_path / "m.nii.gz"), "--review-order", str(tmp_path / "r.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == io.read(scan).spatial_shape[0]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert (
        main([*base, "--out", str(tmp_path / "m2.nii.gz"), "--review-order", str(tmp_path / "r.json")]) == 0
    )
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["unit"] == "slice" and record["items"][0]["index"] == int(rows[0]["index"])
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "m3.nii.gz"), "--review-order", str(tmp_path / "r.txt")]) == 2
    err = capsys.readouterr().err
    assert ".json or .csv" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m3.nii.gz").exists()  # refused before any work


def test_a_model_unsure_everywhere_ranks_its_most_unsure_spot_not_its_largest_region() -> None:
    """Early in a series a model is a little unsure everywhere: the ranking counts what is above the
    scan's median, so a small very unsure spot beats a large tile of the usual doubt."""
    p = np.full((2, 40, 40), 0.5, np.float32)
    p[0], p[1] = 0.8, 0.2  # entropy ~0.72 everywhere
    p[:, 2:6, 32:36] = 0.5  # a small spot of full doubt in tile 3
    items = review_order(Volume.from_array(p, channels=2))
    assert items[0].index == 3 and items[-1].score == pytest.approx(0.0, abs=1e-4)


def test_cli_on_a_folder_writes_one_review_per_scan(data_dir: Path, tmp_path: Path) -> None:
    import shutil

    scans = tmp_path / "scans"
    scans.mkdir()
    for case in ("hippocampus_003", "hippocampus_014"):
        shutil.copy(data_dir / "msd_task04_hippocampus" / "images" / f"{case}.nii.gz", scans)
    args = [
        "predict",
        str(scans),
        "--model",
        str(HIPPO_MODEL),
        "--backend",
        "torch",
        "--out",
        str(tmp_path / "m"),
    ]
    assert main([*args, "--review-order", str(tmp_path / "review")]) == 0
    written = sorted(p.name for p in (tmp_path / "review").iterdir())
    assert written == ["hippocampus_003_review.json", "hippocampus_014_review.json"]
    for name in written:
        record = json.loads((tmp_path / "review" / name).read_text())
        assert record["unit"] == "slice" and record["source"].endswith(
            name.replace("_review.json", ".nii.gz")
        )
