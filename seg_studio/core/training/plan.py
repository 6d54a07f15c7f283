"""A training run as data: everything the one loop (``loop.run_plan``) needs, named part by part.

``fit`` builds a plan from a recipe, ``finetune`` from a parent checkpoint and corrected pairs; what they do
differently (a grown head trained faster, a lower learning rate, a frozen encoder, a deadline instead of a
step budget, saving as it goes or once at the end) is a setting or a hook of the plan, never a copy of the
loop. The split follows nnU-Net's trainer (start / train step / end of a validation) and MONAI's engine
handlers, without their size: a ``LoopHook`` adds behaviour at those points (the adversarial critic, thread
tuning, writing the run folder).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .augment import AugmentConfig
from .data import Case
from .distributed import DistInfo
from .losses import SupervisedLoss


@dataclass
class Batches:
    """How a training batch is drawn: patch size, batch size, foreground oversampling, augmentation."""

    patch: tuple[int, ...]
    batch_size: int = 4
    fg_prob: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0


@dataclass
class Compute:
    """Where and how the arithmetic runs: device, autocast dtype (None = fp32), layout, DDP ranks."""

    device: torch.device
    autocast: torch.dtype | None = None
    channels_last: bool = False
    dist: DistInfo | None = None

    @property
    def ranks(self) -> DistInfo:
        return self.dist or DistInfo(device=self.device)


@dataclass
class Schedule:
    """AdamW with a linear warm-up, then a cosine down to ``min_lr_fraction`` at the end of the budget.

    The cosine follows whichever budget binds first (steps or seconds), so a time-limited fine-tune still
    ends on a low learning rate. ``head_params`` (a freshly grown output head) learn ``head_lr_mult``
    times faster than the rest.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    min_lr_fraction: float = 0.02
    head_params: Sequence[str] = ()
    head_lr_mult: float = 1.0

    def factor(self, progress: float, step: int) -> float:
        """The learning-rate multiplier at ``step``, ``progress`` (0..1) through the binding budget."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        p = min(1.0, max(0.0, progress))
        return self.min_lr_fraction + (1 - self.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * p))


@dataclass
class StoppingRule:
    """When the loop ends: a step budget, a time budget from the loop's start, or an absolute deadline
    (``time.perf_counter()``; a fine-tune's budget minus what the last evaluation and the save cost), or
    ``early_stop_patience`` validations without a gain of ``min_delta``."""

    max_steps: int | None = 1000
    time_budget_s: float | None = None
    deadline: float | None = None
    early_stop_patience: int | None = None
    min_delta: float = 1e-3


@dataclass
class Validation:
    """Which cases validate and how often (every ``every`` steps and at the end; 0 = only at the end)."""

    cases: Sequence[Case] = ()
    every: int = 100
    #: ``scorer(model, cases, cancel) -> {"dice", "per_class", ...}`` instead of plain Dice (e.g. an
    #: interactive model is scored after simulated clicks); None: ``evaluation.validate``
    scorer: Callable[..., dict[str, Any]] | None = None


@dataclass
class LoopState:
    """What the loop has done so far; a resumed run starts from a saved one."""

    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    bad_validations: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""


class LoopHook:
    """Behaviour a plan adds to the loop at named points; every method is optional (a no-op here)."""

    def prepare_batch(
        self, step: int, x: torch.Tensor, y: torch.Tensor, model: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented batch as the model trains on it (e.g. with simulated clicks as more channels)."""
        return x, y

    def extra_loss(self, step: int, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """A term added to the segmentation loss before the backward pass (None: nothing)."""
        return None

    def after_update(
        self, step: int, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> dict[str, float]:
        """Runs after the optimiser step (e.g. a critic's own update); returns metrics for the progress."""
        return {}

    def after_step(self, state: LoopState, seconds: float) -> None:
        """Runs after every step with its wall time (e.g. to tune threads)."""

    def on_validated(self, state: LoopState, metrics: dict[str, Any], improved: bool) -> None:
        """Runs on rank 0 after each validation (e.g. to save checkpoints)."""

    def on_end(self, state: LoopState) -> None:
        """Runs once when the loop ends, however it ends (e.g. to restore a setting)."""


@dataclass
class TrainingPlan:
    """One training run: data, model, loss, optimiser, schedule, validation, stopping rule, hooks.

    ``model`` may be DDP-wrapped; ``optimizer`` None builds AdamW from ``schedule``.
    """

    model: nn.Module
    train_cases: Sequence[Case]
    n_classes: int
    compute: Compute
    batches: Batches
    schedule: Schedule = field(default_factory=Schedule)
    stopping: StoppingRule = field(default_factory=StoppingRule)
    validation: Validation = field(default_factory=Validation)
    loss: SupervisedLoss = field(default_factory=SupervisedLoss)
    optimizer: torch.optim.Optimizer | None = None
    hooks: list[LoopHook] = field(default_factory=list)
    state: LoopState = field(default_factory=LoopState)
    stage: str = "train"


__all__ = [
    "Batches",
    "Compute",
    "LoopHook",
    "LoopState",
    "Schedule",
    "StoppingRule",
    "TrainingPlan",
    "Validation",
]
