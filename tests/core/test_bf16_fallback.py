"""A bf16 step that goes non-finite is not applied, and training goes on in fp32 (the 3D one-click
fine-tune on a real MSD scan went to NaN within 4 steps under bf16 autocast on the CPU)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from seg_studio.core import checkpoint, io
from seg_studio.core.models import create_model
from seg_studio.core.progress import run_to_end
from seg_studio.core.training import iter_finetune
from seg_studio.core.training.loop import _backward_and_step, bf16_fallback
from seg_studio.core.training.plan import Compute, LoopState


def test_a_non_finite_step_leaves_the_weights_and_switches_to_fp32() -> None:
    model = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    parts = SimpleNamespace(optimizer=opt, scaler=None)
    loss = model(torch.tensor([[1.0, float("nan"), 0.0]])).sum()
    assert _backward_and_step(loss, parts, check=True) is False
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    plan = SimpleNamespace(compute=Compute(torch.device("cpu"), torch.bfloat16), state=LoopState())
    assert bf16_fallback(plan, parts, {"loss": float("nan")})["precision_fallback"] == "fp32"
    assert plan.compute.autocast is None
    good = model(torch.ones(1, 3)).sum()
    assert _backward_and_step(good, parts, check=True) is True
    assert not torch.equal(before[0], next(model.parameters()))  # a finite step is applied


def test_the_3d_finetune_that_went_nan_under_bf16_now_trains(data_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = create_model("unet", 3, 1, 3, features=8)
    meta = checkpoint.new_meta(model, "unet", {"features": 8}, classes=["background", "anterior", "posterior"],
                               normalization={"mode": "zscore"}, card={"untrained": True})  # fmt: skip
    parent = checkpoint.save(tmp_path / "untrained.segmodel", model, meta)
    folder = data_dir / "msd_task04_hippocampus"
    img = io.read(folder / "images" / "hippocampus_173.nii.gz")
    lab = io.read(folder / "labels" / "hippocampus_173.nii.gz")
    res = run_to_end(iter_finetune(parent, [(img, lab)], tmp_path / "child.segmodel", budget_s=240, steps=12,
                                   precision="bf16"))  # fmt: skip
    assert res.steps == 12 and res.dice_after == res.dice_after  # finished, with a finite score
    settings = checkpoint.read_meta(res.path).provenance["settings"]
    assert settings["precision"] in ("bfloat16", "torch.bfloat16", "fp32")
