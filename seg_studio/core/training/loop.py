"""The one training loop: ``run_plan(plan)`` runs a ``TrainingPlan`` and yields progress.

One step: sample a batch of patches from preloaded tensors, augment it in torch, forward under
autocast (bf16 where the hardware does it natively), Dice+CE (+ deep supervision heads, + what the
hooks add, e.g. the adversarial term), backward, AdamW, then the hooks' own updates. The learning rate
follows ``plan.schedule``; ``plan.stopping`` ends the run; validation runs on rank 0 every
``plan.validation.every`` steps and at the end. Under torchrun, rank 0 decides when to stop and every
rank follows.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import TrainingError
from ..progress import CancelToken, Progress
from .augment import augment_batch
from .data import PatchSampler
from .distributed import broadcast_flag
from .evaluation import autocast_ctx, memory_format, unwrap, validate
from .plan import LoopState, Schedule, TrainingPlan

log = logging.getLogger(__name__)


def make_optimizer(model: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; ``schedule.head_params`` in a group of their own (faster)."""
    heads = set(schedule.head_params)
    base, head = [], []
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        (head if name in heads else base).append(p)
    groups = [{"params": base, "lr": schedule.lr, "base_lr": schedule.lr}]
    if head:
        fast = schedule.lr * schedule.head_lr_mult
        groups.append({"params": head, "lr": fast, "base_lr": fast})
    return torch.optim.AdamW(groups, lr=schedule.lr, weight_decay=schedule.weight_decay)


class RunClock:
    """Wall time and step times of one run: how far through the budget it is, ETA, expected total."""

    def __init__(self, plan: TrainingPlan) -> None:
        self.plan = plan
        self.started = time.perf_counter()
        self.t0 = self.started - plan.state.elapsed_s  # a resumed run keeps its elapsed time
        self.step_times: list[float] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def mean_step(self) -> float | None:
        recent = self.step_times[-20:]
        return sum(recent) / len(recent) if recent else None

    def next_step(self) -> float:
        """What the next step is expected to take (the median of the last five; 0 before the first)."""
        return statistics.median(self.step_times[-5:]) if self.step_times else 0.0

    def progress(self) -> float:
        """The fraction of the binding budget spent (steps, seconds or the deadline)."""
        stop, st = self.plan.stopping, self.plan.state
        fr = []
        if stop.max_steps:
            fr.append(st.step / stop.max_steps)
        if stop.time_budget_s:
            fr.append(self.elapsed() / stop.time_budget_s)
        if stop.deadline is not None:
            fr.append((time.perf_counter() - self.started) / max(1e-9, stop.deadline - self.started))
        return max(fr) if fr else 0.0

    def eta(self) -> float | None:
        mean = self.mean_step()
        if mean is None:
            return None
        stop, left = self.plan.stopping, []
        if stop.max_steps:
            left.append((stop.max_steps - self.plan.state.step) * mean)
        if stop.time_budget_s:
            left.append(max(0.0, stop.time_budget_s - self.elapsed()))
        if stop.deadline is not None:
            left.append(max(0.0, stop.deadline - time.perf_counter()))
        return min(left) if left else None

    def total_steps(self) -> int:
        """The step count the run is expected to end at (for progress bars)."""
        stop, step = self.plan.stopping, self.plan.state.step
        if stop.max_steps and not stop.time_budget_s and stop.deadline is None:
            return stop.max_steps
        mean = self.mean_step()
        if mean is not None:
            est = step + int((self.eta() or 0) / max(mean, 1e-6))
            return min(stop.max_steps, est) if stop.max_steps else est
        return stop.max_steps or 1


def stop_reason(plan: TrainingPlan, clock: RunClock, cancel: CancelToken | None) -> str:
    """Why the loop ends now ("" to go on). A deadline also ends it when the next step would not fit."""
    stop, st = plan.stopping, plan.state
    now = time.perf_counter()
    if cancel is not None and cancel.cancelled:
        return "cancelled"
    if stop.max_steps is not None and st.step >= stop.max_steps:
        return "step budget"
    if stop.time_budget_s is not None and clock.elapsed() >= stop.time_budget_s:
        return "time budget"
    if stop.deadline is not None and now + clock.next_step() >= stop.deadline:
        return "time budget"
    if stop.early_stop_patience is not None and st.bad_validations >= stop.early_stop_patience:
        return "early stopping"
    return ""


