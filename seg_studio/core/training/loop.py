"""The optimisation loop shared by ``iter_fit`` and ``iter_finetune``.

One step: sample a batch of patches from preloaded tensors, augment it in torch, forward under
autocast (bf16 where the hardware does it natively), Dice+CE (+ deep supervision heads, + the
adversarial term), backward, AdamW. The learning rate warms up, then follows a cosine to the end of
whichever budget binds first (steps or seconds), so a time-limited fine-tune still ends on a low LR.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import AUX_DEEP_SUPERVISION, SegModel
from ..progress import CancelToken, Progress
from .adversarial import AdversarialConfig, AdversarialStep
from .augment import AugmentConfig, augment_batch
from .data import IGNORE_INDEX, Case, PatchSampler
from .distributed import DistInfo, broadcast_flag
from .losses import DiceCELoss, supervised_loss

log = logging.getLogger(__name__)


@dataclass
class LoopSettings:
    patch: tuple[int, ...]
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_steps: int | None = 1000
    time_budget_s: float | None = None
    warmup_steps: int = 20
    min_lr_fraction: float = 0.02
    val_every: int = 100
    early_stop_patience: int | None = None  # validations without improvement
    min_delta: float = 1e-3
    fg_prob: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    deep_supervision: bool | None = None  # None: use heads when the model has them
    ds_decay: float = 0.5
    adversarial: AdversarialConfig | None = None
    autocast: torch.dtype | None = None
    channels_last: bool = False
    seed: int = 0
    #: parameters trained with ``lr * head_lr_mult`` (e.g. a freshly grown output head)
    head_params: Sequence[str] = ()
    head_lr_mult: float = 1.0


@dataclass
class LoopState:
    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    bad_validations: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""


def autocast_ctx(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _unwrap(model: nn.Module) -> SegModel:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


@torch.no_grad()
def predict_logits(
    model: SegModel,
    image: torch.Tensor,
    patch: Sequence[int],
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits ``(K, *spatial)`` of one case: whole image when small, else overlapping tiles averaged."""
    x = image.unsqueeze(0).to(device)
    spatial = tuple(image.shape[1:])
    fmt = memory_format(len(spatial), channels_last)
    whole = math.prod(spatial) <= 4 * math.prod(patch)
    if whole:
        with autocast_ctx(device, dtype):
            return model(x.contiguous(memory_format=fmt)).logits.float()[0].cpu()
    k = _unwrap(model).out_channels
    acc = torch.zeros((k, *spatial))
    cnt = torch.zeros((1, *spatial))
    steps = []
    for n, p in zip(spatial, patch, strict=True):
        p = min(p, n)
        stride = max(1, int(p * 0.75))
        starts = list(range(0, max(1, n - p + 1), stride))
        if starts[-1] != n - p:
            starts.append(n - p)
        steps.append((starts, p))
    import itertools

    for origin in itertools.product(*[s for s, _ in steps]):
        sl = tuple(slice(o, o + p) for o, (_, p) in zip(origin, steps, strict=True))
        with autocast_ctx(device, dtype):
            out = (
                model(x[(slice(None), slice(None), *sl)].contiguous(memory_format=fmt))
                .logits.float()[0]
                .cpu()
            )
        acc[(slice(None), *sl)] += out
        cnt[(slice(None), *sl)] += 1
    return acc / cnt


def default_channels_last(spatial_dims: int, device: torch.device) -> bool:
    """Whether training uses channels-last tensors by default.

    2D everywhere but MPS; 3D on the CPU too, where a 16-feature 3D U-Net step (2x40x56x40, one
    thread, AVX2 EPYC) took 1.0 s in channels_last_3d against 1.5 s in NCDHW. On CUDA 3D stays NCDHW,
    which has not been measured against it here.
    """
    if device.type == "mps":
        return False
    return spatial_dims == 2 or device.type == "cpu"


