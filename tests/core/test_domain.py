"""A model's domain: the record in the checkpoint, the checks before and after predicting, the ranking
behind the app's default model, and the CLI's ``warning:`` lines, on real scans from ../shared/data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_studio.cli import main
from seg_studio.core import checkpoint, domain, io
from seg_studio.core.errors import CheckpointError
from seg_studio.core.inference import PredictOptions, predict
from seg_studio.core.models import create_model
from seg_studio.core.samples import make_sample_2d, make_sample_3d

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
MODELS = REPO / "resources" / "models"
SHIPPED = sorted(MODELS.glob("*.segmodel"))

MSD_VAL = DATA / "msd_task04_hippocampus/images/hippocampus_014.nii.gz"  # held back by the shipped split
# not trained on by the 45-case models (a training case of hippocampus_unet_245)
MSD_EXTRA = DATA / "msd_task04_hippocampus_extra/images/hippocampus_001.nii.gz"
TCIA = DATA / "tcia_brain_tumor_progression_dicom/images/PGBM-003_19950329"
ISBI = DATA / "isbi2012_em_membrane/images/18.png"
JSRT = DATA / "jsrt_chest_xray_heart_lungs/images/JPCLN002.png"
HC18 = DATA / "hc18_fetal_head_ultrasound/images/000_HC.png"
DRIVE = DATA / "drive_retina_vessels/images/22_training.tif"
CT = DATA / "totalsegmentator_ct_examples/images/example_ct_sm.nii.gz"
SUNNYBROOK = DATA / "sunnybrook_cardiac_mri/dicom/SCD0000201/100.dcm"  # the held-back patient's

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")


def hc18_with_pixel_size(path: Path = HC18):
    """An HC18 frame with the pixel size its CSV gives (the PNG stores none), as a sonographer's export
    or a DICOM would carry it."""
    from seg_studio.core.datasets import hc18

    ref = hc18.read_reference(path.parents[1])[path.stem]
    return io.set_pixel_size(io.read(path), (ref.pixel_mm,))


def meta_of(name: str) -> checkpoint.ModelMeta:
    return checkpoint.read_meta(MODELS / f"{name}.segmodel")


def codes(warnings: list[domain.DomainWarning]) -> set[str]:
    return {w.code for w in warnings}


def tiny(dims: int = 2, **meta_kwargs) -> tuple[torch.nn.Module, checkpoint.ModelMeta]:
    model = create_model("unet", dims, 1, 4, features=4, depth=2).eval()
    patch = (64, 64) if dims == 2 else (16, 32, 32)
    meta = checkpoint.new_meta(model, "unet", {"features": 4, "depth": 2}, patch_size=patch, **meta_kwargs)
    return model, meta


def sample_domain(n: int = 3) -> domain.Domain:
    model, meta = tiny(2, classes=["background", "right lung", "left lung", "heart"])
    pairs = [make_sample_2d(seed=s) for s in range(1, n + 1)]
    return domain.domain_from_pairs(
        [(img, lab.array) for img, lab in pairs],
        meta,
        model=model,
        validation=[make_sample_2d(seed=50)[0]],
        expected_input="the synthetic 2D sample",
    )


# --- the record ----------------------------------------------------------------------------------------


def test_domain_from_pairs_measures_geometry_intensity_and_validation_results() -> None:
    d = sample_domain()
    assert (
        d.dims == 2 and d.channels == 1 and d.physical_spacing and d.modality == "X-ray"
    )  # the sample says DX
    assert d.spacing == ((0.5, 0.5), (0.5, 0.5)) and d.fov == ((64.0, 64.0), (64.0, 64.0))
    assert all(lo <= hi for lo, hi in zip(d.intensity_lo, d.intensity_hi, strict=True))
    assert d.cases == 3 and d.validation_cases == 1
    lungs = d.classes["right lung"]
    assert lungs.label_fraction is not None and 0.05 < lungs.label_fraction[1] < 0.2
    assert lungs.predicted_fraction is not None and d.mean_uncertainty is not None  # the model really ran


def test_the_record_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    model, meta = tiny(2, classes=["background", "right lung", "left lung", "heart"])
    meta.domain = sample_domain()
    path = checkpoint.save(tmp_path / "m.segmodel", model, meta)
    back = checkpoint.read_meta(path).domain
    assert back is not None
    assert back.to_dict() == meta.domain.to_dict()
    assert "expects the synthetic 2D sample" in checkpoint.model_card(checkpoint.read_meta(path), path)


def test_a_checkpoint_without_a_domain_still_loads(tmp_path: Path) -> None:
    model, meta = tiny()
    path = checkpoint.save(tmp_path / "old.segmodel", model, meta)
    assert "domain" not in checkpoint.read_meta(path).to_dict()
    assert checkpoint.load(path)[1].domain is None


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.pop("fov"), "lacks the field 'fov'"),
        (lambda d: d.update(dims=4), "dims 4"),
        (lambda d: d.update(spacing=[[1.0, 0.5], [1.0, 1.0]]), "not positive and increasing"),
        (lambda d: d.update(spacing=[[1.0, 1.0]]), "1 axes for a 2D domain"),
        (lambda d: d["intensity"].update(lo=[float("nan")] * 7), "not a finite number"),
        (lambda d: d.update(version=99), "newer than this seg_studio"),
        (lambda d: d.update(mean_uncertainty=[0.5, 0.1, 0.2]), "low <= mean <= high"),
    ],
)
def test_a_malformed_domain_is_one_line_naming_the_file(tmp_path: Path, change, words: str) -> None:
    model, meta = tiny()
    meta.domain = sample_domain(1)
    path = checkpoint.save(tmp_path / "m.segmodel", model, meta)
    record = meta.to_dict()
    change(record["domain"])
    bad = tmp_path / "bad.segmodel"
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(path)), str(bad), metadata={"seg_studio": json.dumps(record)})
    with pytest.raises(CheckpointError) as err:
        checkpoint.read_meta(bad)
    msg = str(err.value)
    assert msg.startswith("bad.segmodel: the domain record") and words in msg and "\n" not in msg


def test_replace_meta_keeps_every_tensor_byte_for_byte(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, meta = tiny()
    path = checkpoint.save(tmp_path / "m.segmodel", model, meta, dtype=torch.float16)
    before = load_file(str(path))
    meta.domain = sample_domain(1)
    checkpoint.replace_meta(path, meta)
    after = load_file(str(path))
    assert before.keys() == after.keys()
    for k, t in before.items():
        assert t.dtype == after[k].dtype and t.numpy().tobytes() == after[k].numpy().tobytes(), k
    assert checkpoint.read_meta(path).domain is not None
    other = dataclasses.replace(meta, arch_args={"features": 8, "depth": 2})
    with pytest.raises(CheckpointError, match="another architecture"):
        checkpoint.replace_meta(path, other)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_model_records_its_domain(path: Path) -> None:
    meta = checkpoint.read_meta(path)
    d = meta.domain
    assert d is not None, f"{path.name}: no domain; run resources/recipes/package.py --add-domain"
    guidance = 0 if meta.interactive is None else meta.in_channels - meta.interactive["image_channels"]
    assert d.dims == meta.spatial_dims and d.channels == meta.in_channels - guidance and d.expected_input
    assert d.cases >= 10
    if meta.interactive is None:  # a click model predicts nothing on its own: no validation predictions
        assert d.validation_cases >= 4 and d.mean_uncertainty is not None
        assert set(d.classes) == {c.name for c in meta.classes}
    assert "expects" in path.with_suffix(".md").read_text()


def test_training_records_the_domain_in_its_best_checkpoint(tmp_path: Path) -> None:
    from seg_studio.core.progress import run_to_end
    from seg_studio.core.training import FitConfig, iter_fit

    for seed in range(1, 5):
        image, labels = make_sample_2d(seed=seed)
        io.write(image, tmp_path / "images" / f"c{seed}.nii.gz")
        io.write(labels, tmp_path / "labels" / f"c{seed}.nii.gz")
    cfg = FitConfig(
        images=str(tmp_path / "images"),
        labels=str(tmp_path / "labels"),
        arch_args={"features": 4, "depth": 2},
        out=str(tmp_path / "run"),
        max_steps=2,
        val_every=2,
        batch_size=2,
        patch_size=[64, 64],
        val_fraction=0.25,
        device="cpu",
    )
    result = run_to_end(iter_fit(cfg))
    d = checkpoint.read_meta(result.best_path).domain
    assert d is not None and d.cases == 3 and d.validation_cases == 1
    assert d.fov == ((64.0, 64.0), (64.0, 64.0)) and "training cases" in d.expected_input
    assert checkpoint.load(result.best_path)[0] is not None  # the weights still load


# --- checks on real scans -----------------------------------------------------------------------------------


@needs_data
def test_hippocampus_model_warns_on_a_whole_head_and_not_on_msd_crops() -> None:
    d = meta_of("hippocampus_unet").domain
    for crop in (MSD_VAL, MSD_EXTRA):
        assert domain.check_scan(d, io.read(crop)) == [], crop.name
    found = domain.check_scan(d, io.read(TCIA))
    assert {"spacing", "fov", "intensity"} <= codes(found)
    fov = next(w for w in found if w.code == "fov").message
    assert "192 x 220 x 143 mm" in fov
    assert any("a T1 MRI crop" in w.message for w in found)  # the expected input is named once
    assert sum("a T1 MRI crop" in w.message for w in found) == 1


@needs_data
def test_em_model_on_a_3d_mri_says_slice_by_slice_and_warns() -> None:
    d = meta_of("isbi2012_unet").domain
    assert domain.check_scan(d, io.read(ISBI)) == []
    on_mri = domain.check_scan(d, io.read(TCIA))
    assert {"dims", "modality", "intensity"} <= codes(on_mri)
    dims = next(w for w in on_mri if w.code == "dims")
    assert dims.severity == "note" and "slice by slice" in dims.message and "22 slices" in dims.message
    assert (
        "the scan is MR but the model was trained on EM"
        in next(w for w in on_mri if w.code == "modality").message
    )


@needs_data
def test_demo_model_warns_on_a_real_chest_xray_and_fits_its_sample() -> None:
    d = meta_of("demo2d_unet").domain
    assert domain.check_scan(d, make_sample_2d(seed=0)[0]) == []
    on_jsrt = domain.check_scan(d, io.read(JSRT))
    assert {"no_spacing", "intensity"} <= codes(on_jsrt)


@needs_data
def test_a_3d_model_refuses_a_2d_image_and_rgb_is_refused() -> None:
    hippo = meta_of("hippocampus_unet").domain
    refused = domain.check_scan(hippo, io.read(JSRT))
    assert [(w.code, w.severity) for w in refused] == [("dims", "refuse")]
    rgb = domain.check_scan(meta_of("isbi2012_unet").domain, io.read(DRIVE))
    assert [(w.code, w.severity) for w in rgb] == [("channels", "refuse")]


@needs_data
def test_ct_is_recognised_by_its_hounsfield_units() -> None:
    assert domain.scan_modality(io.read(CT)) == "CT"
    assert domain.scan_modality(io.read(MSD_VAL)) is None  # NIfTI MR does not say
    assert domain.scan_modality(io.read(TCIA)) == "MR"
    assert not domain.has_physical_spacing(io.read(JSRT)) and domain.has_physical_spacing(io.read(MSD_VAL))


@needs_data
def test_check_result_passes_a_real_validation_prediction_and_flags_an_unusual_one() -> None:
    model, meta = checkpoint.load(MODELS / "hippocampus_unet.segmodel")
    pred = predict(io.read(MSD_VAL), model, meta, PredictOptions(device="cpu", probabilities=True))
    assert domain.check_result(meta.domain, pred) == []
    # the same prediction with a sixth of the crop painted 'anterior', as on the whole TCIA head
    labels = np.array(pred.labels.array, copy=True)
    labels.reshape(-1)[: labels.size // 6] = 1
    odd = dataclasses.replace(pred, labels=pred.labels.with_array(labels), probabilities=None)
    found = domain.check_result(meta.domain, odd)
    assert [w.code for w in found] == ["fraction"] and "'anterior'" in found[0].message
    # and an unsure one: every class equally likely
    flat = pred.probabilities.with_array(np.full_like(pred.probabilities.array, 1 / 3), channels=3)
    unsure = dataclasses.replace(pred, probabilities=flat)
    assert "uncertainty" in codes(domain.check_result(meta.domain, unsure))


@needs_data
def test_em_model_on_mri_gives_a_result_that_is_flagged() -> None:
    """The 2D EM model on a 3D MRI (slice by slice): its result is unlike its validation results."""
    model, meta = checkpoint.load(MODELS / "isbi2012_unet.segmodel")
    pred = predict(io.read(MSD_EXTRA), model, meta, PredictOptions(device="cpu", probabilities=True))
    assert codes(domain.check_result(meta.domain, pred)) & {"fraction", "uncertainty"}


@needs_data
def test_widen_makes_a_fine_tune_scan_part_of_the_domain() -> None:
    """What finetune can record for its child: the parent's domain stretched over the corrected scans."""
    d = meta_of("hippocampus_unet").domain
    head = io.read(TCIA)
    wider = domain.widen(d, [head])
    assert domain.check_scan(wider, head) == [] and wider.cases == d.cases + 1
    assert domain.check_scan(wider, io.read(MSD_EXTRA)) == []  # the crops still fit
    assert wider.classes == d.classes  # validation results stay the parent's


