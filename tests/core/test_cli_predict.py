"""``seg-studio predict`` on every shared data set, folders with a bad file, and two torchrun processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_studio.cli import main
from seg_studio.core import checkpoint as ckpt
from seg_studio.core import io
from seg_studio.core.models import create_model
from seg_studio.core.volume import Volume

REPO = Path(__file__).resolve().parents[2]


def _ckpt(folder: Path, name: str, dims: int, cin: int = 1, classes=("background", "fg"), **meta) -> Path:
    torch.manual_seed(0)
    arch = meta.pop("arch", "unet")
    model = create_model(
        arch, spatial_dims=dims, in_channels=cin, out_channels=len(classes), features=4, depth=2
    )
    with torch.no_grad():  # a visible, deterministic decision: class 1 where the (normalised) input is high
        model.head.bias.copy_(torch.linspace(0.0, -0.2, len(classes)))
    m = ckpt.new_meta(model, arch, {"features": 4, "depth": 2}, classes=list(classes), **meta)
    return ckpt.save(folder / f"{name}.segmodel", model, m)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "2d": _ckpt(
            d, "2d", 2, patch_size=(512, 512), normalization={"mode": "percentile", "low": 1, "high": 99}
        ),
        "2d_rgb": _ckpt(d, "2d_rgb", 2, cin=3, patch_size=(512, 512)),
        "3d": _ckpt(d, "3d", 3, classes=("background", "anterior", "posterior"), patch_size=(32, 32, 32)),
        "3d_ct": _ckpt(
            d,
            "3d_ct",
            3,
            patch_size=(32, 64, 64),
            spacing=(3.0, 3.0, 3.0),
            normalization={"mode": "ct_window", "low": -160, "high": 240},
        ),  # fmt: skip
        "3d_att": _ckpt(d, "3d_att", 3, arch="attention_unet", patch_size=(32, 32, 32)),
    }


CASES = [
    ("isbi2012_em_membrane/images/1.png", "2d"),
    ("drive_retina_vessels/images/22_training.tif", "2d_rgb"),
    ("jsrt_chest_xray_heart_lungs/images/JPCLN002.png", "2d"),
    ("msd_task04_hippocampus/images/hippocampus_003.nii.gz", "3d"),
    ("tcia_brain_tumor_progression_dicom/images/PGBM-003_19950329", "2d"),  # DICOM folder, slice by slice
    ("totalsegmentator_ct_examples/images/example_ct_sm.nii.gz", "3d_ct"),
    ("totalsegmentator_ct_examples/dicom/example_ct_dicom", "3d_ct"),  # resampled to 3 mm and back
]


@pytest.mark.parametrize(("rel", "model"), CASES, ids=[c[0].split("/")[0] for c in CASES])
def test_predict_each_shared_data_set(
    rel: str,
    model: str,
    models: dict[str, Path],
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scan = data_dir / rel
    is_2d_file = scan.suffix in (".png", ".tif")
    out = tmp_path / ("mask.png" if is_2d_file else "mask.nii.gz")
    assert (
        main(["predict", str(scan), "--model", str(models[model]), "--out", str(out), "--overlap", "0.25"])
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    src, mask = io.read(scan), io.read(out)
    # aligned: same grid in physical space, so napari and Slicer overlay it on the scan
    assert mask.spatial_shape == src.spatial_shape
    assert mask.same_geometry(io.read(scan).with_array(np.zeros(src.spatial_shape, np.uint8)), atol=1e-4)
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) <= {0, 1, 2}
    assert not list(tmp_path.glob(".*tmp*"))


def test_predict_writes_probabilities_attention_uncertainty(
    models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    scan = data_dir / "msd_task04_hippocampus/images/hippocampus_014.nii.gz"
    rc = main(
        [
            "predict", str(scan), "--model", str(models["3d_att"]), "--out", str(tmp_path / "m.nii.gz"),
            "--save-probabilities", str(tmp_path / "p.nii.gz"), "--save-attention", str(tmp_path / "a.nii.gz"),
            "--save-uncertainty", str(tmp_path / "u.nii.gz"), "--largest-component",
            "--probabilities-dtype", "float32",
        ]
    )  # fmt: skip
    assert rc == 0
    src = io.read(scan)
    probs = io.read(tmp_path / "p.nii.gz")
    assert probs.channels == 2 and np.allclose(probs.array.sum(0), 1, atol=1e-4)
    # the default: uint8, 255 = probability 1, the same maps to within half a step (same run as above)
    args = ["predict", str(scan), "--model", str(models["3d_att"]), "--out", str(tmp_path / "m8.nii.gz")]
    extras = [
        "--save-attention",
        str(tmp_path / "a8.nii.gz"),
        "--save-uncertainty",
        str(tmp_path / "u8.nii.gz"),
    ]
    assert (
        main([*args, *extras, "--largest-component", "--save-probabilities", str(tmp_path / "p8.nii.gz")])
        == 0
    )
    p8 = io.read(tmp_path / "p8.nii.gz")
    assert p8.array.dtype == np.uint8 and p8.channels == 2
    assert np.abs(p8.array / 255.0 - probs.array).max() <= 0.5 / 255 + 1e-6
    for name in ("u.nii.gz", "a_gate0.nii.gz", "a_gate1.nii.gz"):
        v = io.read(tmp_path / name)
        assert v.spatial_shape == src.spatial_shape and np.allclose(v.spacing, src.spacing)
        assert np.allclose(v.origin, src.origin) and v.array.dtype == np.float32


def test_refuses_to_overwrite_the_scan(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    img = tmp_path / "scan.nii.gz"
    io.write(Volume.from_array(np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)), img)
    before = img.read_bytes()
    assert main(["predict", str(img), "--model", str(models["3d"]), "--out", str(img)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and img.read_bytes() == before


def _tiny_scans(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.normal(size=(6, 20 + i, 18)).astype(np.float32)
        arr[2:4, 5:12, 4:10] += 3
        paths.append(
            io.write(
                Volume.from_array(arr, spacing=(1.0, 1.2, 2.0), origin=(i, 0, 0)), folder / f"s{i}.nii.gz"
            )
        )
    return paths


def test_folder_with_a_bad_file_skips_it(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    scans = _tiny_scans(tmp_path / "in", 2)
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    (tmp_path / "in" / "notes.txt").write_text("not a scan, not listed")
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "in"), "--model", str(models["3d"]), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "skipped broken.nii.gz" in captured.out and "2 of 3 scans done" in captured.out
    # each mask with its class names beside it (NIfTI has no room for them)
    assert sorted(p.name for p in out.iterdir()) == [
        "s0.labels.json",
        "s0.nii.gz",
        "s1.labels.json",
        "s1.nii.gz",
    ]
    assert "windows" in captured.err  # plain progress lines, not a bar: stderr is not a terminal here
    for s in scans:
        assert io.read(out / s.name).same_geometry(io.read(s))


def test_torchrun_two_processes_shard_the_folder(models: dict[str, Path], tmp_path: Path) -> None:
    scans = _tiny_scans(tmp_path / "in", 4)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "seg_studio", "predict", str(tmp_path / "in"), "--model", str(models["3d"]), "--out", str(out),
        "--device", "cpu",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    wrote = [line.split("wrote ", 1)[1] for line in res.stdout.splitlines() if line.startswith("wrote ")]
    assert sorted(Path(w).name for w in wrote) == [f"s{i}.nii.gz" for i in range(4)]  # each exactly once
    assert "4 of 4 scans done" in res.stdout and "(2 processes)" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"s{i}.nii.gz" for i in range(4)] + [f"s{i}.labels.json" for i in range(4)]
    )
    # correct: the same masks as a single process
    single = tmp_path / "single"
    assert main(["predict", str(tmp_path / "in"), "--model", str(models["3d"]), "--out", str(single)]) == 0
    for s in scans:
        np.testing.assert_array_equal(io.read(out / s.name).array, io.read(single / s.name).array)