@dataclass
class StepParts:
    """What every step of one run reuses: the patch stream, the augmentation RNG, the optimiser."""

    sampler: PatchSampler
    generator: torch.Generator
    layout: torch.memory_format
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None

    @classmethod
    def for_plan(cls, plan: TrainingPlan) -> StepParts:
        rank, step, b = plan.compute.ranks.rank, plan.state.step, plan.batches
        sampler = PatchSampler(plan.train_cases, b.patch, b.fg_prob, seed=b.seed * 1000 + rank + step)
        g = torch.Generator().manual_seed(b.seed * 7919 + rank + step)
        opt = plan.optimizer or make_optimizer(plan.model, plan.schedule)
        fp16 = plan.compute.autocast == torch.float16
        scaler = torch.amp.GradScaler(plan.compute.device.type) if fp16 else None
        layout = memory_format(unwrap(plan.model).spatial_dims, plan.compute.channels_last)
        return cls(sampler, g, layout, opt, scaler)


def train_step(plan: TrainingPlan, parts: StepParts, progress: float) -> dict[str, Any]:
    """One optimiser step on a fresh batch; returns its metrics (loss, lr, heads, what hooks add)."""
    dev, st = plan.compute.device, plan.state
    x, y = parts.sampler.sample(plan.batches.batch_size)
    x, y = augment_batch(x.to(dev), y.to(dev), plan.batches.augment, parts.generator, parts.sampler.extra)
    for hook in plan.hooks:
        x, y = hook.prepare_batch(st.step, x, y, plan.model)
    x = x.contiguous(memory_format=parts.layout)
    f = plan.schedule.factor(progress, st.step)
    for grp in parts.optimizer.param_groups:
        grp["lr"] = grp.get("base_lr", plan.schedule.lr) * f
    with autocast_ctx(dev, plan.compute.autocast):
        out = plan.model(x, aux=plan.loss.wanted_aux())
    heads = plan.loss.heads(out.aux)
    loss = plan.loss(out.logits, heads, y)
    seg_loss = float(loss.detach())
    for hook in plan.hooks:
        extra = hook.extra_loss(st.step, x, out.logits)
        loss = loss if extra is None else loss + extra
    metrics: dict[str, Any] = {
        "loss": seg_loss,
        "lr": parts.optimizer.param_groups[0]["lr"],
        "ds_heads": len(heads),
    }
    if not _backward_and_step(loss, parts, check=plan.compute.autocast == torch.bfloat16):
        return bf16_fallback(plan, parts, metrics)
    for hook in plan.hooks:
        metrics.update(hook.after_update(st.step, x, out.logits, y))
    st.step += 1
    metrics["step"] = st.step
    if not math.isfinite(seg_loss):
        raise TrainingError(
            f"the loss became {seg_loss} at step {st.step}; lower the learning rate (--lr) or use fp32 (--precision fp32)"
        )
    return metrics


def _backward_and_step(loss: torch.Tensor, parts: StepParts, check: bool = False) -> bool:
    """Backward and an optimiser step; with ``check``, no step is taken (False is returned) when the loss
    or a gradient is not finite, so the weights stay as they were."""
    opt = parts.optimizer
    opt.zero_grad(set_to_none=True)
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        parts.scaler.step(opt)
        parts.scaler.update()
        return True
    loss.backward()
    if check and not _finite(loss, opt):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def _finite(loss: torch.Tensor, opt: torch.optim.Optimizer) -> bool:
    grads = [p.grad for grp in opt.param_groups for p in grp["params"] if p.grad is not None]
    norms = torch._foreach_norm(grads) if grads else []
    return bool(torch.isfinite(loss.detach()).item()) and all(bool(torch.isfinite(n)) for n in norms)


def bf16_fallback(plan: TrainingPlan, parts: StepParts, metrics: dict[str, Any]) -> dict[str, Any]:
    """A bf16 step gave a non-finite loss or gradient: it was not applied, and training goes on in fp32.

    On the CPU, bf16 autocast sent the one-click 3D fine-tune of a width-8 U-Net on MSD hippocampus_173
    to NaN within 4 steps where fp32 trained (benchmarks/annotation_loop.py); the weights are kept as
    they were before the step, so nothing is lost but the step.
    """
    plan.compute.autocast = None
    log.warning("a bf16 step gave a non-finite loss or gradient at step %d; it was skipped and training "
                "continues in fp32", plan.state.step)  # fmt: skip
    return {**metrics, "precision_fallback": "fp32"}