def memory_format(nd: int, channels_last: bool) -> torch.memory_format:
    """The tensor layout of an ``nd``-dimensional model: channels-last when asked, else contiguous."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if nd == 2 else torch.channels_last_3d


def validate(
    model: SegModel,
    cases: Sequence[Case],
    n_classes: int,
    patch: Sequence[int],
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool = False,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Dice per foreground class (mean over cases, NaN where a class is absent from both), and their mean."""
    was_training = model.training
    model.eval()
    per_class: dict[int, list[float]] = {c: [] for c in range(1, n_classes)}
    try:
        for case in cases:
            if cancel is not None:
                cancel.raise_if_cancelled()
            pred = predict_logits(model, case.image, patch, device, dtype, channels_last).argmax(0)
            t = case.target.long()
            valid = t != IGNORE_INDEX
            for c in per_class:
                p, g = (pred == c) & valid, t == c
                denom = int(p.sum()) + int(g.sum())
                per_class[c].append(math.nan if denom == 0 else 2.0 * int((p & g).sum()) / denom)
    finally:
        model.train(was_training)
    means = {c: _nanmean(v) for c, v in per_class.items()}
    return {"dice": _nanmean(list(means.values())), "per_class": means, "cases": len(cases)}


def _nanmean(v: Sequence[float]) -> float:
    vals = [x for x in v if not math.isnan(x)]
    return math.nan if not vals else float(sum(vals) / len(vals))


def make_optimizer(model: nn.Module, s: LoopSettings) -> torch.optim.Optimizer:
    heads = set(s.head_params)
    base, head = [], []
    for name, p in _unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        (head if name in heads else base).append(p)
    groups = [{"params": base, "lr": s.lr, "base_lr": s.lr}]
    if head:
        groups.append({"params": head, "lr": s.lr * s.head_lr_mult, "base_lr": s.lr * s.head_lr_mult})
    return torch.optim.AdamW(groups, lr=s.lr, weight_decay=s.weight_decay)


def lr_factor(progress: float, step: int, s: LoopSettings) -> float:
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    p = min(1.0, max(0.0, progress))
    return s.min_lr_fraction + (1 - s.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * p))


