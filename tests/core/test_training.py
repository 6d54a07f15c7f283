"""Training core: data pairing, the fixed split, augmentation, losses, iter_fit, iter_finetune.

Tiny real models (features=4), real files written to tmp_path, a handful of steps: these check the
mechanics (files, provenance, split reuse, ignore labels, grown heads, cancel, budgets), not accuracy.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_studio.core import checkpoint
from seg_studio.core.errors import Cancelled, TrainingError
from seg_studio.core.inference import cpu_has_fast_bf16, describe_hardware
from seg_studio.core.io import write
from seg_studio.core.models import create_model
from seg_studio.core.progress import CancelToken, run_to_end
from seg_studio.core.samples import make_sample_2d, make_sample_3d
from seg_studio.core.training import IGNORE_INDEX, FitConfig, iter_finetune, iter_fit, pairs_from_folders
from seg_studio.core.training.augment import AugmentConfig, augment_batch
from seg_studio.core.training.data import (
    Split,
    apply_label_map,
    make_or_extend_split,
    parse_label_map,
    symmetric_axes,
)
from seg_studio.core.training.finetune import LR_FROM_SCRATCH, LR_TRAINED, grow_head, parent_is_untrained
from seg_studio.core.training.losses import DiceCELoss, deep_supervision_weights, supervised_loss

TINY = {"features": 4, "depth": 2}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202
    """Tiny models gain nothing from 2 threads, and OpenMP barriers crawl on a CPU shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_dataset(root: Path, n: int, dims: int = 2, scale: int = 1) -> tuple[Path, Path]:
    imgs, labs = root / "images", root / "labels"
    imgs.mkdir(parents=True)
    labs.mkdir(parents=True)
    make = make_sample_2d if dims == 2 else make_sample_3d
    for i in range(n):
        img, lab = make(seed=i)
        if dims == 2 and scale > 1:
            img = img.__class__.from_array(img.array[::scale, ::scale].copy(), spacing=img.spacing)
            lab = lab.__class__.from_array(
                lab.array[::scale, ::scale].copy(),
                spacing=lab.spacing,
                labels=lab.labels,
                meta={"kind": "labels"},
            )
        if dims == 3:
            sl = (slice(0, 16), slice(0, 32), slice(0, 32))
            img = img.__class__.from_array(img.array[sl].copy(), spacing=img.spacing)
            lab = lab.__class__.from_array(
                lab.array[sl].copy(), spacing=lab.spacing, labels=lab.labels, meta={"kind": "labels"}
            )
        write(img, imgs / f"case_{i:02d}.nii.gz")
        write(lab, labs / f"case_{i:02d}.nii.gz")
    return imgs, labs


@pytest.fixture(scope="module")
def data2d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _write_dataset(tmp_path_factory.mktemp("d2"), 6, scale=2)


