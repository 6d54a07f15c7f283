"""Score checkpoints on a zoo recipe's held-back split: one file, or several as an ensemble.

The zoo's targets are mean Dice on the split that training held back (``split.json`` in the run
folder, fixed by image hash). This scores any candidate the same way ``package.py`` scores a shipped
model, through the app's inference, so alternatives (another run, an ensemble of runs, test-time
flips, a membrane threshold) can be weighed before one is shipped.

    .venv/bin/python benchmarks/zoo_eval.py hippocampus_unet resources/models/hippocampus_unet.segmodel
    .venv/bin/python benchmarks/zoo_eval.py hippocampus_unet A.segmodel B.segmodel     # mean of A and B
    .venv/bin/python benchmarks/zoo_eval.py isbi2012_unet M.segmodel --thresholds 0.3 0.4 0.5

``--run`` names the run folder whose ``split.json`` to use (default: the recipe's ``split``, else its
``out``); a fresh clone has none until the recipe is trained once (or its data prepared with
``resources/recipes/prepare_data.py``), but every run of a recipe writes the same split. For
``hc18_fetal_head`` the held-back images are scored at their own resolution and the head
circumference error (mm) is reported too, as on the shipped card.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "resources" / "recipes"))

import package  # noqa: E402  (resources/recipes/package.py: the shipped models' cards and scoring)

from seg_studio.core import checkpoint, metrics  # noqa: E402
from seg_studio.core.compare import evaluate_checkpoint, held_out_pairs  # noqa: E402
from seg_studio.core.inference import PredictOptions, describe_hardware, predict  # noqa: E402
from seg_studio.core.models.ensemble import Ensemble  # noqa: E402
from seg_studio.core.training import load_recipe, pairs_from_folders  # noqa: E402
from seg_studio.core.training.data import (  # noqa: E402
    IGNORE_INDEX,
    apply_label_map,
    parse_label_map,
    read_pair,
)


def threshold_sweep(paths: list[str], pairs: list, recipe: dict, thresholds: list[float]) -> dict[str, float]:
    """Foreground Dice of a one-class model at each probability cut (the app cuts at the argmax, 0.5)."""
    model, meta = checkpoint.load(paths[0]) if len(paths) == 1 else Ensemble.from_checkpoints(paths)
    if len(meta.classes) != 2:
        sys.exit("--thresholds needs a model with one foreground class")
    lmap = parse_label_map(recipe.get("label_map"))
    scores: dict[float, list[float]] = {t: [] for t in thresholds}
    for src in pairs:
        image, labels = read_pair(src)
        truth = apply_label_map(labels.array, lmap, recipe.get("ignore_value"))
        fg = np.asarray(predict(image, model, meta, PredictOptions(device="cpu", probabilities=True))
                        .probabilities.array)[1]  # fmt: skip
        for t in thresholds:
            cut = (fg > t).astype(np.uint8)
            scores[t].append(metrics.dice(cut, truth, classes=[1], ignore=IGNORE_INDEX)[1])
    return {str(t): round(float(np.mean(v)), 4) for t, v in scores.items()}


def _with_model_spacing(path: Path, info: dict | None, tmp: Path) -> Path:
    """A run's checkpoint as package.py will ship it: with the spacing its data was resampled to.

    Training does not store a spacing (the run trained on data already at it); package.py writes it
    into the shipped file so the app resamples scans. A candidate gets the same, in a temporary copy.
    """
    spacing = (info or {}).get("model_spacing")
    if not spacing:
        return path
    model, meta = checkpoint.load(path)
    if meta.spacing is not None:
        return path
    meta.spacing = tuple(float(v) for v in spacing)
    return checkpoint.save(tmp / f"{len(list(tmp.iterdir()))}_{path.name}", model, meta)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", help="a recipe name in resources/recipes (e.g. hippocampus_unet)")
    ap.add_argument("checkpoints", nargs="+", type=Path, help="one .segmodel, or several for an ensemble")
    ap.add_argument("--run", type=Path, help="run folder with split.json (default: the recipe's out)")
    ap.add_argument("--tta", action="store_true", help="test-time flips (along the axes trained mirrored)")
    ap.add_argument(
        "--thresholds", nargs="*", type=float, help="2-class models: foreground Dice at these thresholds"
    )
    args = ap.parse_args()

    recipe = load_recipe(REPO / "resources" / "recipes" / f"{args.recipe}.toml")
    if args.run:
        split_path = args.run / "split.json"
    elif recipe.get("split"):  # a split written by resources/recipes/prepare_data.py
        split_path = REPO / recipe["split"]
    else:
        split_path = REPO / recipe["out"] / "split.json"
    if not split_path.exists():
        sys.exit(f"{split_path} does not exist: prepare the data / train the recipe once, or pass --run")
    info = package.ZOO.get(args.recipe)
    if info is not None:  # exactly the cases (and resolution) package.py scores a shipped model on
        pairs = package._validation_pairs(info, recipe, split_path)
    else:
        pairs = held_out_pairs(
            pairs_from_folders(REPO / recipe["images"], REPO / recipe["labels"]), split_path
        )
    tmp = tempfile.TemporaryDirectory()
    paths = [str(_with_model_spacing(p, info, Path(tmp.name))) for p in args.checkpoints]
    ev = evaluate_checkpoint(
        paths, pairs, recipe.get("label_map"), recipe.get("ignore_value"), device="cpu", tta=args.tta
    )
    out = {
        "checkpoints": [p.name for p in args.checkpoints],
        "cases": len(ev.cases),
        "tta": args.tta,
        "dice": {k: round(float(v), 4) for k, v in ev.dice.items()},
        "mean_dice": round(float(ev.mean_dice), 4),
        "hardware": describe_hardware(torch.device("cpu")),
    }
    if info is not None:  # clinical figures beyond Dice (HC18: head circumference error in mm)
        extra = package._extra_validation(info, [Path(p) for p in paths], split_path, args.tta)
        out.update(
            {k: v for k, v in extra.items() if not k.startswith("per_case") and not k.endswith("_how")}
        )
    if args.thresholds:
        out["dice_at_threshold"] = threshold_sweep(paths, pairs, recipe, args.thresholds)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