def train_loop(
    model: nn.Module,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    n_classes: int,
    s: LoopSettings,
    device: torch.device,
    dist_info: DistInfo | None = None,
    cancel: CancelToken | None = None,
    on_validated: Callable[[LoopState, dict[str, Any], bool], None] | None = None,
    state: LoopState | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    deadline: float | None = None,
    stage: str = "train",
) -> Generator[Progress, None, LoopState]:
    """Run until the step or time budget (or early stopping, or ``deadline`` on perf_counter) ends.

    ``model`` may be DDP-wrapped. Validation runs on rank 0 every ``val_every`` steps and at the end;
    ``on_validated(state, metrics, improved)`` lets the caller save checkpoints there.
    """
    info = dist_info or DistInfo(device=device)
    st = state or LoopState()
    core = _unwrap(model)
    nd = core.spatial_dims
    fmt = memory_format(nd, s.channels_last)
    sampler = PatchSampler(train_cases, s.patch, s.fg_prob, seed=s.seed * 1000 + info.rank + st.step)
    g = torch.Generator().manual_seed(s.seed * 7919 + info.rank + st.step)
    loss_fn = DiceCELoss()
    opt = optimizer or make_optimizer(model, s)
    scaler = torch.amp.GradScaler(device.type) if s.autocast == torch.float16 else None
    adv = (
        AdversarialStep(nd, core.in_channels, n_classes, s.adversarial, device)
        if s.adversarial is not None
        else None
    )
    want_ds: tuple[str, ...] = () if s.deep_supervision is False else (AUX_DEEP_SUPERVISION,)
    model.train()
    t0 = time.perf_counter() - st.elapsed_s
    step_times: list[float] = []
    last_val_step = st.step if st.history else -1

    def budget_progress() -> float:
        fr = []
        if s.max_steps:
            fr.append(st.step / s.max_steps)
        if s.time_budget_s:
            fr.append((time.perf_counter() - t0) / s.time_budget_s)
        if deadline is not None and s.time_budget_s is None:
            fr.append(0.0)
        return max(fr) if fr else 0.0

    def eta() -> float | None:
        if not step_times:
            return None
        mean = sum(step_times[-20:]) / len(step_times[-20:])
        left = []
        if s.max_steps:
            left.append((s.max_steps - st.step) * mean)
        if s.time_budget_s:
            left.append(max(0.0, s.time_budget_s - (time.perf_counter() - t0)))
        if deadline is not None:
            left.append(max(0.0, deadline - time.perf_counter()))
        return min(left) if left else None

    def total_steps() -> int:
        if s.max_steps and not s.time_budget_s:
            return s.max_steps
        if step_times:
            per = sum(step_times[-20:]) / len(step_times[-20:])
            est = st.step + int((eta() or 0) / max(per, 1e-6))
            return min(s.max_steps, est) if s.max_steps else est
        return s.max_steps or 1

    def do_validate() -> Generator[Progress, None, None]:
        nonlocal last_val_step
        last_val_step = st.step
        improved = False
        if info.is_main and val_cases:
            yield Progress(st.step, total_steps(), "validate", f"validating on {len(val_cases)} case(s)")
            m = validate(core, val_cases, n_classes, s.patch, device, s.autocast, s.channels_last, cancel)
            score = m["dice"]
            improved = not math.isnan(score) and score > st.best + s.min_delta
            if improved:
                st.best, st.best_step, st.bad_validations = score, st.step, 0
            else:
                st.bad_validations += 1
            rec = {
                "step": st.step,
                "seconds": round(time.perf_counter() - t0, 2),
                "val_dice": score,
                "per_class": m["per_class"],
            }
            st.history.append(rec)
            st.elapsed_s = time.perf_counter() - t0
            if on_validated is not None:
                on_validated(st, m, improved)
            yield Progress(
                st.step,
                total_steps(),
                "validate",
                f"validation Dice {score:.4f}",
                eta(),
                {
                    "step": st.step,
                    "val_dice": score,
                    "dice": score,
                    "per_class": m["per_class"],
                    "best": st.best,
                },
            )
        elif info.is_main and on_validated is not None:
            st.elapsed_s = time.perf_counter() - t0
            on_validated(st, {"dice": math.nan, "per_class": {}}, False)

    while True:
        # --- stop? (rank 0 decides, all ranks follow) ---
        stop = ""
        if cancel is not None and cancel.cancelled:
            stop = "cancelled"
        elif s.max_steps is not None and st.step >= s.max_steps:
            stop = "step budget"
        elif s.time_budget_s is not None and time.perf_counter() - t0 >= s.time_budget_s:
            stop = "time budget"
        elif deadline is not None and time.perf_counter() >= deadline:
            stop = "time budget"
        elif s.early_stop_patience is not None and st.bad_validations >= s.early_stop_patience:
            stop = "early stopping"
        if broadcast_flag(info, bool(stop)):
            st.stop_reason = stop or "stopped by rank 0"
            break
        ts = time.perf_counter()
        x, y = sampler.sample(s.batch_size)
        x, y = x.to(device), y.to(device)
        x, y = augment_batch(x, y, s.augment, g)
        x = x.contiguous(memory_format=fmt)
        f = lr_factor(budget_progress(), st.step, s)
        for grp in opt.param_groups:
            grp["lr"] = grp.get("base_lr", s.lr) * f
        with autocast_ctx(device, s.autocast):
            out = model(x, aux=want_ds)
        heads = out.aux.get(AUX_DEEP_SUPERVISION, []) if s.deep_supervision is not False else []
        loss = supervised_loss(loss_fn, out.logits, heads, y, s.ds_decay)
        seg_loss = float(loss.detach())
        if adv is not None and adv.active(st.step):
            loss = loss + adv.segmenter_loss(x, out.logits)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if adv is not None and adv.active(st.step):
            adv.critic_step(x, out.logits, y)
        st.step += 1
        step_times.append(time.perf_counter() - ts)
        metrics: dict[str, Any] = {
            "step": st.step,
            "loss": seg_loss,
            "lr": opt.param_groups[0]["lr"],
            "ds_heads": len(heads),
        }
        if adv is not None:
            metrics.update(adv.last)
        if not math.isfinite(seg_loss):
            from ..errors import TrainingError

            raise TrainingError(
                f"the loss became {seg_loss} at step {st.step}; lower the learning rate (--lr) or use fp32 (--precision fp32)"
            )
        yield Progress(st.step, total_steps(), stage, f"step {st.step} loss {seg_loss:.4f}", eta(), metrics)
        if s.val_every and st.step % s.val_every == 0:
            yield from do_validate()
    if st.stop_reason == "cancelled":
        st.elapsed_s = time.perf_counter() - t0
        return st
    if last_val_step != st.step:
        yield from do_validate()
    st.elapsed_s = time.perf_counter() - t0
    return st


__all__ = ["LoopSettings", "LoopState", "make_optimizer", "predict_logits", "train_loop", "validate"]