# --- the default model ------------------------------------------------------------------------------------------


def _rank(scan) -> list[domain.Ranked]:
    return domain.rank_checkpoints([(p.stem, checkpoint.read_meta(p)) for p in SHIPPED], scan)


@needs_data
@pytest.mark.parametrize(
    "scan, best",
    [
        # all three hippocampus models fit; the 245-case one is the best on the 49 cases they share
        (MSD_EXTRA, "hippocampus_unet_245"),
        (ISBI, "isbi2012_unet"),
        ("sample2d", "demo2d_unet"),
        ("sample3d", "demo3d_unet"),
        (TCIA, None),
        (JSRT, None),
        (HC18, None),  # the PNG stores no pixel size: hc18 ranks first but says so (below)
        ("hc18 with its pixel size", "hc18_fetal_head"),
        (SUNNYBROOK, "sunnybrook_lv"),
        (DRIVE, None),
        (CT, None),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_the_best_fitting_shipped_model_is_the_default(scan, best) -> None:
    if scan == "sample2d":
        vol = make_sample_2d(seed=0)[0]
    elif scan == "sample3d":
        vol = make_sample_3d(seed=0)[0]
    elif scan == "hc18 with its pixel size":
        vol = hc18_with_pixel_size()
    else:
        vol = io.read(scan)
    ranked = _rank(vol)
    if best is None:
        assert not any(r.fits for r in ranked), [(r.key, r.warnings) for r in ranked if r.fits]
    else:
        assert ranked[0].key == best and ranked[0].fits
        # the attention twin fits too, but its Dice on the cases they share is lower: never silently preferred
        fitting = [r for r in ranked if r.fits]
        dice = domain.comparable_dice([r.meta for r in fitting])
        assert dice[0] == max(dice), list(zip([r.key for r in fitting], dice, strict=True))


def _meta_with(own: float, shared: float | None = None) -> object:
    from types import SimpleNamespace

    v: dict = {"mean_dice": own, "cases": ["a"]}
    if shared is not None:
        v["benchmarks"] = {"bench": {"mean_dice": shared, "cases": 49}}
    return SimpleNamespace(card={"validation": v}, provenance={})


def test_models_scored_on_the_same_cases_are_compared_there_not_on_their_own_validation() -> None:
    # "old" looks better on its own 9 cases, but "new" is better on the 49 both were scored on
    old, new, other = _meta_with(0.8783, 0.8767), _meta_with(0.875, 0.8800), _meta_with(0.86)
    assert domain.comparable_dice([old, new, other]) == [0.8767, 0.8800, 0.86]
    assert domain.comparable_dice([old, other]) == [0.8783, 0.86]  # one alone on a benchmark: own figures
    assert domain.comparable_dice([_meta_with(0.9, 0.7), _meta_with(0.8, 0.75)]) == [0.7, 0.75]
    vol = make_sample_2d(seed=0)[0]
    model = create_model("unet", 2, 1, 2, features=4, depth=2)
    base = checkpoint.new_meta(model, "unet", {"features": 4, "depth": 2}, patch_size=(64, 64))
    metas = []
    for m in (old, new):
        meta = dataclasses.replace(base)
        meta.card, meta.domain = m.card, None
        metas.append(meta)
    ranked = domain.rank_checkpoints([("old", metas[0]), ("new", metas[1])], vol)
    assert [r.key for r in ranked] == ["new", "old"]


@needs_data
def test_an_hc18_png_without_its_pixel_size_ranks_hc18_first_and_says_what_is_missing() -> None:
    top = _rank(io.read(HC18))[0]
    assert top.key == "hc18_fetal_head" and not top.fits
    assert [(w.code, w.severity) for w in top.warnings] == [("no_spacing", "mismatch")]


@needs_data
@pytest.mark.parametrize("scan", [JSRT, ISBI], ids=lambda p: p.name)
def test_the_ultrasound_model_does_not_fit_other_grey_pictures_given_a_pixel_size(scan: Path) -> None:
    """A film or an EM slice of unknown modality, even with a plausible pixel size, is not an ultrasound
    frame: the dark share (the black outside the sector) gives it away where intensities cannot."""
    vol = io.set_pixel_size(io.read(scan), (0.2,))
    d = meta_of("hc18_fetal_head").domain
    found = domain.check_scan(d, vol)
    assert "dark" in codes(found) and "intensity" not in codes(found), found
    assert domain.check_scan(d, hc18_with_pixel_size()) == []
    assert not any(r.fits for r in _rank(vol) if r.key in ("hc18_fetal_head", "sunnybrook_lv"))


@needs_data
def test_a_2d_only_model_does_not_fit_a_3d_volume_of_unknown_modality() -> None:
    d = meta_of("hc18_fetal_head").domain
    assert d.modality == "US" and not d.slice_by_slice
    dims = next(w for w in domain.check_scan(d, io.read(MSD_EXTRA)) if w.code == "dims")
    assert dims.severity == "mismatch" and "single 2D images" in dims.message
    # a model that may run slice by slice only notes it
    em = next(
        w for w in domain.check_scan(meta_of("isbi2012_unet").domain, io.read(MSD_EXTRA)) if w.code == "dims"
    )
    assert em.severity == "note"


@needs_data
def test_the_cardiac_model_fits_its_held_back_patient_and_not_a_brain_mri() -> None:
    d = meta_of("sunnybrook_lv").domain
    assert d.modality == "MR"
    assert domain.check_scan(d, io.read(SUNNYBROOK)) == []
    assert {"spacing", "fov"} <= codes(domain.check_scan(d, io.read(TCIA)))
    assert "modality" in codes(domain.check_scan(meta_of("hc18_fetal_head").domain, io.read(SUNNYBROOK)))


@needs_data
def test_one_phase_of_the_cine_folder_gets_the_cardiac_model_slice_by_slice() -> None:
    stack = io.read(SUNNYBROOK.parent, phase=0)
    top = _rank(stack)[0]
    assert top.key == "sunnybrook_lv" and top.fits
    assert [(w.code, w.severity) for w in top.warnings] == [("dims", "note")]


def test_a_record_without_the_dark_share_or_slice_rule_reads_as_before() -> None:
    d = sample_domain()
    assert d.dark_fraction is not None and d.slice_by_slice
    old = {k: v for k, v in d.to_dict().items() if k not in ("dark_fraction", "slice_by_slice")}
    back = domain.Domain.from_dict(old)
    assert back.dark_fraction is None and back.slice_by_slice
    assert (
        domain.Domain.from_dict(dataclasses.replace(d, slice_by_slice=False).to_dict()).slice_by_slice
        is False
    )


def test_a_checkpoint_without_a_domain_never_fits_by_default() -> None:
    _, meta = tiny(2)
    ranked = domain.rank_checkpoints([("old", meta)], make_sample_2d(seed=0)[0])
    assert not ranked[0].fits and codes(ranked[0].warnings) == {"no_domain"}


# --- the CLI ----------------------------------------------------------------------------------------------------


@needs_data
def test_cli_prints_one_warning_line_per_problem_and_json_lists_them(tmp_path: Path, capsys) -> None:
    model = MODELS / "isbi2012_unet.segmodel"
    assert main(["predict", str(MSD_EXTRA), "--model", str(model), "--out", str(tmp_path / "m.nii.gz")]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    expected = domain.scan_warnings(checkpoint.read_meta(model), io.read(MSD_EXTRA))
    assert len(lines) >= len(expected) >= 2
    assert any("slice by slice" in ln for ln in lines)
    assert (
        main(
            ["predict", str(MSD_EXTRA), "--model", str(model), "--out", str(tmp_path / "j.nii.gz"), "--json"]
        )
        == 0
    )
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["warnings"] == [
        ln.removeprefix("warning: ") for ln in err.splitlines() if ln.startswith("warning: ")
    ]
    assert len(record["warnings"]) == len(lines) and Path(record["written"][0]).exists()


@needs_data
def test_cli_is_quiet_on_a_scan_the_model_is_meant_for(tmp_path: Path, capsys) -> None:
    model = MODELS / "hippocampus_unet.segmodel"
    out = tmp_path / "m.nii.gz"
    assert main(["predict", str(MSD_EXTRA), "--model", str(model), "--out", str(out), "--json"]) == 0
    stdout, err = capsys.readouterr()
    assert "warning:" not in err and json.loads(stdout)["warnings"] == []
    assert io.read(out).array.max() == 2


@needs_data
def test_cli_json_in_folder_mode_names_each_scans_warnings(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    io.write(io.read(MSD_EXTRA), folder / "crop.nii.gz")
    io.write(make_sample_3d(seed=0)[0], folder / "sample.nii.gz")
    model = MODELS / "demo3d_unet.segmodel"
    assert (
        main(["predict", str(folder), "--model", str(model), "--out", str(tmp_path / "out"), "--json"]) == 0
    )
    stdout, err = capsys.readouterr()
    scans = {Path(s["input"]).name: s for s in json.loads(stdout)["scans"]}
    assert scans["sample.nii.gz"]["warnings"] == []
    assert {"fov", "spacing"} <= {
        w.code for w in domain.scan_warnings(checkpoint.read_meta(model), io.read(folder / "crop.nii.gz"))
    }
    assert len(scans["crop.nii.gz"]["warnings"]) >= 2
    assert all(
        ln.startswith("warning: crop.nii.gz: ") for ln in err.splitlines() if ln.startswith("warning:")
    )


def test_cli_says_when_a_checkpoint_records_no_domain(tmp_path: Path, capsys) -> None:
    model, meta = tiny(2, classes=["background", "a", "b", "c"])
    path = checkpoint.save(tmp_path / "old.segmodel", model, meta)
    scan = io.write(make_sample_2d(seed=0)[0], tmp_path / "s.nii.gz")
    assert main(["predict", str(scan), "--model", str(path), "--out", str(tmp_path / "m.nii.gz")]) == 0
    assert "warning: the checkpoint does not record what it was trained on" in capsys.readouterr().err
