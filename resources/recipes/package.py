"""Turn a finished training run into a shipped model: ``resources/models/<name>.segmodel`` + ``<name>.md``.

Usage (repository root, after ``seg-studio train resources/recipes/<name>.toml``):

    .venv/bin/python resources/recipes/package.py <name> [<name> ...]

What it does, for each name: reads the recipe and the run folder it names (``best.segmodel``,
``split.json``, ``history.json``); stores the weights as float16 (half the size; ``checkpoint.load``
casts them back); re-scores the STORED file on the run's held-back validation cases through the
app's own inference (``seg_studio.core.compare.evaluate_checkpoint``), so the card's Dice is the
shipped file's; computes the model's domain (``seg_studio.core.domain``: what it was trained on, and
what it produced on its validation cases); and writes the card and the domain into the checkpoint's
metadata and as Markdown beside it.

    .venv/bin/python resources/recipes/package.py --add-domain [<name> ...]

recomputes only the domain of already shipped files (no run folder needed: the training split is in
each file's provenance) and rewrites their metadata, keeping the stored weights byte for byte.

    .venv/bin/python resources/recipes/package.py --add-benchmark [<name> ...]

scores already shipped files on their shared benchmark (``BENCHMARKS``: the same held-back cases for
every model of a task, e.g. the 49 MSD hippocampus cases) and writes the figure into their cards, weights
untouched; the app's default among models that fit a scan is the best on the benchmark they share
(``seg_studio.core.domain.comparable_dice``). A file that trained on any benchmark case is refused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from seg_studio.core import checkpoint, domain
from seg_studio.core.compare import evaluate_checkpoint, held_out_pairs
from seg_studio.core.models import count_parameters
from seg_studio.core.training import load_recipe, pairs_from_folders

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "resources" / "recipes"
DATA = ROOT.parent / "shared" / "data"
MODELS = ROOT / "resources" / "models"

_SYNTHETIC = {
    "data": "synthetic scans made by code: seg_studio.core.samples ({fn}, seeds 1..N; seed 0, which the app,"
    " 'seg-studio demo' and the self-test open, is never trained on). Written by resources/recipes/make_demo_data.py",
    "terms": "generated data; the model ships under seg_studio's own licence (BSD-3-Clause)",
    "citation": "none needed",
    "intended_use": "the app's first run, 'seg-studio demo' and the installation self-test. Not for real scans.",
    "synthetic": True,
    # where tests/core/test_zoo.py finds the held-back cases again: regenerated from the seed in the name
    "eval_data": {"kind": "sample"},
}
_MSD = {
    "data": "Medical Segmentation Decathlon Task04 Hippocampus (Vanderbilt University Medical Center): the 45 dev"
    " cases in ../shared/data/msd_task04_hippocampus (a random subset of the 260 training cases), T1 MRI crops",
    "terms": "CC BY-SA 4.0 (the MSD licence): attribution and share-alike apply to these weights",
    "citation": "Simpson et al. 2019, arXiv:1902.09063; Antonelli et al. 2022, Nat. Commun. 13:4128",
    "intended_use": "research: hippocampus head/body+tail in 1 mm T1 MRI crops like MSD Task04's. Not a medical device.",
    "modality": "MR",
    "expected_input": "a T1 MRI crop of about 35 x 50 x 35 mm around one hippocampus at 1 mm voxels, as in MSD"
    " Task04 (not a whole head)",
    "eval_data": {
        "kind": "folders",
        "images": "msd_task04_hippocampus/images",
        "labels": "msd_task04_hippocampus/labels",
    },
}
_ISBI = {
    "data": "ISBI 2012 EM segmentation challenge training stack (serial-section TEM, Drosophila first-instar larva"
    " VNC; Cardona et al. 2010), the 22 PNG slices in ../shared/data/isbi2012_em_membrane; labels inverted so"
    " that membrane = 1",
    "terms": "ISBI 2012 challenge terms: non-commercial use only; publications must cite TrakEM2 and Cardona et al. 2010",
    "citation": "Cardona A. et al., 'An Integrated Micro- and Macroarchitectural Analysis of the Drosophila Brain by"
    " Computer-Assisted Serial Section Electron Microscopy', PLoS Biol 8(10): e1000502 (2010); TrakEM2"
    " (Cardona et al., PLoS ONE 7(6): e38011, 2012)",
    "intended_use": "research, non-commercial: neuronal membranes in ssTEM slices at about 4 nm/pixel",
    "modality": "EM",
    "expected_input": "a 512 x 512 serial-section TEM image of neural tissue at about 4 nm/pixel, 8-bit grey, as in"
    " the ISBI 2012 stack",
    "eval_data": {
        "kind": "folders",
        "images": "isbi2012_em_membrane/images",
        "labels": "isbi2012_em_membrane/labels",
    },
}

_HC18 = {
    "data": "HC18 grand challenge training set (van den Heuvel et al. 2018): 500 of its 999 2D B-mode ultrasound"
    " images of the fetal head in ../shared/data/hc18_fetal_head_ultrasound. Each sonographer's ellipse outline"
    " became the head mask (the ellipse fitted to the outline's pixels, which reproduces the CSV's head"
    " circumference to 0.006 mm), each image got the CSV's pixel size and was resampled to 0.5 mm"
    " (resources/recipes/prepare_data.py hc18)",
    "terms": "CC BY 4.0 (HC18, Zenodo record 1327317): attribution applies to these weights (cite below)",
    "citation": "van den Heuvel T.L.A., de Bruijn D., de Korte C.L., van Ginneken B., 'Automated measurement of"
    " fetal head circumference using 2D ultrasound images', PLoS ONE 13(8): e0200412 (2018)",
    "intended_use": "research: the fetal head outline in 2D obstetric ultrasound, and from the ellipse fitted to it"
    " the head circumference (HC), biparietal (BPD) and occipito-frontal (OFD) diameters"
    " (seg_studio.core.biometry.measure_head). Not a medical device: a sonographer checks every measurement.",
    "modality": "US",
    # one ultrasound frame: a 3D volume (or a stack of frames) does not fit the model
    "slice_by_slice": False,
    "expected_input": "2D gray-scale B-mode ultrasound of the fetal head in the standard HC plane, probe at the"
    " top, with its TRUE pixel size (training: 0.054-0.39 mm/pixel, fields of view 43-315 mm wide, heads of"
    " 44-331 mm HC). The model resamples the scan to 0.5 mm, so a wrong pixel size (a PNG stores none: 1 mm is"
    " then assumed) gives a wrong mask and a wrong HC",
    "spacing": "0.5 x 0.5 mm (stored in the model: the app resamples every scan to it from the scan's own pixel size)",
    "model_spacing": (0.5, 0.5),
    "report_tta": True,
    # what ran: the recipe's 4000 steps, then resumed with a longer budget (a warm restart of the cosine)
    "command": "seg-studio train resources/recipes/hc18_fetal_head.toml &&"
    " seg-studio train resources/recipes/hc18_fetal_head.toml --resume --steps 6000",
    "held_back": "10 % of the fetuses, chosen by SHA-256 of the fetus number so that all images of a fetus are"
    " on one side, each image scored at its own resolution against the mask made from its outline",
    "eval_data": {"kind": "hc18", "folder": "hc18_fetal_head_ultrasound"},
}
_SUNNYBROOK = {
    "data": "Sunnybrook Cardiac Data (Radau et al. 2009; heart failure with infarction): the 74 contoured cine"
    " short-axis SSFP MRI images (GE Signa HDx, 256 x 256, 1.29-1.37 mm) of 4 patients in"
    " ../shared/data/sunnybrook_cardiac_mri, two phases per slice position; each endocardium contour filled"
    " as the blood pool on the DICOM image of its instance number (resources/recipes/prepare_data.py sunnybrook)",
    "terms": "CC0 1.0 (public domain dedication, per the Cardiac Atlas Project): no conditions; please cite below",
    "citation": "Radau P., Lu Y., Connelly K., Paul G., Dick A.J., Wright G.A., 'Evaluation Framework for"
    " Algorithms Segmenting Short Axis Cardiac MRI', The MIDAS Journal - Cardiac MR Left Ventricle"
    " Segmentation Challenge (2009)",
    "intended_use": "research: the left-ventricle blood pool (cavity area per image; volume per patient from"
    " the slices) in cine short-axis MRI. Trained on 3 patients: expect it to fail on other scanners,"
    " sequences and pathologies. Not a medical device.",
    "modality": "MR",
    "expected_input": "one 2D cine short-axis SSFP MRI image (one phase at one slice position, e.g. one DICOM"
    " file of a cine series) at about 1.3-1.4 mm in-plane, the heart within a ~330-350 mm field of view;"
    " mid-ventricular to apical slices, as contoured in the training data",
    "spacing": "native (trained on 1.29-1.37 mm pixels; resample scans far from that)",
    "held_back": "one whole patient, SCD0000201 (the first by SHA-256 of the patient id), all its contoured images."
    " With 4 patients there is no separate patient to choose the checkpoint on: the step kept (best.segmodel)"
    " is the one with the best mean per-image Dice on this patient, so the figure is optimistic (the run's"
    " validations from step 1100 on ranged 0.860-0.887; its last step, 2000, gives a per-image mean of 0.8643,"
    " one small apical image missed, and a pooled Dice of 0.9441)",
    "eval_data": {"kind": "sunnybrook", "folder": "sunnybrook_cardiac_mri"},
}

_MSD_245 = {
    **_MSD,
    "data": "Medical Segmentation Decathlon Task04 Hippocampus (Vanderbilt University Medical Center): all 245"
    " pairs here, the 45 dev cases of ../shared/data/msd_task04_hippocampus and the 200 of"
    " msd_task04_hippocampus_extra, T1 MRI crops (resources/recipes/prepare_data.py hippocampus)",
    "held_back": "49 cases: the 9 the 45-case models were validated on and 20 % of the 200 extra cases, both"
    " by image hash",
    # the held-back cases lie in either folder (test_zoo looks in each)
    "eval_data": {
        "kind": "folders",
        "images": ["msd_task04_hippocampus/images", "msd_task04_hippocampus_extra/images"],
        "labels": ["msd_task04_hippocampus/labels", "msd_task04_hippocampus_extra/labels"],
    },
}

#: Shared benchmarks: one recipe's held-back split, scored for every model of its task, so that the
#: app compares models on the same cases (cards' own validation sets differ: 9 or 49 hippocampus cases).
BENCHMARKS: dict[str, dict[str, str]] = {
    "msd_hippocampus_49": {
        "recipe": "hippocampus_unet_245",
        "how": "the 49 held-back cases of hippocampus_unet_245's split (runs/data/hippocampus/split.json: the 9"
        " cases the 45-case models were validated on and 20 % of the 200 extra cases, by image hash), none"
        " trained on by any model scored on it; the stored file through seg_studio.core.inference, no TTA",
    },
}

ZOO: dict[str, dict[str, Any]] = {
    "demo2d_unet": {
        **_SYNTHETIC,
        "data": _SYNTHETIC["data"].format(fn="make_sample_2d"),
        "title": "Demo 2D U-Net (synthetic chest film: lungs and heart)",
        "modality": "X-ray",
        "expected_input": "seg_studio's synthetic 2D sample (a drawn 128 x 128 chest film at 0.5 mm); not a real X-ray",
        "spacing": "0.5 x 0.5 mm (the sample's); runs at the scan's own spacing",
    },
    "demo3d_unet": {
        **_SYNTHETIC,
        "data": _SYNTHETIC["data"].format(fn="make_sample_3d"),
        "title": "Demo 3D U-Net (synthetic MR: organ, lesion, vessel)",
        "modality": "MR",
        "expected_input": "seg_studio's synthetic 3D sample (48 x 64 x 64 at 0.9 x 0.9 x 2.5 mm); not a real scan",
        "spacing": "0.9 x 0.9 x 2.5 mm (the sample's); runs at the scan's own spacing",
    },
    "hippocampus_unet": {
        **_MSD,
        "benchmark": "msd_hippocampus_49",
        "title": "3D U-Net, hippocampus anterior/posterior (MSD Task04)",
        "spacing": "1.0 x 1.0 x 1.0 mm (trained at the data's native spacing; resample other scans to 1 mm)",
    },
    "hippocampus_attention_unet": {
        **_MSD,
        "benchmark": "msd_hippocampus_49",
        "title": "3D Attention U-Net, hippocampus anterior/posterior (MSD Task04); attention-gate maps",
        "spacing": "1.0 x 1.0 x 1.0 mm (trained at the data's native spacing; resample other scans to 1 mm)",
    },
    "isbi2012_unet": {
        **_ISBI,
        "title": "2D U-Net, EM neuronal membranes (ISBI 2012)",
        "spacing": "4 x 4 nm per pixel (the stack's published spacing; the PNGs store none)",
    },
    "isbi2012_attention_unet": {
        **_ISBI,
        "title": "2D Attention U-Net, EM neuronal membranes (ISBI 2012); attention-gate maps",
        "spacing": "4 x 4 nm per pixel (the stack's published spacing; the PNGs store none)",
    },
    "hippocampus_unet_245": {
        **_MSD_245,
        "benchmark": "msd_hippocampus_49",
        "title": "3D U-Net, hippocampus anterior/posterior (MSD Task04, all 245 cases)",
        "spacing": "1.0 x 1.0 x 1.0 mm (trained at the data's native spacing; resample other scans to 1 mm)",
        # what ran: the recipe, stopped twice by the shared machine (steps 500 and 1500) and continued
        "command": "seg-studio train resources/recipes/hippocampus_unet_245.toml &&"
        " seg-studio train resources/recipes/hippocampus_unet_245.toml --resume",
        "checkpoint": "last",
        "training_note": "The run was stopped twice (at steps 501 and 1850) and continued with --resume from"
        " its last checkpoint (steps 500 and 1500: optimiser, step and clock restored, the steps after it"
        " run again). The training time is the loop's own clock over the parts kept, on a 2-core CPU shared"
        " by about five engineers (load 2-12). The file is the run's last step (8000, the end of the cosine"
        " schedule): the loop's best validation (step 2500, 0.8814) was chosen on these same 49 cases, the"
        " last was not, and scores as well (0.8821 against 0.8815 through the app's inference).",
    },
    "hippocampus_attention_unet_245": {
        **_MSD_245,
        "benchmark": "msd_hippocampus_49",
        "title": "3D Attention U-Net, hippocampus anterior/posterior (MSD Task04, all 245 cases); attention-gate"
        " maps",
        "spacing": "1.0 x 1.0 x 1.0 mm (trained at the data's native spacing; resample other scans to 1 mm)",
    },
    "hc18_fetal_head": {
        **_HC18,
        "title": "2D U-Net, fetal head in obstetric ultrasound (HC18); HC, BPD and OFD from the fitted ellipse",
    },
    "sunnybrook_lv": {
        **_SUNNYBROOK,
        "title": "2D U-Net, left-ventricle blood pool in cine short-axis MRI (Sunnybrook)",
    },
}

#: Card fields every shipped checkpoint must have (tests/core/test_zoo.py checks them).
REQUIRED = ("name", "title", "data", "terms", "citation", "classes", "spacing", "validation", "training")


def _r(v: float, n: int = 4) -> float | str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return round(float(v), n)


def _mean(values: Any) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _hardware(settings: dict[str, Any]) -> str:
    """How the run trained, from its own provenance (precision as the training loop resolved it).

    Runs from before provenance named the hardware trained on the 2-core development CPU; under
    ``precision = "auto"`` a bf16 CPU run means that CPU had native bf16 (auto picks it only then).
    """
    precision = settings.get("precision") or "?"
    hardware = settings.get("hardware")
    if not hardware:
        native = "native bf16" if precision == "torch.bfloat16" else "no native bf16"
        hardware = f"the 2-core development CPU (AMD EPYC, {native}), no GPU"
    return f"device {settings.get('device') or '?'}, precision {precision}; {hardware}"


def _recipe_folder(recipe: dict[str, Any], key: str) -> Path:
    p = Path(recipe[key])
    return p if p.is_absolute() else ROOT / p


def _cases(name: str, meta: checkpoint.ModelMeta) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """The model's training pairs (image, class-value labels) and validation images, found again from
    the split in its provenance: synthetic cases are regenerated from the seed in their name, the
    others read from the recipe's folders."""
    from seg_studio.core.samples import make_sample_2d, make_sample_3d
    from seg_studio.core.training.data import apply_label_map, image_hash, parse_label_map, read_pair

    split = meta.provenance.get("split") or {}
    train_ids, val_ids = set(split.get("train", [])), set(split.get("val", []))
    recipe = load_recipe(RECIPES / f"{name}.toml")
    if ZOO[name].get("synthetic"):
        make = make_sample_2d if meta.spatial_dims == 2 else make_sample_3d
        names = (meta.provenance.get("data") or {}).get("cases", {}).values()
        loaded = [make(seed=int(n.rsplit("_", 1)[1])) for n in sorted(names)]
        loaded = [(img, lab.array) for img, lab in loaded]
    else:
        lmap = parse_label_map(recipe.get("label_map"))
        pairs = pairs_from_folders(_recipe_folder(recipe, "images"), _recipe_folder(recipe, "labels"))
        loaded = []
        for src in pairs:
            img, lab = read_pair(src)
            loaded.append((img, apply_label_map(lab.array, lmap, recipe.get("ignore_value"))))
    train = [(img, lab) for img, lab in loaded if image_hash(img.array) in train_ids]
    val = [img for img, _ in loaded if image_hash(img.array) in val_ids]
    if len(train) != len(train_ids) or len(val) != len(val_ids):
        sys.exit(
            f"{name}: found {len(train)}/{len(train_ids)} training and {len(val)}/{len(val_ids)} validation cases"
            " of the split stored in the checkpoint; is the data in ../shared/data complete?"
        )
    return train, val


