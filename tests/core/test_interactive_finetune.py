"""Recorded clicks train the next fine-tune (``core.training.finetune_clicks``, ``seg-studio finetune``).

The user's clicks, saved beside the labels, become the first round of guidance of their pair when an
interactive model is fine-tuned; an automatic model does not use them and says so. Checked on a real
held-back hippocampus crop with the shipped interactive and automatic models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_studio.core import checkpoint as ckpt
from seg_studio.core import io
from seg_studio.core.interactive import Click, GuidanceSpec, next_click, write_clicks
from seg_studio.core.models import create_model

REPO = Path(__file__).resolve().parents[2]
HIPPO = REPO.parent / "shared" / "data" / "msd_task04_hippocampus"
CLICKS_MODEL = REPO / "resources" / "models" / "hippocampus_clicks.segmodel"
AUTO_MODEL = REPO / "resources" / "models" / "hippocampus_unet.segmodel"
CASE = "hippocampus_014"  # held back from both shipped models' training

needs_data = pytest.mark.skipif(
    not (HIPPO.is_dir() and CLICKS_MODEL.exists() and AUTO_MODEL.exists()),
    reason="needs ../shared/data/msd_task04_hippocampus and the shipped hippocampus models",
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair() -> tuple[Path, Path]:
    return HIPPO / "images" / f"{CASE}.nii.gz", HIPPO / "labels" / f"{CASE}.nii.gz"


def _user_clicks(labels: Path) -> list[Click]:
    """What a user clicks: a positive click at the centre of each structure and one negative beside one."""
    truth = io.read(labels).array
    empty = np.zeros(truth.shape, bool)
    out = [Click(v, True, next_click(empty, truth == v)[1]) for v in (1, 2)]
    z, y, x = np.argwhere(truth == 0)[len(np.argwhere(truth == 0)) // 2]
    return [*out, Click(2, False, (int(z), int(y), int(x)))]


def test_recorded_clicks_are_the_first_round_of_the_simulated_user(monkeypatch: pytest.MonkeyPatch) -> None:
    from seg_studio.core.training import clicksim
    from seg_studio.core.training.clicksim import ClickSimulator, ClickTraining, recorded_maps

    monkeypatch.setattr(clicksim, "P_RECORDED", 1.0)
    spec = GuidanceSpec(1, 2.0, "gaussian", True)
    model = create_model("unet", 2, 1, 2, guidance_channels=3, features=4, depth=2)
    y = torch.zeros(2, 32, 32, dtype=torch.long)
    y[:, 5:15, 5:15] = 1
    y[:, 20:30, 20:30] = 2
    # sample 0 carries a positive click of class 2 and a negative one; sample 1 none (simulated)
    rec = torch.stack(
        [
            recorded_maps([(2, True, (24, 24)), (2, False, (3, 28))], (32, 32), (1.0, 1.0), 3, spec),
            recorded_maps([], (32, 32), (1.0, 1.0), 3, spec),
        ]
    )
    assert rec.shape == (2, 4, 32, 32) and rec[0, 0].max() == 0 and rec[0, 2, 24, 24] == 1.0
    x = torch.cat([torch.randn(2, 1, 32, 32), rec.float()], 1)
    sim = ClickSimulator(ClickTraining(max_rounds=2, p_start_mask=0.0), spec, 3, (1.0, 1.0), None, seed=0)
    x2, y2 = sim.prepare_batch(0, x, y, model)
    assert x2.shape == (2, 4, 32, 32)  # the recorded channels are gone, the guidance is there
    # sample 0 segments the clicked structure (class 2) and its guidance holds the user's clicks
    assert bool((y2[0] == (y[0] == 2).long()).all())
    assert bool((x2[0, 1] >= rec[0, 2] - 1e-3).all()) and x2[0, 1, 24, 24] == pytest.approx(1.0)
    assert bool((x2[0, 2] >= rec[0, 3] - 1e-3).all()) and x2[0, 2, 3, 28] == pytest.approx(1.0)
    # sample 1 had none: its first click is simulated, positive, at the centre of its structure
    peak = np.unravel_index(int(x2[1, 1].argmax()), (32, 32))
    assert y2[1][peak] == 1


@needs_data
def test_the_finetune_batches_hold_the_users_clicks(tmp_path: Path) -> None:
    """Through the fine-tune's own plan and the loop's step: the recorded clicks are drawn at their
    voxels on the case, and the training samples' guidance channels contain them."""
    from seg_studio.core.training import finetune as ft
    from seg_studio.core.training.loop import StepParts, train_step
    from seg_studio.core.training.plan import LoopHook

    img, lab = _pair()
    clicks = _user_clicks(lab)
    model, meta = ckpt.load(CLICKS_MODEL, device="cpu")
    corr = ft.read_corrections(meta, [(img, lab)], None, None, None, None, None, (), [clicks])
    assert corr.clicks.record() == {"given": 3, "used": 3, "pairs": 1} and corr.new_classes == []
    case = corr.cases[0][0]
    assert case.image.shape[0] == 1 and case.recorded is not None and case.recorded.shape[0] == 4
    for c in clicks:  # positive / negative map of the clicked class peaks at the clicked voxel
        ch = case.recorded[2 * (c.value - 1) + (0 if c.positive else 1)].float()
        assert np.unravel_index(int(ch.argmax()), ch.shape) == c.voxel and float(ch.max()) == 1.0
    choice = ft.choose_validation(corr, meta, None, 0.2)
    opts = ft.FinetuneOptions(budget_s=60, lr=1e-4, batch_size=4, device="cpu", precision="fp32")
    plan = ft.finetune_plan(model, meta, choice, corr, [], opts)

    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    class Before(LoopHook):
        def prepare_batch(self, step, x, y, model):  # noqa: ANN001, ANN202
            seen.append((x.clone(), y.clone(), torch.empty(0)))
            return x, y

    class After(LoopHook):
        def prepare_batch(self, step, x, y, model):  # noqa: ANN001, ANN202
            seen[-1] = (seen[-1][0], seen[-1][1], torch.cat([x, y[:, None].to(x)], 1))
            return x, y

    plan.hooks.insert(0, Before())
    plan.hooks.insert(2, After())  # right after the click simulator
    parts = StepParts.for_plan(plan)
    used = 0
    for _ in range(3):
        train_step(plan, parts, 0.0)
    for before, y, after in seen:
        assert before.shape[1] == 1 + 4 and after.shape[1] == 4 + 1  # image + recorded -> image + guidance
        for b in range(before.shape[0]):
            rec = before[b, 1:].reshape(2, 2, *before.shape[2:])
            for k in (1, 2):
                holds = bool(
                    (after[b, 1] >= rec[k - 1, 0] - 1e-3).all()
                    and (after[b, 2] >= rec[k - 1, 1] - 1e-3).all()
                )
                target_is_k = bool(((after[b, 4] == 1) == (y[b] == k)).all())
                if rec[k - 1].max() > 0.5 and holds and target_is_k:
                    used += 1
    assert used >= 3  # most patches hold the clicks (the crop fits a patch); 80 % of those use them


