"""Whether a fine-tuned child is offered in place of its parent: better on the same voxels, or not at all.

Parent and child are scored on the same validation voxels, with the child's weights rounded to the
precision its file will hold (so what is scored is what is saved): held-back cases when there are
enough pairs, else the corrected region of the one scan (``corrected_region_labels``), else the
corrected pairs themselves. The child is offered only when it scores strictly higher *and* at least
``MIN_OFFERED_STEPS`` optimiser steps ran. A child that is not better is still written, flagged in its
card (and, where the caller asks, with ``.notbetter`` in its name), so nothing silently replaces a
better model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TrainingError
from ..models import SegModel
from ..progress import CancelToken, Progress
from .data import IGNORE_INDEX, Case
from .evaluation import validate
from .plan import TrainingPlan

#: Steps of the fine-tune's learning-rate warm-up (``finetune.FINETUNE_WARMUP_STEPS`` uses it).
WARMUP_STEPS = 10
#: The fewest optimiser steps after which a child is offered. Until the warm-up ends the learning rate has
#: not reached its base value, so a child of fewer steps is its parent nudged by a fraction of one
#: full-rate step per step: a 5 s budget that ran 2 steps reported "Dice 0.000 -> 0.000" and was selected.
MIN_OFFERED_STEPS = WARMUP_STEPS
#: The infix of a not-better child's file name: ``parent-ft-<stamp>.notbetter.segmodel``.
NOT_BETTER_INFIX = ".notbetter"


@dataclass
class Verdict:
    """The acceptance test's outcome: the two scores, and why the child is not offered ("" when it is)."""

    dice_parent: float
    dice_child: float
    steps: int
    scored_on: str
    reason: str = ""
    per_class_parent: dict[int, float] = field(default_factory=dict)
    per_class_child: dict[int, float] = field(default_factory=dict)

    @property
    def better(self) -> bool:
        return not self.reason

    def record(self) -> dict[str, Any]:
        """For the child's provenance."""
        from .evaluation import finite_or_none

        return {
            "better": self.better,
            "reason": self.reason,
            "dice_parent": finite_or_none(self.dice_parent),
            "dice_child": finite_or_none(self.dice_child),
            "steps": self.steps,
            "min_steps": MIN_OFFERED_STEPS,
            "scored_on": self.scored_on,
        }


def judge(before: float, after: float, steps: int, scored_on: str) -> str:
    """Why a child with Dice ``after`` (parent ``before``) after ``steps`` steps is not offered; "" if it is."""
    if steps < MIN_OFFERED_STEPS:
        return (
            f"only {steps} optimiser step(s) ran (at least {MIN_OFFERED_STEPS} are needed before a "
            "fine-tune is offered); give it a longer time budget"
        )
    if math.isnan(after) or math.isnan(before):
        return f"no foreground to score on the {scored_on}, so the fine-tune cannot be shown to be better"
    if after <= before:
        return f"the fine-tuned model scores Dice {after:.4f} on the {scored_on}, its parent {before:.4f}: not better"
    return ""


class Acceptance:
    """Scores the parent before training and the child after, on the same cases, and times the scoring
    (the fine-tune's deadline keeps room for the child's turn and the save)."""

    def __init__(self, plan: TrainingPlan, cases: Sequence[Case], scored_on: str) -> None:
        self.plan, self.cases, self.scored_on = plan, list(cases), scored_on
        self.before: dict[str, Any] = {}
        self.eval_s = 0.0

    def _score(self, model: SegModel, cancel: CancelToken | None) -> dict[str, Any]:
        if self.plan.validation.scorer is not None:  # e.g. an interactive model: Dice after clicks
            return self.plan.validation.scorer(model, self.cases, cancel)
        c = self.plan.compute
        return validate(
            model, self.cases, self.plan.n_classes, self.plan.batches.patch, c.device, c.autocast,
            c.channels_last, cancel,
        )  # fmt: skip

    def score_parent(self, parent: SegModel, cancel: CancelToken | None) -> Generator[Progress, None, None]:
        t = time.perf_counter()
        yield Progress(0, 1, "evaluate", f"measuring the parent on {len(self.cases)} case(s)")
        self.before = self._score(parent, cancel)
        self.eval_s = time.perf_counter() - t

    def reserve_s(self) -> float:
        """Seconds to keep for scoring the child and saving it: 1 s plus 1.5 times the parent's scoring."""
        return 1.0 + 1.5 * self.eval_s

    def score_child(
        self, child: SegModel, steps: int, cancel: CancelToken | None
    ) -> Generator[Progress, None, Verdict]:
        yield Progress(
            steps, steps, "evaluate", f"measuring the fine-tuned model on {len(self.cases)} case(s)"
        )
        after = self._score(child, cancel)
        b, a = float(self.before["dice"]), float(after["dice"])
        return Verdict(b, a, steps, self.scored_on, judge(b, a, steps, self.scored_on),
                       self.before["per_class"], after["per_class"])  # fmt: skip


def not_better_path(out: Path) -> Path:
    """``child.segmodel`` -> ``child.notbetter.segmodel`` (a free name: ``-2``, ``-3`` ... if taken)."""
    from ..checkpoint import SUFFIX

    stem = out.name[: -len(SUFFIX)] if out.name.endswith(SUFFIX) else out.stem
    cand, n = out.with_name(f"{stem}{NOT_BETTER_INFIX}{SUFFIX}"), 2
    while cand.exists():
        cand, n = out.with_name(f"{stem}{NOT_BETTER_INFIX}-{n}{SUFFIX}"), n + 1
    return cand


def corrected_region_labels(labels: np.ndarray, touched: np.ndarray) -> np.ndarray:
    """The corrected mask where the user looked, IGNORE_INDEX elsewhere: the validation labels of a
    fine-tune on one scan.

    ``touched`` marks the voxels the user changed. In 3D the region is every slice (along the first axis,
    the one the viewer steps through) that holds a change: the voxels the user left alone on those slices
    were seen and accepted. A 2D image is seen whole, so its region is the whole image.
    """
    labels, touched = np.asarray(labels), np.asarray(touched, dtype=bool)
    if labels.shape != touched.shape:
        raise TrainingError(
            f"the changed-voxel mask {touched.shape} does not match the labels {labels.shape}"
        )
    if not touched.any():
        raise TrainingError("you have not changed the mask yet: paint a correction first")
    out = labels.astype(np.int32, copy=True)
    if labels.ndim == 3:
        seen = touched.reshape(touched.shape[0], -1).any(axis=1)
        out[~seen] = IGNORE_INDEX
    return out