def validation_round(
    plan: TrainingPlan, clock: RunClock, cancel: CancelToken | None
) -> Generator[Progress, None, None]:
    """Validate on rank 0, record the history, tell the hooks (which may save) whether it improved."""
    st, val, c = plan.state, plan.validation, plan.compute
    if not c.ranks.is_main:
        return
    if not val.cases:
        st.elapsed_s = clock.elapsed()
        for hook in plan.hooks:
            hook.on_validated(st, {"dice": math.nan, "per_class": {}}, False)
        return
    yield Progress(st.step, clock.total_steps(), "validate", f"validating on {len(val.cases)} case(s)")
    core = unwrap(plan.model)
    if val.scorer is not None:
        m = val.scorer(core, val.cases, cancel)
    else:
        m = validate(
            core, val.cases, plan.n_classes, plan.batches.patch, c.device, c.autocast, c.channels_last, cancel
        )
    score = m["dice"]
    improved = not math.isnan(score) and score > st.best + plan.stopping.min_delta
    if improved:
        st.best, st.best_step, st.bad_validations = score, st.step, 0
    else:
        st.bad_validations += 1
    st.history.append(
        {
            "step": st.step,
            "seconds": round(clock.elapsed(), 2),
            "val_dice": score,
            "per_class": m["per_class"],
        }
    )
    st.elapsed_s = clock.elapsed()
    for hook in plan.hooks:
        hook.on_validated(st, m, improved)
    metrics = {
        "step": st.step,
        "val_dice": score,
        "dice": score,
        "per_class": m["per_class"],
        "best": st.best,
    }
    yield Progress(
        st.step, clock.total_steps(), "validate", f"validation Dice {score:.4f}", clock.eta(), metrics
    )


def patch_forward(plan: TrainingPlan, seed: int = 12345) -> Callable[[], object]:
    """A forward pass of one training patch (eval mode, no gradients), to time the machine with
    (``ThreadTuner.probe``); the patch comes from a sampler of its own, so the run's stream is as it was."""
    sampler = PatchSampler(plan.train_cases, plan.batches.patch, plan.batches.fg_prob, seed=seed)
    x, _ = sampler.sample(1)
    core = unwrap(plan.model)
    # an interactive model takes its guidance channels too (what the hooks add): zeros time the same
    cin = core.in_channels
    x = (
        x[:, :cin]
        if x.shape[1] >= cin
        else torch.cat([x, x.new_zeros((1, cin - x.shape[1], *x.shape[2:]))], 1)
    )
    layout = memory_format(core.spatial_dims, plan.compute.channels_last)
    x = x.to(plan.compute.device).contiguous(memory_format=layout)

    @torch.no_grad()
    def run() -> object:
        was_training = plan.model.training
        plan.model.eval()
        try:
            with autocast_ctx(plan.compute.device, plan.compute.autocast):
                return plan.model(x).logits
        finally:
            plan.model.train(was_training)

    return run


def run_plan(plan: TrainingPlan, cancel: CancelToken | None = None) -> Generator[Progress, None, LoopState]:
    """Train until the plan's stopping rule (or ``cancel``) ends it; yields a Progress per step and
    per validation, returns the final ``LoopState``. A cancelled run is not validated again."""
    st, clock = plan.state, RunClock(plan)
    parts = StepParts.for_plan(plan)
    plan.optimizer = parts.optimizer
    last_val_step = st.step if st.history else -1
    plan.model.train()
    try:
        while True:
            stop = stop_reason(plan, clock, cancel)
            if broadcast_flag(plan.compute.ranks, bool(stop)):
                st.stop_reason = stop or "stopped by rank 0"
                break
            ts = time.perf_counter()
            metrics = train_step(plan, parts, clock.progress())
            clock.step_times.append(time.perf_counter() - ts)
            for hook in plan.hooks:
                hook.after_step(st, clock.step_times[-1])
            msg = f"step {st.step} loss {metrics['loss']:.4f}"
            yield Progress(st.step, clock.total_steps(), plan.stage, msg, clock.eta(), metrics)
            if plan.validation.every and st.step % plan.validation.every == 0:
                last_val_step = st.step
                yield from validation_round(plan, clock, cancel)
        if st.stop_reason != "cancelled" and last_val_step != st.step:
            yield from validation_round(plan, clock, cancel)
    finally:
        st.elapsed_s = clock.elapsed()
        for hook in plan.hooks:
            hook.on_end(st)
    return st


__all__ = [
    "RunClock",
    "patch_forward",
    "make_optimizer",
    "run_plan",
    "stop_reason",
    "train_step",
    "validation_round",
]