@needs_data
def test_cli_finetune_picks_up_the_clicks_beside_the_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from seg_studio.cli import main

    img, lab = _pair()
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / lab.name).write_bytes(lab.read_bytes())
    clicks = _user_clicks(lab)
    write_clicks(labels / f"{CASE}.clicks.json", clicks)
    out = tmp_path / "child.segmodel"
    args = ["finetune", "--model", str(CLICKS_MODEL), "--images", str(img.parent), "--labels", str(labels)]
    rc = main(
        [*args, "--out", str(out), "--steps", "12", "--budget", "90", "--device", "cpu", "--json", "-q"]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clicks"] == {"given": 3, "used": 3, "pairs": 1}
    meta = ckpt.read_meta(out)
    assert meta.interactive == ckpt.read_meta(CLICKS_MODEL).interactive and meta.out_channels == 2
    assert meta.provenance["clicks"] == {"given": 3, "used": 3, "pairs": 1}
    assert "3 recorded click(s)" in meta.card["clicks"]
    assert meta.provenance["settings"]["interactive"]["max_rounds"] == 3

    # an automatic model is fine-tuned on the labels alone, and says the clicks were not used
    out2 = tmp_path / "auto.segmodel"
    file = tmp_path / "mine.json"
    write_clicks(file, clicks[:1])
    rc = main(["finetune", "--model", str(AUTO_MODEL), "--images", str(img), "--labels", str(lab),
               "--clicks", str(file), "--out", str(out2), "--steps", "2", "--device", "cpu", "-q"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "recorded clicks: 0 of 1 used (unet is an automatic model: it takes no clicks)" in text
    assert ckpt.read_meta(out2).provenance["clicks"]["used"] == 0

    # a click outside the scan: one line, exit 2, nothing written
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"class": 1, "positive": True, "voxel": [999, 0, 0]}]))
    out3 = tmp_path / "never.segmodel"
    rc = main(["finetune", "--model", str(CLICKS_MODEL), "--images", str(img), "--labels", str(lab),
               "--clicks", str(bad), "--out", str(out3), "--steps", "2", "--device", "cpu", "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and not out3.exists()
    assert "lies outside the scan" in err and "Traceback" not in err


def test_warm_up_compiles_every_crop_size_a_click_can_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """The window sizes ``warm_up`` runs are the ones the clicks' crops then run as."""
    import sys

    from seg_studio.core.interactive import refine_step, start_session, warm_up, window_sizes
    from seg_studio.core.volume import Volume

    refine_mod = sys.modules["seg_studio.core.interactive.refine"]
    spec = GuidanceSpec(1, 2.0, "gaussian", True)
    model = create_model("unet", 2, 1, 2, guidance_channels=3, features=4, depth=2).eval()
    meta = ckpt.new_meta(model, "unet", {"features": 4, "depth": 2}, classes=["background", "structure"],
                         channel_names=spec.channel_names(), patch_size=(32, 32), interactive=spec.to_dict())  # fmt: skip
    scan = Volume.from_array(np.random.default_rng(0).normal(size=(80, 48)).astype(np.float32))
    session = start_session(scan, model, meta)
    sizes = window_sizes(session)
    # one or two patches a side (the scan's 48 is padded to 64)
    assert sorted(sizes) == [(32, 32), (32, 64), (64, 32), (64, 64)] and sizes[:2] == [(32, 32), (64, 64)]
    seen: list[tuple[int, ...]] = []
    real = refine_mod.predict_crop

    def recording(sess, crop):  # noqa: ANN001, ANN202
        shape = np.array(crop.spatial_shape)
        seen.append(tuple(int(v) for v in np.maximum(shape, -(-shape // 32) * 32)))
        return real(sess, crop)

    monkeypatch.setattr(refine_mod, "predict_crop", recording)
    assert warm_up(session) == sizes and seen == sizes
    seen.clear()
    labels = np.zeros(scan.spatial_shape, np.uint16)
    for voxel, lab in (((40, 24), labels), ((5, 5), labels), ((40, 24), np.ones_like(labels))):
        refine_step(session, [Click(1, True, voxel)], lab)
    assert set(seen) <= set(sizes) and len(set(seen)) >= 2
