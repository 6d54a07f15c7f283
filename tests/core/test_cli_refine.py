"""``seg-studio refine SCAN --model M --clicks clicks.json --out OUT [--labels START]``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_studio.cli import main
from seg_studio.core import checkpoint as ckpt
from seg_studio.core import io
from seg_studio.core.interactive import GuidanceSpec
from seg_studio.core.models import create_model
from seg_studio.core.volume import Volume

TINY = {"features": 4, "depth": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refine")
    torch.manual_seed(0)
    spec = GuidanceSpec(1, 2.0, "gaussian", True)
    model = create_model("unet", 3, 1, 2, guidance_channels=3, **TINY)
    meta = ckpt.new_meta(
        model,
        "unet",
        TINY,
        classes=["background", "structure"],
        patch_size=(16, 16, 16),
        channel_names=spec.channel_names(),
        interactive=spec.to_dict(),
    )
    ckpt.save(root / "clicks.segmodel", model, meta)
    auto = create_model("unet", 3, 1, 2, **TINY)
    ckpt.save(root / "auto.segmodel", auto, ckpt.new_meta(auto, "unet", TINY, patch_size=(16, 16, 16)))
    scan = Volume.from_array(np.random.default_rng(0).normal(size=(20, 24, 24)).astype(np.float32))
    io.write(scan, root / "scan.nii.gz")
    start = np.zeros((20, 24, 24), np.uint8)
    start[8:12, 10:14, 10:14] = 2
    io.write(Volume.from_array(start, meta={"kind": "labels"}), root / "start.nii.gz")
    clicks = [
        {"class": 1, "positive": True, "voxel": [10, 12, 12]},
        {"class": 1, "positive": False, "voxel": [2, 3, 4]},
    ]
    (root / "clicks.json").write_text(json.dumps(clicks))
    return {
        "root": root,
        "model": root / "clicks.segmodel",
        "auto": root / "auto.segmodel",
        "scan": root / "scan.nii.gz",
        "start": root / "start.nii.gz",
        "clicks": root / "clicks.json",
    }


def test_refine_writes_the_labels_after_every_click(setup: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "out.nii.gz"
    s = setup
    argv = [
        "refine",
        str(s["scan"]),
        "--model",
        str(s["model"]),
        "--clicks",
        str(s["clicks"]),
        "--out",
        str(out),
    ]
    assert main([*argv, "--labels", str(s["start"])]) == 0
    text = capsys.readouterr().out
    assert "click 1 (class 1 +" in text and "click 2 (class 1 -" in text and "wrote" in text
    got = io.read(out)
    assert got.spatial_shape == (20, 24, 24) and set(np.unique(got.array)) <= {0, 1, 2}


@pytest.mark.parametrize(
    "case, expect",
    [
        ("outside", "outside the scan"),
        ("class0", "not a structure"),
        ("notjson", "not a JSON list"),
        ("automatic", "automatic model"),
        ("labels", "do not fit the scan"),
        ("ext", "cannot save a mask"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    setup: dict[str, Path], tmp_path: Path, capsys, case: str, expect: str
) -> None:  # noqa: ANN001
    s = setup
    clicks, model, labels = s["clicks"], s["model"], s["start"]
    out = tmp_path / ("out.xyz" if case == "ext" else "out.nii.gz")
    bad = tmp_path / "bad.json"
    if case == "outside":
        bad.write_text(json.dumps([{"class": 1, "positive": True, "voxel": [10, 12, 24]}]))
        clicks = bad
    elif case == "class0":
        bad.write_text(json.dumps([{"class": 0, "positive": True, "voxel": [10, 12, 12]}]))
        clicks = bad
    elif case == "notjson":
        bad.write_text("[{")
        clicks = bad
    elif case == "automatic":
        model = s["auto"]
    elif case == "labels":
        labels = tmp_path / "small.nii.gz"
        io.write(Volume.from_array(np.zeros((4, 4, 4), np.uint8), meta={"kind": "labels"}), labels)
    argv = ["refine", str(s["scan"]), "--model", str(model), "--clicks", str(clicks), "--out", str(out)]
    assert main([*argv, "--labels", str(labels)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and "Traceback" not in err[0]
    assert not out.exists() and not list(tmp_path.glob("out*"))