@pytest.fixture(scope="module")
def parent_run(data2d: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    out = tmp_path_factory.mktemp("run")
    cfg = FitConfig(
        images=str(data2d[0]),
        labels=str(data2d[1]),
        arch_args=TINY,
        out=str(out),
        max_steps=4,
        val_every=2,
        batch_size=2,
        patch_size=[32, 32],
        val_fraction=0.34,
        seed=0,
        class_names=["background", "right lung", "left lung", "heart"],
    )
    progress = []
    gen = iter_fit(cfg)
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            return stop.value, progress, out


# --- data -------------------------------------------------------------------------------------------


def test_pairs_match_by_name_and_by_case_token(data_dir: Path) -> None:
    drive = data_dir / "drive_retina_vessels"
    pairs = pairs_from_folders(drive / "images", drive / "labels")
    assert len(pairs) == 15
    for p in pairs:  # 22_training.tif <-> 22_manual1.gif
        assert p.image.name.split("_")[0] == p.labels.name.split("_")[0] == p.name
    hip = data_dir / "msd_task04_hippocampus"
    pairs = pairs_from_folders(hip / "images", hip / "labels")
    assert len(pairs) == 45 and all(p.image.name == p.labels.name for p in pairs)


def test_label_map_parsing_and_application() -> None:
    m = parse_label_map("250:1, 200:2,150:3,7:ignore")
    assert m == {250: 1, 200: 2, 150: 3, 7: IGNORE_INDEX}
    a = np.array([[0, 250, 200], [150, 7, 99]], np.uint8)
    out = apply_label_map(a, m, ignore_value=99)
    assert out.tolist() == [[0, 1, 2], [3, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(TrainingError, match="SOURCE:TARGET"):
        parse_label_map("250-1")


def test_split_is_fixed_by_hash_and_extended_without_reshuffling() -> None:
    hashes = [f"{i:04x}{'ab' * 3}" for i in range(10)]
    names = [f"c{i}" for i in range(10)]
    s1, _ = make_or_extend_split(hashes, names, 0.3, None)
    shuffled = list(zip(hashes, names, strict=True))
    random.Random(1).shuffle(shuffled)
    s2, _ = make_or_extend_split([h for h, _ in shuffled], [n for _, n in shuffled], 0.3, None)
    assert s1.val == s2.val and len(s1.val) == 3  # order of discovery does not matter
    more = [*hashes, "0000zzzz", "ffffzzzz"]
    s3, changed = make_or_extend_split(more, [*names, "new1", "new2"], 0.3, s1)
    assert changed and s3.val == s1.val and {"0000zzzz", "ffffzzzz"} <= set(s3.train)


def test_flip_axes_avoid_lateralised_classes() -> None:
    from seg_studio.core.training.data import Case

    t = torch.zeros(8, 8, dtype=torch.int16)
    t[2:6, 0:3] = 1  # class 1 on the left half only: x (axis 1) is lateralised, y is symmetric
    t[2:6, 5:8] = 2
    case = Case(
        "a",
        "h",
        torch.zeros(1, 8, 8),
        t,
        (1.0, 1.0),
        {0: torch.tensor([0]), 1: torch.tensor([0]), 2: torch.tensor([0])},
    )
    assert symmetric_axes([case]) == [0]


# --- augmentation and losses ----------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
def test_spatial_augmentation_moves_image_and_labels_together(dims: int) -> None:
    g = torch.Generator().manual_seed(3)
    coarse = torch.randint(0, 4, (3, *(3,) * dims))
    y = coarse
    for ax in range(1, dims + 1):
        y = y.repeat_interleave(4, dim=ax)  # blocks of 4: labels with real regions, as in images
    x = y[:, None].float()
    cfg = AugmentConfig(
        flip_p=0.5, rotate_p=0.0, scale_p=0.0, elastic_p=0.0, gamma_p=0, contrast_p=0, noise_p=0
    )
    xa, ya = augment_batch(x, y, cfg, g)
    assert torch.equal(xa[:, 0].round().long(), ya)  # flips: exact, consistent
    assert not torch.equal(ya, y)  # something was flipped with this seed
    cfg = AugmentConfig(
        flip_p=0, rotate_p=1.0, rotate_deg=30, scale_p=1.0, elastic_p=1.0, gamma_p=0, contrast_p=0, noise_p=0
    )
    xa, ya = augment_batch(x, y, cfg, g)
    assert ya.shape == y.shape and xa.shape == x.shape
    assert set(ya.unique().tolist()) <= {IGNORE_INDEX, 0, 1, 2, 3}
    assert (ya == IGNORE_INDEX).any()  # rotated corners came from outside: not supervised
    inside = ya != IGNORE_INDEX
    # nearest labels agree with the linearly resampled label image away from label edges
    agree = (xa[:, 0].round().long() == ya)[inside].float().mean()
    assert agree > 0.8


def test_intensity_augmentation_changes_only_the_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    y = torch.randint(0, 2, (4, 16, 16))
    cfg = AugmentConfig(flip_p=0, rotate_p=0, scale_p=0, elastic_p=0, gamma_p=1, contrast_p=1, noise_p=1)
    xa, ya = augment_batch(x, y, cfg, g)
    assert torch.equal(ya, y) and not torch.allclose(xa, x)


def test_dice_ce_ignores_ignored_voxels_and_rewards_truth() -> None:
    loss = DiceCELoss()
    y = torch.randint(0, 3, (2, 8, 8))
    y[:, :2] = IGNORE_INDEX
    perfect = torch.nn.functional.one_hot(y.clamp_min(0), 3).movedim(-1, 1).float() * 20
    wrong = perfect.roll(1, dims=1)
    assert loss(perfect, y) < 0.05 < loss(wrong, y)
    noisy = perfect.clone()
    noisy[:, :, :2] = torch.randn(2, 3, 2, 8) * 50  # change only ignored voxels
    assert torch.allclose(loss(noisy, y), loss(perfect, y))
    all_ignored = torch.full_like(y, IGNORE_INDEX)
    assert float(loss(perfect, all_ignored)) == 0.0


def test_deep_supervision_weights_favour_the_final_head() -> None:
    w = deep_supervision_weights(3)
    assert math.isclose(sum(w), 1.0) and w == sorted(w)
    y = torch.randint(0, 2, (1, 4, 4))
    good = torch.nn.functional.one_hot(y, 2).movedim(-1, 1).float() * 20
    bad = good.flip(1)
    l_good_aux = supervised_loss(DiceCELoss(), good, [good], y)
    l_bad_aux = supervised_loss(DiceCELoss(), good, [bad], y)
    assert l_bad_aux > l_good_aux  # the auxiliary head counts


# --- fit ------------------------------------------------------------------------------------------------


def test_fit_writes_best_and_last_with_provenance_and_split(parent_run) -> None:  # noqa: ANN001
    res, progress, out = parent_run
    assert res.steps == 4 and res.stop_reason == "step budget"
    assert res.best_path and res.best_path.exists() and res.last_path.exists()
    assert (out / "split.json").exists() and (out / "history.json").exists()
    split = Split.read(out / "split.json")
    assert len(split.val) == 2 and len(split.train) == 4 and len(res.val_cases) == 2
    model, meta = checkpoint.load(res.best_path)
    assert meta.architecture == "unet" and meta.arch_args == TINY and meta.out_channels == 4
    assert [c.name for c in meta.classes][1:] == ["right lung", "left lung", "heart"]
    assert meta.provenance["split"]["val"] == split.val
    assert meta.provenance["kind"] == "train" and "val_dice_per_class" in meta.provenance["metrics"]
    # the card names the machine: precision and speed (and so the weights) depend on it
    hw = meta.provenance["settings"]["hardware"]
    assert hw == describe_hardware(torch.device("cpu")) and "cores" in hw
    assert ("native bf16" in hw and "no native" not in hw) == cpu_has_fast_bf16()
    steps = [p for p in progress if p.stage == "train"]
    assert [p.metrics["step"] for p in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(p.metrics["loss"]) for p in steps)
    vals = [p for p in progress if "val_dice" in p.metrics]
    assert len(vals) == 2 and all(set(p.metrics["per_class"]) == {1, 2, 3} for p in vals)


def test_second_run_reuses_the_split_and_resume_continues(parent_run, data2d, tmp_path: Path) -> None:  # noqa: ANN001
    res, _, out = parent_run
    first = Split.read(out / "split.json")
    # Another run, pointed at the same split, sees the same validation cases even with a new case added.
    imgs2, labs2 = tmp_path / "i", tmp_path / "l"
    imgs2.mkdir()
    labs2.mkdir()
    for p in data2d[0].iterdir():
        (imgs2 / p.name).write_bytes(p.read_bytes())
    for p in data2d[1].iterdir():
        (labs2 / p.name).write_bytes(p.read_bytes())
    img, lab = make_sample_2d(seed=99)
    write(img.__class__.from_array(img.array[::2, ::2].copy(), spacing=img.spacing), imgs2 / "zz_new.nii.gz")
    write(
        lab.__class__.from_array(lab.array[::2, ::2].copy(), spacing=lab.spacing, meta={"kind": "labels"}),
        labs2 / "zz_new.nii.gz",
    )
    split_copy = tmp_path / "split.json"
    split_copy.write_text((out / "split.json").read_text())
    cfg = FitConfig(
        images=str(imgs2),
        labels=str(labs2),
        arch_args=TINY,
        out=str(tmp_path / "run2"),
        max_steps=1,
        val_every=0,
        batch_size=2,
        patch_size=[32, 32],
        split=str(split_copy),
    )
    r2 = run_to_end(iter_fit(cfg))
    assert sorted(r2.val_cases) == sorted(res.val_cases)
    assert "zz_new" in r2.train_cases
    assert Split.read(split_copy).val == first.val
    # resume: continues the step count and keeps the split
    cfg3 = FitConfig(
        images=str(data2d[0]),
        labels=str(data2d[1]),
        out=str(tmp_path / "run2"),
        max_steps=3,
        val_every=0,
        batch_size=2,
        patch_size=[32, 32],
        split=str(split_copy),
        resume=True,
    )
    r3 = run_to_end(iter_fit(cfg3))
    assert r3.steps == 3


def test_fit_refuses_bad_settings(data2d) -> None:  # noqa: ANN001
    with pytest.raises(TrainingError, match="did you mean 'max_steps'"):
        FitConfig.from_dict({"max_step": 3})
    cfg = FitConfig(images=str(data2d[0]), labels=str(data2d[1]), out="/tmp/x.segmodel")
    with pytest.raises(TrainingError, match="run folder"):
        run_to_end(iter_fit(cfg))


def test_fit_3d_with_deep_supervision_and_adversarial(tmp_path: Path) -> None:
    imgs, labs = _write_dataset(tmp_path / "d3", 3, dims=3)
    cfg = FitConfig(
        images=str(imgs),
        labels=str(labs),
        architecture="unet_plus_plus",
        arch_args={"features": 4, "depth": 2},
        out=str(tmp_path / "r3"),
        max_steps=2,
        val_every=0,
        batch_size=1,
        patch_size=[16, 16, 16],
        val_fraction=0.0,
        adversarial=True,
        adv_weight=0.1,
    )
    steps = []
    gen = iter_fit(cfg)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            res = stop.value
            break
        if p.stage == "train":
            steps.append(p.metrics)
    assert len(steps) == 2
    assert all(m["ds_heads"] > 0 for m in steps)  # UNet++ heads were supervised
    assert all("adv_d" in m and "adv_g" in m for m in steps)  # the critic trained alternately
    _, meta = checkpoint.load(res.last_path)
    assert meta.spatial_dims == 3 and meta.architecture == "unet_plus_plus"


# --- fine-tune --------------------------------------------------------------------------------------------


def test_grow_head_keeps_old_rows() -> None:
    m = create_model("unet", 2, 1, 3, **TINY)
    g, names = grow_head(m, "unet", TINY, 5)
    assert g.out_channels == 5 and names
    x = torch.randn(1, 1, 16, 16)
    m.eval()
    g.eval()
    with torch.no_grad():
        assert torch.allclose(m(x).logits, g(x).logits[:, :3], atol=1e-5)


def test_finetune_from_gui_volumes_writes_a_new_child(parent_run, tmp_path: Path) -> None:  # noqa: ANN001
    res, _, _ = parent_run
    parent = res.best_path
    parent_hash = checkpoint.file_hash(parent)
    img, lab = make_sample_2d(seed=5)
    arr = lab.array.astype(np.int32)
    arr[:, :40] = IGNORE_INDEX  # untouched by the user
    arr[60:72, 60:72] = 7  # a class the parent lacks
    labels = lab.with_array(arr, meta={"kind": "labels"})
    out = tmp_path / "child.segmodel"
    progress = []
    gen = iter_finetune(parent, [(img, labels)], out, budget_s=300, steps=3, class_names={7: "pacemaker"})
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            r = stop.value
            break
    assert r.path == out and out.exists() and r.steps == 3
    assert checkpoint.file_hash(parent) == parent_hash  # the parent is untouched
    model, meta = checkpoint.load(out)
    assert meta.out_channels == 5 and meta.classes[-1].name == "pacemaker" and meta.classes[-1].value == 7
    prov = meta.provenance
    assert prov["parent"] == parent_hash and prov["kind"] == "finetune"
    assert prov["dice_before"] == pytest.approx(r.dice_before, abs=1e-5)
    assert prov["dice_after"] == pytest.approx(r.dice_after, abs=1e-5)
    assert r.dice_on == "training pairs" and r.new_classes == ["pacemaker"]
    assert prov["dice_per_class_before"]["pacemaker"] == 0.0  # the parent cannot predict it
    assert prov["settings"]["lr"] == LR_TRAINED  # a trained parent gets the gentle default
    assert prov["settings"]["hardware"] == describe_hardware(torch.device("cpu"))
    assert any(p.stage == "fine-tune" and "loss" in p.metrics for p in progress)


def test_finetune_from_an_untrained_parent_uses_the_from_scratch_rate(tmp_path: Path) -> None:
    img, lab = make_sample_2d(seed=2)
    n = len(np.unique(lab.array))
    model = create_model("unet", 2, 1, n, **TINY)
    meta = checkpoint.new_meta(model, "unet", TINY, patch_size=(64, 64))
    assert parent_is_untrained(meta)
    parent = checkpoint.save(tmp_path / "untrained.segmodel", model, meta)
    r = run_to_end(iter_finetune(parent, [(img, lab)], tmp_path / "c1.segmodel", budget_s=300, steps=1))
    child = checkpoint.read_meta(r.path)
    assert child.provenance["settings"]["lr"] == LR_FROM_SCRATCH > LR_TRAINED
    assert not parent_is_untrained(child)  # its child has been trained: the next fine-tune is gentle
    r2 = run_to_end(
        iter_finetune(parent, [(img, lab)], tmp_path / "c2.segmodel", budget_s=300, steps=1, lr=5e-4)
    )
    assert checkpoint.read_meta(r2.path).provenance["settings"]["lr"] == 5e-4
    # the GUI's untrained variant says so on its card; its child must not inherit that label
    flagged = checkpoint.save(
        tmp_path / "flagged.segmodel",
        model,
        replace(meta, card={"title": "untrained unet", "untrained": True}),
    )
    r3 = run_to_end(iter_finetune(flagged, [(img, lab)], tmp_path / "c3.segmodel", budget_s=300, steps=1))
    card = checkpoint.read_meta(r3.path).card
    assert "untrained" not in card and "untrained" not in card["title"].split()[0]
    assert not parent_is_untrained(checkpoint.read_meta(r3.path))


def test_finetune_never_overwrites_the_parent_and_cancel_writes_nothing(parent_run, tmp_path: Path) -> None:  # noqa: ANN001
    res, _, _ = parent_run
    img, lab = make_sample_2d(seed=1)
    with pytest.raises(TrainingError, match="never overwritten"):
        run_to_end(iter_finetune(res.best_path, [(img, lab)], res.best_path, budget_s=5))
    token = CancelToken()
    out = tmp_path / "cancelled.segmodel"
    gen = iter_finetune(res.best_path, [(img, lab)], out, budget_s=300, steps=50, cancel=token)
    with pytest.raises(Cancelled):
        for p in gen:
            if p.stage == "fine-tune" and p.metrics.get("step") == 1:
                token.cancel()
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_finetune_reuses_the_parents_split_and_keeps_to_its_budget(
    parent_run, data2d, tmp_path: Path
) -> None:  # noqa: ANN001
    res, _, out_dir = parent_run
    pairs = [(s.image, s.labels) for s in pairs_from_folders(*data2d)]
    random.Random(0).shuffle(pairs)
    out = tmp_path / "ft.segmodel"
    budget = 20.0
    r = run_to_end(iter_finetune(res.best_path, pairs, out, budget_s=budget))
    assert r.dice_on == "validation" and sorted(r.val_cases) == sorted(res.val_cases)
    assert not set(r.val_cases) & set(r.train_cases)
    assert r.steps > 0 and r.stop_reason == "time budget"
    # The training deadline leaves room for the final evaluation and the save (which the fine-tune
    # measures as it goes); the slack only absorbs a CPU shared with other jobs.
    assert r.seconds <= budget * 1.25, r.seconds
    child_split = checkpoint.read_meta(out).provenance["split"]
    assert set(child_split["val"]) == set(Split.read(out_dir / "split.json").val)


def test_finetune_rejects_bad_inputs(parent_run, tmp_path: Path) -> None:  # noqa: ANN001
    res, _, _ = parent_run
    img, lab = make_sample_2d(seed=1)
    empty = lab.with_array(np.full(lab.array.shape, IGNORE_INDEX, np.int32), meta={"kind": "labels"})
    with pytest.raises(TrainingError, match="ignore"):
        run_to_end(iter_finetune(res.best_path, [(img, empty)], tmp_path / "a.segmodel", budget_s=5))
    vol3, lab3 = make_sample_3d(seed=0)
    with pytest.raises(TrainingError, match="labelled voxels"):
        bad = lab3.with_array(np.full(lab3.array.shape, IGNORE_INDEX, np.int32), meta={"kind": "labels"})
        run_to_end(iter_finetune(res.best_path, [(vol3, bad)], tmp_path / "b.segmodel", budget_s=5))
    small = img.__class__.from_array(img.array[:64, :64].copy())
    with pytest.raises(TrainingError, match="same grid"):
        run_to_end(iter_finetune(res.best_path, [(small, lab)], tmp_path / "c.segmodel", budget_s=5))
    assert not list(tmp_path.glob("*.segmodel"))


def test_recipe_json_and_toml(tmp_path: Path) -> None:
    from seg_studio.core.training import load_recipe

    (tmp_path / "r.json").write_text(json.dumps({"architecture": "unet", "max_steps": 7, "lr": 0.01}))
    (tmp_path / "r.toml").write_text(
        '[train]\narchitecture = "unet"\nmax_steps = 9\narch_args = {features = 8}\n'
    )
    assert FitConfig.from_recipe(tmp_path / "r.json", max_steps=3).max_steps == 3
    cfg = FitConfig(**load_recipe(tmp_path / "r.toml"))
    assert cfg.max_steps == 9 and cfg.arch_args == {"features": 8}


def test_finetune_augments_intensity_more_and_records_what_it_used(tmp_path: Path) -> None:
    """A fine-tune's next scan differs from its one or two pairs mostly in exposure and contrast: its
    default augmentation applies gamma/contrast/noise more often than training does; a caller's
    settings go on top, and the provenance says what ran."""
    from seg_studio.core.training.finetune import FINETUNE_AUGMENT

    img, lab = make_sample_2d(seed=2)
    model = create_model("unet", 2, 1, len(np.unique(lab.array)), **TINY)
    parent = checkpoint.save(
        tmp_path / "p.segmodel", model, checkpoint.new_meta(model, "unet", TINY, patch_size=(64, 64))
    )
    training = AugmentConfig()
    for key, value in FINETUNE_AUGMENT.items():
        assert value > getattr(training, key), key
    r = run_to_end(iter_finetune(parent, [(img, lab)], tmp_path / "a.segmodel", budget_s=300, steps=1))
    used = checkpoint.read_meta(r.path).provenance["settings"]["augment"]
    assert {k: used[k] for k in FINETUNE_AUGMENT} == FINETUNE_AUGMENT
    assert used["rotate_p"] == training.rotate_p  # the rest as in training
    r = run_to_end(
        iter_finetune(
            parent, [(img, lab)], tmp_path / "b.segmodel", budget_s=300, steps=1, augment={"noise_p": 0.0}
        )
    )
    used = checkpoint.read_meta(r.path).provenance["settings"]["augment"]
    assert used["noise_p"] == 0.0 and used["gamma_p"] == FINETUNE_AUGMENT["gamma_p"]


def test_training_and_inference_choose_their_device_in_one_place() -> None:
    """One ``pick_device`` (inference.devices); torchrun's ranks get theirs through ``local_rank``."""
    from seg_studio.core.inference import devices
    from seg_studio.core.training import distributed

    assert distributed.pick_device is devices.pick_device
    assert distributed.setup("cpu").device == devices.pick_device("cpu") == torch.device("cpu")
    auto = devices.pick_device("auto", local_rank=3)
    if torch.cuda.is_available():
        assert auto == torch.device("cuda", 3 % torch.cuda.device_count())
    else:
        assert auto == devices.pick_device("auto")


def test_training_precision_follows_inference_and_refuses_unknown_names() -> None:
    """A recipe's precision means what it means for inference (the model trains in what it runs in),
    its spellings are accepted, and a typo is an error instead of a silent fp32."""
    from seg_studio.core.errors import SegStudioError
    from seg_studio.core.inference import resolve_precision
    from seg_studio.core.training.distributed import pick_precision

    cpu = torch.device("cpu")
    assert pick_precision(cpu, "auto") == resolve_precision("auto", cpu)
    assert pick_precision(cpu, "bfloat16") == pick_precision(cpu, "BF16") == torch.bfloat16
    assert pick_precision(cpu, "off") is None and pick_precision(cpu, "float32") is None
    for bad in ("fp16", "bf61"):
        with pytest.raises(SegStudioError):
            pick_precision(cpu, bad)
    assert pick_precision(torch.device("mps"), "auto") is None  # no gradient scaler for fp16 there
