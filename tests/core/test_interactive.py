"""Click to correct (core.interactive, core.training.clicksim, ``seg-studio refine``).

Invariants are checked with small untrained models (they hold whatever the weights), what the clicks do
to a real scan with the shipped interactive hippocampus model (when it is there), and training with
simulated clicks through the one loop on synthetic pairs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_studio.core import checkpoint as ckpt
from seg_studio.core.errors import CheckpointError, InferenceError
from seg_studio.core.interactive import (
    Click,
    ClickError,
    GuidanceSpec,
    RefineOptions,
    apply_clicks,
    next_click,
    read_clicks,
    refine,
    render_clicks,
)
from seg_studio.core.models import create_model, list_models
from seg_studio.core.volume import Volume

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
TINY = {"features": 4, "depth": 2}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _interactive(tmp: Path, dims: int = 2, patch: tuple[int, ...] = (32, 32), seed: int = 0):  # noqa: ANN202
    torch.manual_seed(seed)
    spec = GuidanceSpec(1, 2.0, "gaussian", True)
    model = create_model("unet", dims, 1, 2, guidance_channels=spec.guidance_channels, **TINY).eval()
    meta = ckpt.new_meta(
        model,
        "unet",
        TINY,
        classes=["background", "structure"],
        channel_names=spec.channel_names(),
        patch_size=patch,
        interactive=spec.to_dict(),
    )
    path = tmp / "clicks.segmodel"
    ckpt.save(path, model, meta)
    return path, *ckpt.load(path)


# --- guidance channels --------------------------------------------------------------------------------


def test_every_trainable_variant_takes_guidance_channels() -> None:
    for name in list_models(trainable_only=True):
        with torch.device("meta"):
            m = create_model(name, 2, 1, 2, guidance_channels=3)
        assert m.in_channels == 4, name


def test_clicks_are_drawn_in_physical_units() -> None:
    spec = GuidanceSpec(1, 2.0, "gaussian", True)
    for spacing in ((1.0, 1.0, 1.0), (2.0, 0.5, 1.0)):
        m = render_clicks((21, 41, 21), spacing, [(10, 20, 10)], spec)
        assert m[10, 20, 10] == pytest.approx(1.0)
        # 2 mm away along z and along y: exp(-1/2), whatever the voxel size
        assert m[10 + int(2 / spacing[0]), 20, 10] == pytest.approx(math.exp(-0.5), rel=1e-5)
        assert m[10, 20 + int(2 / spacing[1]), 10] == pytest.approx(math.exp(-0.5), rel=1e-5)
    disk = render_clicks((20, 20), (0.5, 0.5), [(10, 10), (30, 30)], GuidanceSpec(1, 2.0, "disk", False))
    assert disk.sum() == np.count_nonzero(disk) and 40 < disk.sum() < 60  # radius 4 px: ~50 px, max not sum


def test_a_bad_interactive_record_is_refused(tmp_path: Path) -> None:
    _, model, meta = _interactive(tmp_path)
    for bad, text in (
        ({"sigma": float("inf")}, "finite"),
        ({"sigma": 1e9}, "outside"),
        ({"shape": "star"}, "shape"),
        ({"image_channels": 2}, "add up"),
        ({"previous_mask": "yes"}, "true or false"),
        ({"evil": 1}, "unknown"),
    ):
        meta.interactive = {**GuidanceSpec().to_dict(), **bad}
        with pytest.raises(CheckpointError, match=text):
            ckpt.save(tmp_path / "bad.segmodel", model, meta)
        with pytest.raises(CheckpointError, match=text):
            ckpt.ModelMeta.from_dict(meta.to_dict())
    assert not (tmp_path / "bad.segmodel").exists()


# --- the simulated user ---------------------------------------------------------------------------------


def test_next_click_goes_to_the_centre_of_the_largest_error() -> None:
    target = np.zeros((40, 40), bool)
    target[5:15, 5:25] = True
    pred = np.zeros_like(target)
    pred[5:10, 5:25] = True  # misses rows 10..14: the largest error, a false negative
    pred[30:33, 30:33] = True  # a small false positive
    positive, voxel = next_click(pred, target)
    assert positive and voxel[0] == 12 and voxel[1] in (14, 15)  # the middle of columns 5..24
    pred[10:15, 5:25] = True
    assert next_click(pred, target) == (False, (31, 31))
    assert next_click(target, target) is None


# --- refine -------------------------------------------------------------------------------------------


def test_refine_changes_only_its_crop_never_painted_voxels_and_can_be_undone(tmp_path: Path) -> None:
    _, model, meta = _interactive(tmp_path)
    rng = np.random.default_rng(0)
    scan = Volume.from_array(rng.normal(size=(200, 300)).astype(np.float32))
    labels = np.zeros((200, 300), np.uint16)
    labels[90:110, 140:160] = 1
    labels[0:5, 0:5] = 2
    painted = np.zeros((200, 300), bool)
    painted[95:105, 145:155] = True
    r = refine(scan, model, meta, [Click(1, True, (100, 150))], labels, painted)
    box = r.region
    assert all(s.stop - s.start <= 64 for s in box)  # at most two patches, not the whole image
    assert box[0].start <= 100 < box[0].stop and box[1].start <= 150 < box[1].stop
    outside = np.ones_like(painted)
    outside[box] = False
    assert np.array_equal(r.labels[outside], labels[outside])
    assert np.array_equal(r.labels[painted], labels[painted])
    assert r.changed == int(np.count_nonzero(r.labels != labels))
    undone = r.labels.copy()
    undone[box] = r.before
    assert np.array_equal(undone, labels)
    assert labels[100, 150] == 1  # the caller's labels are not modified


def test_apply_clicks_runs_each_click_and_refuses_bad_ones(tmp_path: Path) -> None:
    _, model, meta = _interactive(tmp_path, dims=3, patch=(16, 16, 16))
    scan = Volume.from_array(np.random.default_rng(1).normal(size=(20, 24, 24)).astype(np.float32))
    clicks = [Click(1, True, (10, 12, 12)), Click(3, True, (2, 2, 2)), Click(1, False, (10, 12, 20))]
    final, steps = apply_clicks(scan, model, meta, clicks)
    assert len(steps) == 3 and [s.value for s in steps] == [1, 3, 1]
    assert np.array_equal(final, steps[-1].labels) and set(np.unique(final)) <= {0, 1, 3}
    with pytest.raises(ClickError, match="outside the scan"):
        refine(scan, model, meta, [Click(1, True, (10, 12, 24))])
    with pytest.raises(ClickError, match="not a structure"):
        refine(scan, model, meta, [Click(0, True, (1, 1, 1))])
    with pytest.raises(ClickError, match="2 indices"):
        refine(scan, model, meta, [Click(1, True, (1, 1))])
    auto = create_model("unet", 3, 1, 2, **TINY)
    auto_meta = ckpt.new_meta(auto, "unet", TINY, patch_size=(16, 16, 16))
    with pytest.raises(InferenceError, match="automatic model"):
        refine(scan, auto, auto_meta, clicks)


def test_a_2d_model_refines_one_slice_of_a_3d_scan(tmp_path: Path) -> None:
    _, model, meta = _interactive(tmp_path)
    scan = Volume.from_array(np.random.default_rng(2).normal(size=(5, 40, 40)).astype(np.float32))
    r = refine(scan, model, meta, [Click(1, True, (2, 20, 20))], options=RefineOptions(margin=3.0))
    assert (r.region[0].start, r.region[0].stop) == (2, 3)
    assert not r.labels[[0, 1, 3, 4]].any()


def test_clicks_file_is_checked(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps([{"class": 1, "positive": True, "voxel": [1, 2, 3]}]))
    assert read_clicks(f, (4, 4, 4)) == [Click(1, True, (1, 2, 3))]
    for bad, text in (
        ("[", "not a JSON list"),
        ("[]", "non-empty"),
        ('[{"class": 1, "positive": 1, "voxel": [1, 2, 3]}]', "true or false"),
        ('[{"class": 1.5, "positive": true, "voxel": [1, 2, 3]}]', "integer"),
        ('[{"class": 1, "positive": true, "voxel": [1, 2]}]', "2 indices"),
        ('[{"class": 1, "positive": true, "voxel": [1, 2, 9]}]', "outside"),
        ('[{"class": 1, "voxel": [1, 2, 3]}]', "a click is"),
    ):
        f.write_text(bad)
        with pytest.raises(ClickError, match=text):
            read_clicks(f, (4, 4, 4))


# --- training -------------------------------------------------------------------------------------------


def test_an_interactive_start_from_an_automatic_model_predicts_as_it_did_without_clicks() -> None:
    from seg_studio.core.training.clicksim import from_automatic

    torch.manual_seed(0)
    auto = create_model("unet", 2, 1, 2, **TINY).eval()
    inter = from_automatic(auto, "unet", TINY, GuidanceSpec(1, 2.0, "gaussian", True)).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        a = auto(x).logits
        b = inter(torch.cat([x, torch.zeros(1, 3, 32, 32)], 1)).logits
        c = inter(torch.cat([x, torch.ones(1, 3, 32, 32)], 1)).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, c, atol=1e-5)  # guidance weights start at zero


def test_training_with_simulated_clicks_writes_an_interactive_checkpoint(tmp_path: Path) -> None:
    from seg_studio.core.io import write
    from seg_studio.core.samples import make_sample_2d
    from seg_studio.core.training import FitConfig, iter_fit

    imgs, labs = tmp_path / "images", tmp_path / "labels"
    imgs.mkdir()
    labs.mkdir()
    for i in range(4):
        img, lab = make_sample_2d(seed=i + 1)
        write(Volume.from_array(img.array[::2, ::2].copy()), imgs / f"case_{i}.nii.gz")
        write(
            Volume.from_array(lab.array[::2, ::2].copy(), meta={"kind": "labels"}), labs / f"case_{i}.nii.gz"
        )
    cfg = FitConfig(
        images=str(imgs),
        labels=str(labs),
        arch_args=TINY,
        out=str(tmp_path / "run"),
        max_steps=3,
        val_every=3,
        batch_size=2,
        patch_size=[32, 32],
        val_fraction=0.25,
        interactive={"sigma": 3.0, "max_rounds": 2, "val_clicks": 2},
    )
    gen = iter_fit(cfg)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result = stop.value
            break
    model, meta = ckpt.load(result.best_path)
    assert meta.interactive == {"image_channels": 1, "sigma": 3.0, "shape": "gaussian", "previous_mask": True}
    assert meta.in_channels == 4 and meta.out_channels == 2 and meta.classes[1].name == "structure"
    assert meta.provenance["metrics"]["val_clicks"] == 2
    assert 0 <= result.best_dice <= 1
    from seg_studio.core.errors import TrainingError

    bad = FitConfig(**{**cfg.__dict__, "interactive": {"max_rounds": 99}, "out": str(tmp_path / "run2")})
    with pytest.raises(TrainingError, match="interactive max_rounds"):
        for _ in iter_fit(bad):
            pass


def test_the_click_simulator_adds_guidance_and_a_one_structure_target() -> None:
    from seg_studio.core.training.clicksim import ClickSimulator, ClickTraining

    spec = GuidanceSpec(1, 2.0, "gaussian", True)
    model = create_model("unet", 2, 1, 2, guidance_channels=3, **TINY)
    sim = ClickSimulator(ClickTraining(max_rounds=2, p_start_mask=0.0), spec, 3, (1.0, 1.0), None, seed=0)
    y = torch.zeros(2, 32, 32, dtype=torch.long)
    y[:, 5:15, 5:15] = 1
    y[:, 20:30, 20:30] = 2
    y[1, 0, :] = -1
    x2, y2 = sim.prepare_batch(0, torch.randn(2, 1, 32, 32), y, model)
    assert x2.shape == (2, 4, 32, 32)
    assert set(torch.unique(y2).tolist()) <= {-1, 0, 1} and bool((y2[1, 0] == -1).all())
    for b in range(2):
        # the first click is positive, at the centre of the structure the target is
        pos = x2[b, 1]
        peak = np.unravel_index(int(pos.argmax()), pos.shape)
        assert y2[b][peak] == 1 and pos.max() == pytest.approx(1.0)

    # starting from a mask (an automatic result): the previous-mask channel holds a corrupted copy
    sim = ClickSimulator(ClickTraining(max_rounds=0, p_start_mask=1.0), spec, 3, (1.0, 1.0), None, seed=1)
    x3, y3 = sim.prepare_batch(0, torch.randn(2, 1, 32, 32), y, model)
    for b in range(2):
        prev, target = x3[b, 3] > 0.5, y3[b] == 1
        assert prev.any() and (prev & target).sum() > 0.5 * target.sum()
