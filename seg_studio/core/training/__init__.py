"""Training and one-click fine-tuning, shared by the CLI and the GUI (no Qt here).

- ``iter_fit(config, cancel)``: train a registered variant; yields Progress, returns FitResult.
- ``iter_finetune(checkpoint, pairs, out, budget_s, ..., cancel)``: corrected labels -> a NEW
  checkpoint naming its parent, with Dice before/after; returns FinetuneResult.
- ``IGNORE_INDEX``: the label value that means "not supervised" (untouched voxels of a correction).

Both build a ``plan.TrainingPlan`` and run it with the one loop, ``loop.run_plan``; what differs between
them (saving as it goes, a grown head, acceptance against the parent, a fresh start when the parent does
not fit, thread tuning, a series' replayed pairs) are steps and hooks around that loop.
"""

from __future__ import annotations

from .data import (
    IGNORE_INDEX,
    PairSource,
    Split,
    pairs_from_dataset_json,
    pairs_from_folders,
    parse_label_map,
)
from .finetune import DEFAULT_BUDGET_2D, DEFAULT_BUDGET_3D, FinetuneResult, default_budget, iter_finetune
from .fit import FitConfig, FitResult, iter_fit, load_recipe

__all__ = [
    "DEFAULT_BUDGET_2D",
    "DEFAULT_BUDGET_3D",
    "IGNORE_INDEX",
    "FinetuneResult",
    "FitConfig",
    "FitResult",
    "PairSource",
    "Split",
    "default_budget",
    "iter_finetune",
    "iter_fit",
    "load_recipe",
    "pairs_from_dataset_json",
    "pairs_from_folders",
    "parse_label_map",
]