def compute_domain(name: str, model: Any, meta: checkpoint.ModelMeta) -> domain.Domain:
    """The shipped model's domain: its training cases' geometry and intensities, and what the stored
    model produces on its held-back validation cases."""
    info = ZOO[name]
    train, val = _cases(name, meta)
    return domain.domain_from_pairs(
        train,
        meta,
        model=model,
        validation=val,
        modality=info.get("modality"),
        expected_input=info.get("expected_input", ""),
        synthetic=bool(info.get("synthetic")),
        slice_by_slice=bool(info.get("slice_by_slice", True)),
        device="cpu",
    )


def add_domain(name: str) -> Path:
    """Give an already shipped model its domain; the weights stay byte for byte as they are."""
    path = MODELS / f"{name}.segmodel"
    model, meta = checkpoint.load(path)
    meta.domain = compute_domain(name, model, meta)
    checkpoint.replace_meta(path, meta)
    (MODELS / f"{name}.md").write_text(card_markdown(meta.card, path, meta.domain))
    sys.stdout.write(f"{path.relative_to(ROOT)}: domain: {'; '.join(domain.describe(meta.domain))}\n")
    return path


def score_benchmark(name: str, path: Path, meta: checkpoint.ModelMeta, ev: Any = None) -> dict[str, Any]:
    """The model's figures on its task's shared benchmark, as a card's ``validation.benchmarks``
    (``ev``: the model's own validation, when its recipe is the benchmark's: the same cases)."""
    bench = ZOO[name].get("benchmark")
    if not bench:
        return {}
    spec = BENCHMARKS[bench]
    recipe = load_recipe(RECIPES / f"{spec['recipe']}.toml")
    split_path = (
        _root_path(recipe["split"]) if recipe.get("split") else _root_path(recipe["out"]) / "split.json"
    )
    from seg_studio.core.training.data import Split

    cases = set(Split.read(split_path).val)
    trained = set((meta.provenance.get("split") or {}).get("train") or [])
    if not trained:
        sys.exit(f"{name}: its file records no training split, so it cannot be checked against {bench}")
    if trained & cases:
        sys.exit(f"{name}: trained on {len(trained & cases)} of {bench}'s cases; it cannot be scored on it")
    if ev is None or spec["recipe"] != name:
        pairs = _validation_pairs(ZOO[spec["recipe"]], recipe, split_path)
        ev = evaluate_checkpoint(
            path, pairs, recipe.get("label_map"), recipe.get("ignore_value"), device="cpu"
        )
    return {
        bench: {
            "mean_dice": _r(ev.mean_dice),
            "dice": {k: _r(v) for k, v in ev.dice.items()},
            "hd95_mm": {k: _r(v, 3) for k, v in ev.hd95_mm.items()},
            "cases": len(ev.cases),
            "how": spec["how"],
        }
    }


