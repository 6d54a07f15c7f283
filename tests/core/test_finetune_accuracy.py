"""The one-click fine-tune learns, not just runs: from an untrained U-Net (as the app builds one) and two
corrected JSRT chest X-rays, it must segment ten other X-rays' lungs well. Step-matched (160 steps, what
this 2-core CPU does in the 50 s default budget at width 8), so a slower CI machine checks the same thing.
Measured with benchmarks/training.py --only jsrt --features 8 --steps 160 --seed N: lungs 0.963/0.963/0.957
for seeds 0/1/2 with the fine-tune defaults (0.949/0.958/0.945 with the training augmentation; 0.911 at
lr 1e-3), so a broken loop, or a much weaker learning-rate or augmentation default, fails here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seg_studio.core import checkpoint
from seg_studio.core.inference import PredictOptions, predict
from seg_studio.core.io import read
from seg_studio.core.metrics import dice
from seg_studio.core.models import create_model
from seg_studio.core.progress import run_to_end
from seg_studio.core.training import iter_finetune
from seg_studio.core.training.data import apply_label_map, parse_label_map

LABEL_MAP = "250:1,200:2,150:3"  # JSRT: heart, left lung, right lung
TRAIN = ["JPCLN002", "JPCNN001"]
TEST = ["JPCLN008", "JPCLN009", "JPCLN023", "JPCLN040", "JPCLN041",
        "JPCNN010", "JPCNN013", "JPCNN020", "JPCNN025", "JPCNN026"]  # fmt: skip


@pytest.mark.slow  # 160 training steps: the locked CI run has it; the plain-env runs skip it
def test_one_click_finetune_from_scratch_on_two_xrays_segments_the_lungs_of_ten_others(
    data_dir: Path, tmp_path: Path
) -> None:
    jsrt = data_dir / "jsrt_chest_xray_heart_lungs"
    model = create_model("unet", 2, 1, 4, features=8)
    meta = checkpoint.new_meta(
        model, "unet", {"features": 8}, classes=["background", "heart", "left lung", "right lung"],
        patch_size=(224, 224), card={"title": "untrained unet", "untrained": True},
    )  # fmt: skip
    parent = checkpoint.save(tmp_path / "untrained.segmodel", model, meta)
    pairs = [(jsrt / "images" / f"{n}.png", jsrt / "labels" / f"{n}.png") for n in TRAIN]
    res = run_to_end(
        iter_finetune(
            parent, pairs, tmp_path / "child.segmodel", budget_s=1e6, steps=160, label_map=LABEL_MAP
        )
    )
    assert res.steps == 160
    lungs = lungs_of_ten_others(jsrt, res.path)
    assert float(np.mean(lungs)) >= 0.95, np.round(lungs, 3)


def lungs_of_ten_others(jsrt: Path, model_path: Path) -> list[float]:
    """The mean Dice of both lungs on each of the ten test X-rays."""
    child, cmeta = checkpoint.load(model_path)
    lmap = parse_label_map(LABEL_MAP)
    lungs = []
    for name in TEST:
        truth = apply_label_map(read(jsrt / "labels" / f"{name}.png").array, lmap, None)
        labels = predict(
            read(jsrt / "images" / f"{name}.png"), child, cmeta, PredictOptions(device="cpu")
        ).labels
        d = dice(np.asarray(labels.array), truth, classes=[2, 3])
        lungs.append((d[2] + d[3]) / 2)
    return lungs


@pytest.mark.slow  # 160 training steps, as above
def test_one_click_finetune_from_the_em_model_on_two_xrays_is_as_good_as_from_scratch(
    data_dir: Path, tmp_path: Path
) -> None:
    """The issue's target: from the shipped ``isbi2012_unet`` (EM membranes), two corrected X-rays with
    heart and lungs named must give lungs >= 0.95 on ten others, as from scratch. The parent knows none of
    those classes, so the fine-tune starts fresh and its card says so (before that check: lungs 0.84 in
    50 s, 0.934 step-matched)."""
    jsrt = data_dir / "jsrt_chest_xray_heart_lungs"
    parent = (
        Path(__file__).resolve().parents[2] / "seg_studio" / "resources" / "models" / "isbi2012_unet.segmodel"
    )
    pairs = [(jsrt / "images" / f"{n}.png", jsrt / "labels" / f"{n}.png") for n in TRAIN]
    res = run_to_end(
        iter_finetune(
            parent, pairs, tmp_path / "child.segmodel", budget_s=1e6, steps=160, label_map=LABEL_MAP,
            class_names={1: "heart", 2: "left lung", 3: "right lung"},
        )
    )  # fmt: skip
    assert res.steps == 160 and res.better
    assert res.start["start"] == "fresh" and "knows none of the corrected classes" in res.start["reason"]
    _, cmeta = checkpoint.load(res.path)
    assert cmeta.arch_args["features"] == 8 and cmeta.provenance["start"]["start"] == "fresh"
    assert cmeta.card["start"].startswith("trained fresh, not from its parent")
    lungs = lungs_of_ten_others(jsrt, res.path)
    assert float(np.mean(lungs)) >= 0.95, np.round(lungs, 3)
