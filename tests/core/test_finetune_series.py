"""A series of corrected scans (issue 17): each fine-tune also learns from the series' earlier pairs,
kept beside the model by image hash; the held-back set grows with the series and never moves; the
lineage is the chain of checkpoints back to the start. Real JSRT X-rays, a real width-8 U-Net."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seg_studio.cli import main
from seg_studio.core import checkpoint
from seg_studio.core.io import read
from seg_studio.core.models import create_model
from seg_studio.core.progress import run_to_end
from seg_studio.core.training import iter_finetune
from seg_studio.core.training.data import image_hash
from seg_studio.core.training.lineage import lineage
from seg_studio.core.training.replay import ReplayStore

JSRT_MAP = "250:1,200:2,150:3"
SERIES = ["JPCLN002", "JPCNN001", "JPCLN008", "JPCLN009"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair(data_dir: Path, name: str) -> tuple[Path, Path]:
    d = data_dir / "jsrt_chest_xray_heart_lungs"
    return d / "images" / f"{name}.png", d / "labels" / f"{name}.png"


def test_a_series_replays_earlier_pairs_grows_its_held_back_set_and_forms_a_lineage(
    data_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = create_model("unet", 2, 1, 4, features=8)
    meta = checkpoint.new_meta(model, "unet", {"features": 8}, classes=["background", "heart", "left lung", "right lung"],
                               patch_size=(224, 224), card={"untrained": True})  # fmt: skip
    parent = checkpoint.save(tmp_path / "start.segmodel", model, meta)
    results = []
    for i, name in enumerate(SERIES[:3]):
        out = tmp_path / f"scan{i + 1}.segmodel"
        results.append(
            run_to_end(
                iter_finetune(
                    parent,
                    [_pair(data_dir, name)],
                    out,
                    budget_s=600,
                    steps=2,
                    label_map=JSRT_MAP,
                    replay=True,
                )
            )  # fmt: skip
        )
        parent = out
    first, second, third = results
    folder = tmp_path / "scan1.replay"  # beside the first child; the later ones follow their parent's record
    for r in results:
        assert checkpoint.read_meta(r.path).provenance["replay"]["folder"] == str(folder)
    assert first.replayed == [] and second.replayed == ["JPCLN002"]
    assert third.replayed == ["JPCLN002", "JPCNN001"]
    store = ReplayStore(folder).entries()
    assert sorted(e.name for e in store.values()) == sorted(SERIES[:3])
    # the stored image is the scan itself: the same hash, so the split keeps recognising it
    assert image_hash(read(_pair(data_dir, "JPCLN002")[0]).array) in store
    # scans 1 and 2 trained (and were scored) on themselves; scan 3 is the first the series can hold back
    assert first.dice_on == second.dice_on == "training pairs"
    assert third.dice_on == "validation" and third.val_cases == ["JPCLN008"]
    assert sorted(third.train_cases) == ["JPCLN002", "JPCNN001"]
    held_back = checkpoint.read_meta(third.path).provenance["split"]["val"]

    # a fourth scan joins the training side: the held-back scan never moves, nothing is reshuffled
    fourth = run_to_end(
        iter_finetune(third.path, [_pair(data_dir, SERIES[3])], tmp_path / "scan4.segmodel", budget_s=600, steps=2,
                      label_map=JSRT_MAP, replay=True)
    )  # fmt: skip
    assert fourth.val_cases == ["JPCLN008"] and "JPCLN009" in fourth.train_cases
    assert checkpoint.read_meta(fourth.path).provenance["split"]["val"] == held_back

    chain = lineage(fourth.path)
    assert [v.path.name for v in chain] == ["scan4.segmodel", "scan3.segmodel", "scan2.segmodel", "scan1.segmodel",
                                            "start.segmodel"]  # fmt: skip
    assert [v.kind for v in chain[:4]] == ["finetune"] * 4 and chain[-1].kind == ""
    assert chain[0].dice_on == "validation" and "Dice" in chain[0].label()


def test_cli_finetune_replay_keeps_the_pairs_in_the_folder_named(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = create_model("unet", 2, 1, 4, features=8)
    meta = checkpoint.new_meta(
        model, "unet", {"features": 8}, patch_size=(224, 224), card={"untrained": True}
    )
    parent = checkpoint.save(tmp_path / "start.segmodel", model, meta)
    series = tmp_path / "series"
    for i, name in enumerate(SERIES[:2]):
        img, lab = _pair(data_dir, name)
        rc = main(["finetune", "--model", str(parent), "--images", str(img), "--labels", str(lab), "--out",
                   str(tmp_path / f"c{i}.segmodel"), "--label-map", JSRT_MAP, "--steps", "1", "--budget", "600",
                   "--replay", str(series), "--json", "-q"])  # fmt: skip
        assert rc == 0
        res = json.loads(capsys.readouterr().out)
        assert res["replayed"] == ([] if i == 0 else ["JPCLN002"])
        parent = tmp_path / f"c{i}.segmodel"
    assert len(ReplayStore(series).entries()) == 2