def add_benchmark(name: str) -> Path:
    """Score an already shipped model on its shared benchmark; the weights stay byte for byte."""
    path = MODELS / f"{name}.segmodel"
    meta = checkpoint.read_meta(path)
    figures = score_benchmark(name, path, meta)
    if not figures:
        sys.exit(f"{name} has no shared benchmark in package.py's ZOO")
    meta.card["validation"]["benchmarks"] = {**(meta.card["validation"].get("benchmarks") or {}), **figures}
    checkpoint.replace_meta(path, meta)
    (MODELS / f"{name}.md").write_text(card_markdown(meta.card, path, meta.domain))
    for bench, b in figures.items():
        sys.stdout.write(f"{path.relative_to(ROOT)}: {bench}: mean Dice {b['mean_dice']} {b['dice']}\n")
    return path


def package(name: str) -> Path:
    info = ZOO[name]
    recipe_path = RECIPES / f"{name}.toml"
    recipe = load_recipe(recipe_path)
    run = ROOT / recipe["out"]
    # "last": the end of the schedule, when the best validation step would be chosen on the held-back cases
    best = run / f"{info.get('checkpoint', 'best')}.segmodel"
    if not best.exists():
        sys.exit(
            f"{best} does not exist: train first with 'seg-studio train {recipe_path.relative_to(ROOT)}'"
        )
    model, meta = checkpoint.load(best)
    if info.get("model_spacing"):  # trained on data resampled to one spacing: the app resamples scans to it
        meta.spacing = tuple(float(v) for v in info["model_spacing"])
    out = MODELS / f"{name}.segmodel"
    MODELS.mkdir(parents=True, exist_ok=True)
    checkpoint.save(out, model, meta, dtype=torch.float16)

    split_path = _root_path(recipe["split"]) if recipe.get("split") else run / "split.json"
    val_pairs = _validation_pairs(info, recipe, split_path)
    ev = evaluate_checkpoint(
        out, val_pairs, recipe.get("label_map"), recipe.get("ignore_value"), device="cpu"
    )
    extra = _extra_validation(info, out, split_path)
    if info.get("report_tta"):  # the same cases with the app's flip TTA (predict --tta, the panel's TTA box)
        ev_tta = evaluate_checkpoint(
            out, val_pairs, recipe.get("label_map"), recipe.get("ignore_value"), device="cpu", tta=True
        )
        extra["with_tta"] = {
            "mean_dice": _r(ev_tta.mean_dice),
            **{
                k: v
                for k, v in _extra_validation(info, out, split_path, tta=True).items()
                if k.startswith("hc_m")
            },
        }

    history = json.loads((run / "history.json").read_text())
    prov = meta.provenance
    pm = prov.get("metrics", {})
    train_s = max((h.get("seconds") or 0) for h in history) if history else None
    classes = [{"value": c.value, "name": c.name} for c in meta.classes]
    card = {
        "name": name,
        "title": info["title"],
        "architecture": meta.architecture,
        "arch_args": meta.arch_args,
        "spatial_dims": meta.spatial_dims,
        "parameters": count_parameters(model),
        "data": info["data"],
        "terms": info["terms"],
        "citation": info["citation"],
        "intended_use": info["intended_use"],
        "classes": classes,
        "label_map": recipe.get("label_map"),
        "eval_data": {**info["eval_data"], "note": "folders relative to ../shared/data (not shipped)"}
        if info["eval_data"]["kind"] != "sample"
        else info["eval_data"],
        "spacing": info["spacing"],
        "expected_input": info.get("expected_input"),
        "normalization": meta.normalization,
        "patch_size": list(meta.patch_size),
        "validation": {
            "mean_dice": _r(ev.mean_dice),
            "dice": {k: _r(v) for k, v in ev.dice.items()},
            "hd95_mm": {k: _r(v, 3) for k, v in ev.hd95_mm.items()},
            "cases": [c["case"] for c in ev.cases],
            "per_case_mean_dice": {c["case"]: _r(_mean(c["dice"].values())) for c in ev.cases},
            "how": "the stored float16 file, segmented through seg_studio.core.inference (sliding window,"
            " overlap 0.5, no TTA) on the run's held-back split: "
            + info.get("held_back", "20 % of the dev cases, chosen by image hash"),
            "training_loop_best_val_dice": pm.get("best_val_dice"),
            **extra,
        },
        "training": {
            "command": info.get("command", f"seg-studio train resources/recipes/{name}.toml"),
            "recipe": f"resources/recipes/{name}.toml",
            "package": f"python resources/recipes/package.py {name}",
            "train_cases": pm.get("train_cases"),
            "best_step": pm.get("best_step"),
            **({"kept_step": pm.get("step")} if info.get("checkpoint") == "last" else {}),
            "steps": history[-1]["step"] if history else None,
            "seconds": _r(train_s, 0),
            "hardware": _hardware(prov.get("settings", {})),
            "date": prov.get("date"),
            **({"note": info["training_note"]} if info.get("training_note") else {}),
        },
        "storage": "float16 weights (safetensors)",
        "packaged": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if info.get("benchmark"):  # the same cases scored for every model of the task: what the app ranks by
        card["validation"]["benchmarks"] = score_benchmark(name, out, meta, ev)
    meta.card = card
    meta.domain = compute_domain(name, model, meta)
    checkpoint.save(out, model, meta, dtype=torch.float16)
    (MODELS / f"{name}.md").write_text(card_markdown(card, out, meta.domain))
    sys.stdout.write(
        f"{out.relative_to(ROOT)}: {out.stat().st_size / 1e6:.2f} MB, mean Dice {ev.mean_dice:.4f} {ev.dice}\n"
    )
    return out


def _domain_markdown(dom: domain.Domain | None) -> str:
    if dom is None:
        return ""
    lines = "\n".join(f"- {line}" for line in domain.describe(dom))
    return f"""
**Domain** (what it was trained on; the app and `seg-studio predict` warn about scans outside it, see
[docs/model_domains.md](../../docs/model_domains.md)):

{lines}
"""


def _root_path(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else ROOT / p


def _validation_pairs(info: dict[str, Any], recipe: dict[str, Any], split_path: Path) -> list[Any]:
    """The held-back cases to score: HC18's at each image's own resolution, else the recipe's folders."""
    if info["eval_data"]["kind"] == "hc18":
        from seg_studio.core.datasets import hc18

        return hc18.held_back_pairs(DATA / info["eval_data"]["folder"], split_path)
    images, labels = _root_path(recipe["images"]), _root_path(recipe["labels"])
    return held_out_pairs(pairs_from_folders(images, labels), split_path)


def _extra_validation(
    info: dict[str, Any], out: Path | list[Path], split_path: Path, tta: bool = False
) -> dict[str, Any]:
    """Clinical figures beyond Dice: HC18's head circumference error (mm), Sunnybrook's blood pool."""
    if info["eval_data"]["kind"] == "sunnybrook":
        return _blood_pool_validation(info, out, split_path)
    if info["eval_data"]["kind"] != "hc18":
        return {}
    from seg_studio.core.datasets import hc18

    folder = DATA / info["eval_data"]["folder"]
    bio = hc18.evaluate_biometry(out, folder, hc18.held_back_names(split_path), tta=tta)
    return {
        "hc_mean_abs_error_mm": _r(bio["mean_abs_hc_error_mm"], 3),
        "hc_max_abs_error_mm": _r(bio["max_abs_hc_error_mm"], 3),
        "hc_mean_error_mm": _r(bio["mean_hc_error_mm"], 3),
        "hc_failed": bio["failed"],
        "per_case_hc_abs_error_mm": {
            n: None if c["hc_mm"] is None else _r(abs(c["hc_mm"] - c["reference_hc_mm"]), 3)
            for n, c in bio["cases"].items()
        },
        "hc_how": "head circumference of the ellipse fitted to the predicted mask"
        " (seg_studio.core.biometry.measure_head, Ramanujan perimeter) against the sonographer's HC in the CSV",
    }


def _blood_pool_validation(info: dict[str, Any], out: Path | list[Path], split_path: Path) -> dict[str, Any]:
    """The held-back patient's blood pool: pooled (volume) Dice, cavity area and volume per phase."""
    from seg_studio.core.datasets import sunnybrook
    from seg_studio.core.training.data import Split

    split = Split.read(split_path)
    (patient,) = {split.names[h].rsplit("_", 1)[0] for h in split.val}
    path = out if isinstance(out, Path) else out[0]
    folder = DATA / info["eval_data"]["folder"]
    r = sunnybrook.evaluate_blood_pool(path, folder, patient)
    # the LV cavity is one piece: what keeping only the largest one (predict --largest-component) gives
    lcc = sunnybrook.evaluate_blood_pool(path, folder, patient, postprocess={"largest_component": True})
    return {
        "blood_pool_largest_component": {
            "pooled_dice": _r(lcc["pooled_dice"]),
            "mean_image_dice": _r(lcc["mean_image_dice"]),
        },
        "patient": patient,
        "blood_pool_pooled_dice": _r(r["pooled_dice"]),
        "blood_pool_mean_image_dice": _r(r["mean_image_dice"]),
        "blood_pool_mean_abs_area_error_mm2": _r(r["mean_abs_area_error_mm2"], 1),
        "blood_pool_volume_ml": {
            f"phase {k}": {
                "contours": _r(v["volume_ml"], 1),
                "model": _r(v["pred_volume_ml"], 1),
                "slices": v["slices"],
            }
            for k, v in r["phases"].items()
        },
        "blood_pool_how": "pooled Dice: all pixels of the held-back patient's contoured images together (a volume"
        " Dice; small apical slices weigh by their size). Volumes: cavity area x slice gap"
        f" ({r['slice_gap_mm']:.2f} mm) summed over the contoured slices of each phase (phase = rank by instance"
        " number among the images at one slice position)",
    }


def _optional_rows(card: dict[str, Any]) -> str:
    """Table rows only some cards have: the expected input, the head circumference error."""
    rows = ""
    if card.get("expected_input"):
        rows += f"\n| Expected input | {card['expected_input']} |"
    v = card["validation"]
    if v.get("hc_mean_abs_error_mm") is not None:
        rows += (
            f"\n| **Head circumference error** | **{v['hc_mean_abs_error_mm']} mm** mean absolute"
            f" (bias {v['hc_mean_error_mm']} mm, worst {v['hc_max_abs_error_mm']} mm;"
            f" {len(v['hc_failed'])} image(s) without a head found) |"
        )
    if v.get("blood_pool_pooled_dice") is not None:
        vols = "; ".join(
            f"{k}: {x['model']} ml (contours {x['contours']} ml, {x['slices']} slices)"
            for k, x in v["blood_pool_volume_ml"].items()
        )
        rows += (
            f"\n| **Held-back patient {v['patient']}** | blood pool Dice **{v['blood_pool_pooled_dice']}** over all"
            f" its pixels (mean of per-image Dice {v['blood_pool_mean_image_dice']}); cavity area off by"
            f" {v['blood_pool_mean_abs_area_error_mm2']} mm² per image (mean absolute); volume {vols} |"
        )
    if v.get("blood_pool_largest_component"):
        lc = v["blood_pool_largest_component"]
        rows += (
            f"\n| With `--largest-component` | blood pool Dice {lc['pooled_dice']} pooled, per-image mean"
            f" {lc['mean_image_dice']} (same patient) |"
        )
    for bench, b in (v.get("benchmarks") or {}).items():
        dice = ", ".join(f"{k} {d}" for k, d in b["dice"].items())
        rows += (
            f"\n| Shared benchmark `{bench}` | mean Dice **{b['mean_dice']}** ({dice}) on {b['cases']} cases"
            " that every model of this task is scored on (the app's default is the best there) |"
        )
    if v.get("with_tta"):
        t = v["with_tta"]
        hc = (
            f", head circumference off by {t['hc_mean_abs_error_mm']} mm"
            if "hc_mean_abs_error_mm" in t
            else ""
        )
        rows += f"\n| With flip TTA (`--tta`) | mean Dice {t['mean_dice']}{hc} (same cases) |"
    return rows


def card_markdown(card: dict[str, Any], path: Path, dom: domain.Domain | None = None) -> str:
    v, t = card["validation"], card["training"]
    cls = ", ".join(f"{c['value']} = {c['name']}" for c in card["classes"])
    order = [c["name"] for c in card["classes"] if c["name"] in v["dice"]]  # class order, not JSON's
    dice = ", ".join(f"{k} {v['dice'][k]}" for k in order)
    hd = ", ".join(f"{k} {v['hd95_mm'][k]}" for k in order if k in v["hd95_mm"])
    size = path.stat().st_size / 1e6
    return f"""# {card["title"]}

`resources/models/{card["name"]}.segmodel` ({size:.2f} MB, {card["storage"]}) — `{card["architecture"]}`
{card["spatial_dims"]}D, {card["parameters"]:,} parameters, arguments `{json.dumps(card["arch_args"])}`.

| | |
|---|---|
| Classes | {cls} |
| Spacing | {card["spacing"]} |{_optional_rows(card)}
| Normalisation | `{json.dumps(card["normalization"])}` |
| Patch | {" x ".join(str(p) for p in card["patch_size"])} |
| **Validation mean Dice** | **{v["mean_dice"]}** on {len(v["cases"])} held-back case(s) |
| Dice per class | {dice} |
| HD95 per class (mm; pixels where no spacing is stored) | {hd} |
| Training | {t["steps"]} steps ({
        f"the last, step {t['kept_step']}, kept; the loop's best validation was at step {t['best_step']}"
        if t.get("kept_step")
        else f"best at step {t['best_step']}"
    }), {t["seconds"]} s on {t["hardware"]}; {t["train_cases"]} training cases |

**Data.** {card["data"]}.

**Terms.** {card["terms"]}.

**Cite.** {card["citation"]}.

**Intended use.** {card["intended_use"]}
{_domain_markdown(dom)}
**How the Dice was measured.** {v["how"]}.{" HC: " + v["hc_how"] + "." if v.get("hc_how") else ""}{
        " Patient: " + v["blood_pool_how"] + "." if v.get("blood_pool_how") else ""
    }
Held-back cases: {", ".join(v["cases"])}.

**Reproduce.**

```
{t["command"]}
{t["package"]}
```
{chr(10) + t["note"] + chr(10) if t.get("note") else ""}
The recipe (`{t["recipe"]}`) holds every setting; the run folder keeps `split.json`, so a re-run
validates on the same cases. The checkpoint's metadata holds this card (`seg-studio inspect`), the
data hashes of every case and the split.
"""


def _parameters(card: dict[str, Any], f: Path) -> int:
    """The card's parameter count, else counted from the weights (interactive cards do not carry it)."""
    if card.get("parameters"):
        return int(card["parameters"])
    model, _ = checkpoint.load(f)
    return sum(p.numel() for p in model.parameters())


def index_row(f: Path) -> str | None:
    """One row of docs/models_zoo.md from a shipped file's card (None for a file without one).

    An interactive card (``interactive: true``, written by ``benchmarks/clicks.py --package``) scores the
    model after simulated clicks and says so; an automatic card lists its per-class Dice."""
    card = checkpoint.read_meta(f).card
    if not card:
        return None
    v, t = card["validation"], card["training"]
    title = card["title"]
    if card.get("interactive"):
        title += "; interactive (needs clicks)"
        score = f"**{v['mean_dice']}** after {v['clicks']} simulated clicks ([clicks.md](clicks.md))"
    else:
        dice = ", ".join(f"{k} {d}" for k, d in v["dice"].items())
        if v.get("hc_mean_abs_error_mm") is not None:
            dice += f"; head circumference off by {v['hc_mean_abs_error_mm']} mm (mean absolute)"
        if v.get("blood_pool_pooled_dice") is not None:
            dice += f"; the patient's pixels pooled: {v['blood_pool_pooled_dice']}"
        for bench, b in (v.get("benchmarks") or {}).items():
            dice += f"; `{bench}` ({b['cases']} cases shared by the task's models): {b['mean_dice']}"
        score = f"**{v['mean_dice']}** ({dice})"
    return (
        f"| [`{f.name}`](../resources/models/{card['name']}.md) | {title} |"
        f" {_parameters(card, f) / 1e6:.2f} M, {f.stat().st_size / 1e6:.2f} MB | {score} |"
        f" {len(v['cases'])} | {t['steps']} steps, {t['seconds']:.0f} s | {card['terms'].split(':')[0]} |"
        f" `{t['command']}` |"
    )


def write_index(path: Path = ROOT / "docs" / "models_zoo.md") -> Path:
    """docs/models_zoo.md: one row per shipped checkpoint, read back from the cards in the files."""
    rows = [r for r in (index_row(f) for f in sorted(MODELS.glob("*.segmodel"))) if r is not None]
    text = f"""# Model zoo: the checkpoints seg_studio ships

Every file in `resources/models/` is an ordinary `.segmodel` (safetensors + JSON; float16 weights)
trained with `seg-studio train` from a recipe in `resources/recipes/`, and carries its model card in
its metadata (`seg-studio inspect FILE`) and as Markdown beside it. Only weights trained on MSD
(CC BY-SA 4.0), the ISBI 2012 stack (non-commercial, cite), HC18 (CC BY 4.0), Sunnybrook (CC0) or
seg_studio's own synthetic samples are shipped; DRIVE, JSRT and TCIA are used for tests and
benchmarks only.

"Validation Dice" is the stored file segmenting the run's held-back cases (a fixed split: 20 % of
the dev data by image hash, 10 % of the HC18 fetuses, one whole Sunnybrook patient; each card says
which) through the app's own inference; `tests/core/test_zoo.py` re-checks one of those cases for
every checkpoint (and, for `hc18_fetal_head`, its head circumference in mm; for `sunnybrook_lv`,
the held-back patient's pooled Dice and volumes). Training ran on the 2 CPU cores of the development
machine, so the step counts are small; the same recipe on a GPU (raise `max_steps`) trains further.

| file | model | size | validation mean Dice (per class) | cases | training | terms | command |
|---|---|---|---|---:|---|---|---|
{chr(10).join(rows)}

To reproduce one: `seg-studio train resources/recipes/NAME.toml`, then
`python resources/recipes/package.py NAME` (float16, re-score, card, Markdown) and
`python resources/recipes/package.py --index` (this page). The demo models need their data first:
`python resources/recipes/make_demo_data.py --out runs/data/demo`; HC18 and Sunnybrook too:
`python resources/recipes/prepare_data.py hc18` (or `sunnybrook`).

Each file also records its domain (what it was trained on); which scans in ../shared/data each model is
and is not meant for, with the warning each gets: [model_domains.md](model_domains.md).

What was tried to lift the hippocampus and ISBI models towards their targets (longer runs, mirroring,
instance norm, ensembles, thresholds), with figures and commands: [zoo_experiments.md](zoo_experiments.md).
Trained and not shipped, with the reasons there: the Sunnybrook blood pool + myocardium model
(myocardium Dice 0.644 from 28 training images). `hippocampus_attention_unet_245` is not trained yet
(`seg-studio train resources/recipes/hippocampus_attention_unet_245.toml`, resumable with `--resume`).

The three hippocampus models are also scored on one shared benchmark, `msd_hippocampus_49`: the 49
held-back cases of `hippocampus_unet_245` (none trained on by any of them). Their own validation sets
differ (9 or 49 cases), so the app's default for a hippocampus crop is the best on the shared cases
(`seg_studio.core.domain.comparable_dice`): `hippocampus_unet_245` 0.8821, `hippocampus_unet` 0.8767,
`hippocampus_attention_unet` 0.8752.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description="package trained runs as shipped models with model cards")
    p.add_argument("names", nargs="*", help=f"runs to package: {', '.join(sorted(ZOO))}")
    p.add_argument("--index", action="store_true", help="(re)write docs/models_zoo.md from the shipped cards")
    p.add_argument(
        "--add-domain",
        action="store_true",
        help="only (re)compute the domain of the named shipped models (all when none is named); weights untouched",
    )
    p.add_argument(
        "--add-benchmark",
        action="store_true",
        help="only score the named shipped models (all with one when none is named) on their shared benchmark",
    )
    a = p.parse_args()
    unknown = [n for n in a.names if n not in ZOO]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; choose from {', '.join(sorted(ZOO))}")
    if a.add_benchmark:
        shipped = [n for n in sorted(ZOO) if ZOO[n].get("benchmark") and (MODELS / f"{n}.segmodel").exists()]
        for name in a.names or shipped:
            add_benchmark(name)
        write_index()
        return
    if a.add_domain:
        for name in a.names or sorted(ZOO):
            add_domain(name)
        return
    for name in a.names:
        package(name)
    if a.index or a.names:
        write_index()


if __name__ == "__main__":
    main()
