"""Never worse than starting fresh: a parent that does not fit the corrections is re-initialised.

A fine-tune keeps what its parent knows. That only helps when the parent knows something about the
corrected labels: starting from the shipped ``isbi2012_unet`` (EM membranes) and fine-tuning on two
JSRT chest X-rays reached lungs 0.84 on ten others, where the same fine-tune from an untrained model
reached 0.96. So before training, the parent is checked against the corrections:

- it must know at least one of the foreground classes painted in them (same label value and, where the
  caller names the class, the same name: value 1 "heart" is not the parent's value 1 "membrane");
- it must find at least one of them: on its best known class, its Dice on the validation voxels must not
  be near zero (``NEAR_ZERO_DICE``).

A parent that fails either is replaced by a fresh model of the same variant at the width the app builds
an untrained one (``defaults.FRESH_ARCH_ARGS``), trained at the from-scratch learning rate: what
starting fresh would have done, in the same budget. The child's card and provenance record what was
checked and which start won; acceptance then compares the child with the parent as usual. An untrained
parent is fresh already and is kept as it is.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..defaults import FRESH_ARCH_ARGS
from ..models import create_model
from .evaluation import finite_or_none, memory_format
from .loop import make_optimizer
from .plan import TrainingPlan

log = logging.getLogger(__name__)

#: Below this Dice on the classes it knows, a trained parent does not fit the corrections: it finds next
#: to nothing of them (an untrained width-8 U-Net scores 0.09 on two JSRT X-rays by chance).
NEAR_ZERO_DICE = 0.1


@dataclass
class ParentFit:
    """The check's outcome: does the parent fit, why not, and what the child started from."""

    fits: bool
    reason: str = ""
    known_classes: list[str] = dataclasses.field(default_factory=list)
    known_dice: float | None = None  # its best Dice on a class it knows
    start: str = "parent"  # "parent" or "fresh"
    fresh_arch_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """For the child's provenance and card: what was tried and which start won."""
        return {
            "start": self.start,
            "parent_fits": self.fits,
            "reason": self.reason,
            "known_classes": self.known_classes,
            "parent_best_dice_on_known_classes": finite_or_none(self.known_dice),
            **({"fresh_arch_args": self.fresh_arch_args} if self.start == "fresh" else {}),
        }


def assess_parent_fit(
    parent_name: str,
    names: list[str],
    n_parent_classes: int,
    renamed: set[int],
    present: set[int],
    per_class_dice: Mapping[int, float],
    untrained: bool,
) -> ParentFit:
    """Whether the parent knows the painted foreground classes (``present``, class indices) and finds
    them (its Dice per class on the validation voxels)."""
    known = sorted(c for c in present if 0 < c < n_parent_classes and c not in renamed)
    known_names = [names[c] for c in known]
    if untrained:
        return ParentFit(True, "the parent is untrained: it starts fresh already", known_names)
    wanted = ", ".join(names[c] for c in sorted(present) if c > 0) or "no foreground"
    if not known:
        return ParentFit(False, f"{parent_name} knows none of the corrected classes ({wanted})", known_names)
    scores = [per_class_dice.get(c, math.nan) for c in known]
    dice = max((s for s in scores if not math.isnan(s)), default=math.nan)
    if math.isnan(dice) or dice < NEAR_ZERO_DICE:
        return ParentFit(
            False,
            f"{parent_name} scores Dice {dice:.3f} at best on the classes it knows ({', '.join(known_names)}), "
            f"below {NEAR_ZERO_DICE}",
            known_names,
            dice,
        )
    return ParentFit(True, "", known_names, dice)


def fresh_arch_args(parent_args: Mapping[str, Any]) -> dict[str, Any]:
    """The parent's model arguments at the app's from-scratch width (every variant takes ``features``)."""
    return {**dict(parent_args), **FRESH_ARCH_ARGS}


def start_fresh(plan: TrainingPlan, meta: Any, fit: ParentFit, lr: float, seed: int) -> None:
    """Replace the plan's model by a fresh one of the parent's variant at the from-scratch width, with
    its own optimiser at ``lr`` (no grown head, nothing frozen: everything is to be learned)."""
    args = fresh_arch_args(meta.arch_args)
    torch.manual_seed(seed)
    model = create_model(meta.architecture, meta.spatial_dims, meta.in_channels, plan.n_classes, **args)
    model = model.to(plan.compute.device)
    if plan.compute.channels_last:
        model = model.to(memory_format=memory_format(meta.spatial_dims, True))
    plan.model = model
    plan.schedule = dataclasses.replace(plan.schedule, lr=lr, head_params=())
    plan.optimizer = make_optimizer(model, plan.schedule)
    fit.start, fit.fresh_arch_args = "fresh", args
    log.info("%s; training a fresh %s %s instead", fit.reason, meta.architecture, args)
