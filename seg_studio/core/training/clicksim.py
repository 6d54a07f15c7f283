"""Training with simulated clicks (DeepGrow / DeepEdit style) as hooks of the one training loop.

``ClickSimulator.prepare_batch`` turns each sampled patch into an interactive example: it picks one
structure (a class present in the patch), places a first positive click at the centre of the structure
(the centre of the largest false-negative region of an empty mask), then runs 0..``max_rounds`` rounds in
which the model, as it is now, predicts with the clicks so far and the next click goes to the centre of
its largest error region (``core.interactive.next_click``). With ``previous_mask`` the model's last
prediction is handed in as the previous mask in a share of the rounds, so the model learns to work with
and without one. The target becomes that one structure (background / structure). ``click_validation``
scores a model the way the benchmark does: Dice after ``val_clicks`` simulated clicks from nothing.
Click sizes are drawn at the training cases' median spacing (the loop's patches carry no spacing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SegStudioError, TrainingError
from ..interactive.clicks import next_click
from ..interactive.guidance import GuidanceSpec, guidance_maps, render_clicks
from ..progress import CancelToken
from .data import IGNORE_INDEX, Case
from .evaluation import autocast_ctx, memory_format, nanmean, predict_logits, unwrap
from .plan import LoopHook

_BOUNDS: dict[str, tuple[float, float]] = {
    "sigma": (1e-3, 100.0),
    "max_rounds": (0, 20),
    "p_previous": (0.0, 1.0),
    "p_start_mask": (0.0, 1.0),
    "val_clicks": (1, 20),
}


@dataclass
class ClickTraining:
    """A recipe's ``interactive`` table: the click drawing and the simulated user."""

    sigma: float = 2.0
    shape: str = "gaussian"
    previous_mask: bool = True
    max_rounds: int = 3
    p_previous: float = 0.7
    #: the share of samples that start from a mask (an automatic result), not from nothing
    p_start_mask: float = 0.3
    val_clicks: int = 3
    name: str = "structure"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ClickTraining:
        known = {f.name for f in fields(cls)}
        d = dict(d or {})
        if set(d) - known:
            raise TrainingError(
                f"unknown interactive setting(s) {sorted(set(d) - known)}; known: {sorted(known)}"
            )
        out = cls(**d)
        for key, (lo, hi) in _BOUNDS.items():
            v = getattr(out, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise TrainingError(f"interactive {key} = {v!r} must be a number in {lo:g}..{hi:g}")
        return out

    def spec(self, image_channels: int) -> GuidanceSpec:
        try:
            return GuidanceSpec.from_dict(
                {
                    "image_channels": image_channels,
                    "sigma": float(self.sigma),
                    "shape": self.shape,
                    "previous_mask": self.previous_mask,
                },
                where="recipe",
            )
        except SegStudioError as exc:
            raise TrainingError(str(exc).replace("bad metadata: ", "")) from None


#: The share of patches holding a recorded click that train on the user's clicks (the rest simulate
#: their first click, so the model keeps working from a first click of its own user's kind).
P_RECORDED = 0.8


def recorded_maps(
    clicks: Sequence[tuple[int, bool, tuple[int, ...]]],
    shape: Sequence[int],
    spacing_zyx: Sequence[float],
    n_classes: int,
    spec: GuidanceSpec,
) -> torch.Tensor:
    """The user's clicks (class index, positive, voxel) of one case as ``(2 * (n_classes - 1), *shape)``
    maps, positive then negative per foreground class, drawn as the model draws them; float16 to halve
    what a large scan holds (they ride with the case through patches and spatial augmentation)."""
    out = np.zeros((2 * (n_classes - 1), *shape), np.float32)
    for k in range(1, n_classes):
        for j, positive in enumerate((True, False)):
            pts = [v for c, p, v in clicks if c == k and p == positive]
            if pts:
                out[2 * (k - 1) + j] = render_clicks(shape, spacing_zyx, pts, spec)
    return torch.from_numpy(out).to(torch.float16)


def median_spacing(cases: Sequence[Case]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.median(np.array([c.spacing_zyx for c in cases]), axis=0))


class ClickSimulator(LoopHook):
    """Adds the guidance channels to every training batch, with simulated clicks (see the module)."""

    def __init__(
        self,
        cfg: ClickTraining,
        spec: GuidanceSpec,
        n_classes: int,
        spacing_zyx: Sequence[float],
        autocast: torch.dtype | None,
        seed: int = 0,
    ) -> None:
        self.cfg, self.spec, self.n_classes = cfg, spec, n_classes
        self.spacing = tuple(spacing_zyx)
        self.autocast = autocast
        self.rng = np.random.default_rng(seed + 104729)

    def pick_targets(self, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """One structure per sample (a class present, else any): its mask, and the supervised voxels."""
        lab = y.cpu().numpy()
        targets = np.zeros(lab.shape, bool)
        for b in range(lab.shape[0]):
            present = [int(c) for c in np.unique(lab[b]) if 0 < c < self.n_classes]
            c = (
                present[self.rng.integers(len(present))]
                if present
                else int(self.rng.integers(1, self.n_classes))
            )
            targets[b] = lab[b] == c
        return targets, lab != IGNORE_INDEX

    def predict(self, model: nn.Module, x: torch.Tensor) -> np.ndarray:
        """The current model's structure mask (eval mode, no gradients) for a batch with guidance."""
        core = unwrap(model)
        was = core.training
        core.eval()
        try:
            with torch.no_grad(), autocast_ctx(x.device, self.autocast):
                logits = core(x.contiguous(memory_format=memory_format(core.spatial_dims, True))).logits
            return (logits.float().argmax(1) == 1).cpu().numpy()
        finally:
            core.train(was)

    def prepare_batch(
        self, step: int, x: torch.Tensor, y: torch.Tensor, model: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, recorded = x[:, : self.spec.image_channels], x[:, self.spec.image_channels :]
        targets, valid = self.pick_targets(y)
        n, shape = x.shape[0], tuple(x.shape[2:])
        clicks: list[tuple[list[tuple[int, ...]], list[tuple[int, ...]]]] = [([], []) for _ in range(n)]
        prev = np.zeros((n, *shape), bool)
        guide = np.zeros((n, self.spec.guidance_channels, *shape), np.float32)
        first = self.recorded_rounds(recorded, y, targets)
        for b in range(n):
            if self.spec.previous_mask and self.rng.random() < self.cfg.p_start_mask:
                prev[b] = corrupt(targets[b], self.rng)
            if first[b] is None:
                seen = np.where(valid[b], prev[b], targets[b])
                self.add_click(clicks[b], next_click(seen, targets[b], self.spacing), shape)
            guide[b] = self.draw(clicks[b], prev[b], shape, first[b])
        rounds = self.rng.integers(0, self.cfg.max_rounds + 1, n)
        for r in range(int(rounds.max(initial=0))):
            active = np.flatnonzero(rounds > r)
            xa = torch.cat([x[active], torch.from_numpy(guide[active]).to(x)], 1)
            pred = self.predict(model, xa)
            for i, b in enumerate(active):
                seen = np.where(valid[b], pred[i], targets[b])  # ignored voxels are never an error
                self.add_click(clicks[b], next_click(seen, targets[b], self.spacing), shape)
                use_prev = self.spec.previous_mask and self.rng.random() < self.cfg.p_previous
                prev[b] = pred[i] if use_prev else False
                guide[b] = self.draw(clicks[b], prev[b], shape, first[b])
        y2 = torch.from_numpy(np.where(valid, targets.astype(np.int64), IGNORE_INDEX)).to(y.device)
        return torch.cat([x, torch.from_numpy(guide).to(x)], 1), y2

    def recorded_rounds(
        self, recorded: torch.Tensor, y: torch.Tensor, targets: np.ndarray
    ) -> list[np.ndarray | None]:
        """Per sample, the user's recorded clicks as its first round of guidance (positive, negative maps),
        or None (simulate the first click). A patch holding the centre of a recorded click of some class
        (a map peak above 1/2) trains on that class with the clicks the user made; ``targets`` is updated."""
        out: list[np.ndarray | None] = [None] * len(targets)
        if recorded.shape[1] == 0:
            return out
        rec, lab = recorded.float().cpu().numpy(), y.cpu().numpy()
        for b in range(len(targets)):
            flat = rec[b].reshape(rec.shape[1] // 2, 2, -1)
            classes = [k + 1 for k in range(flat.shape[0]) if flat[k].max() > 0.5]
            if not classes or self.rng.random() >= P_RECORDED:
                continue
            k = classes[int(self.rng.integers(len(classes)))]
            targets[b] = lab[b] == k
            out[b] = rec[b, 2 * (k - 1) : 2 * k]
        return out

    def add_click(self, lists: tuple[list, list], click: Any, shape: tuple[int, ...]) -> None:
        """Add the simulated click; a patch without the structure gets a negative click somewhere."""
        if click is None and not (lists[0] or lists[1]):
            click = (False, tuple(int(self.rng.integers(s)) for s in shape))
        if click is not None:
            (lists[0] if click[0] else lists[1]).append(click[1])

    def draw(
        self,
        lists: tuple[list, list],
        prev: np.ndarray,
        shape: tuple[int, ...],
        recorded: np.ndarray | None = None,
    ) -> np.ndarray:
        """The guidance channels: the simulated clicks so far, over the recorded ones (the maximum)."""
        maps = guidance_maps(shape, self.spacing, lists[0], lists[1], prev, self.spec)
        if recorded is not None:
            np.maximum(maps[:2], recorded, out=maps[:2])
        return maps


def corrupt(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask like an automatic model's result for ``target``: its border a voxel in or one or two
    out, and (each half the time) a ball of it missing and a spurious ball added."""
    from scipy import ndimage

    m = target.copy()
    k = int(rng.integers(-1, 3))
    if k > 0:
        m = ndimage.binary_dilation(m, iterations=k)
    elif k < 0:
        m = ndimage.binary_erosion(m, iterations=1)
    grid = np.indices(m.shape, sparse=True)
    for add in (False, True):
        pool = np.argwhere(~target if add else target)
        if not len(pool) or rng.random() < 0.5:
            continue
        c = pool[rng.integers(len(pool))]
        r = rng.uniform(0.05, 0.15) * min(m.shape)
        ball = sum((g - ci) ** 2 for g, ci in zip(grid, c, strict=True)) <= r * r
        m = m | ball if add else m & ~ball
    return m


def dice(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
    p, g = pred & valid, target & valid
    denom = int(p.sum()) + int(g.sum())
    return math.nan if denom == 0 else 2.0 * int((p & g).sum()) / denom


def click_case(
    model: nn.Module,
    image: torch.Tensor,
    target: np.ndarray,
    valid: np.ndarray,
    spec: GuidanceSpec,
    spacing: Sequence[float],
    n_clicks: int,
    patch: Sequence[int],
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
) -> list[float]:
    """Dice after each of ``n_clicks`` simulated clicks on one structure of one whole case, from nothing."""
    shape = tuple(image.shape[1:])
    pred = np.zeros(shape, bool)
    pos: list[tuple[int, ...]] = []
    neg: list[tuple[int, ...]] = []
    out = []
    for _ in range(n_clicks):
        click = next_click(np.where(valid, pred, target), target, spacing)
        if click is None:
            out.append(dice(pred, target, valid))
            continue
        (pos if click[0] else neg).append(click[1])
        guide = torch.from_numpy(guidance_maps(shape, spacing, pos, neg, pred, spec))
        x = torch.cat([image, guide.to(image.dtype)], 0)
        logits = predict_logits(unwrap(model), x, patch, device, dtype, channels_last)
        pred = (logits.argmax(0) == 1).numpy()
        out.append(dice(pred, target, valid))
    return out


def click_validation(
    model: nn.Module,
    cases: Sequence[Case],
    cfg: ClickTraining,
    spec: GuidanceSpec,
    n_classes: int,
    patch: Sequence[int],
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Mean Dice after ``cfg.val_clicks`` simulated clicks per structure of each case (per class and
    overall); ``dice_first_click`` is the mean after the first."""
    core = unwrap(model)
    was = core.training
    core.eval()
    last: dict[int, list[float]] = {c: [] for c in range(1, n_classes)}
    first: list[float] = []
    try:
        for case in cases:
            if cancel is not None:
                cancel.raise_if_cancelled()
            lab = case.target.numpy()
            for c in last:
                if not (lab == c).any():
                    continue
                d = click_case(
                    core,
                    case.image,
                    lab == c,
                    lab != IGNORE_INDEX,
                    spec,
                    case.spacing_zyx,
                    cfg.val_clicks,
                    patch,
                    device,
                    dtype,
                    channels_last,
                )
                last[c].append(d[-1])
                first.append(d[0])
    finally:
        core.train(was)
    means = {c: nanmean(v) for c, v in last.items()}
    return {
        "dice": nanmean(list(means.values())),
        "per_class": means,
        "dice_first_click": nanmean(first),
        "cases": len(cases),
    }


def from_automatic(
    auto: nn.Module, architecture: str, arch_args: Mapping[str, Any], spec: GuidanceSpec
) -> nn.Module:
    """An interactive model that starts from an automatic one of the same variant: every weight is kept;
    the input layer's guidance channels start at zero (so it first predicts as the automatic model) and a
    head over several classes becomes background vs. the mean of the foreground rows (any structure)."""
    from ..models import create_model

    core = unwrap(auto)
    new = create_model(
        architecture,
        core.spatial_dims,
        spec.image_channels,
        2,
        guidance_channels=spec.guidance_channels,
        **dict(arch_args),
    )
    old_sd, new_sd = core.state_dict(), new.state_dict()
    if old_sd.keys() != new_sd.keys():
        raise TrainingError(
            f"cannot start an interactive {architecture!r} from this model: its layers differ"
        )
    with torch.no_grad():
        for k, t in new_sd.items():
            t.copy_(adapt_tensor(k, old_sd[k], t, core.out_channels))
    new.load_state_dict(new_sd)
    return new


def adapt_tensor(key: str, old: torch.Tensor, new: torch.Tensor, old_out: int) -> torch.Tensor:
    """``old`` in the shape of ``new``: more input channels (zeros) or a two-class head."""
    if old.shape == new.shape:
        return old
    if (
        old.ndim >= 2
        and old.shape[0] == new.shape[0]
        and old.shape[2:] == new.shape[2:]
        and new.shape[1] > old.shape[1]
    ):
        out = torch.zeros_like(new)
        out[:, : old.shape[1]] = old
        return out
    if old.shape[1:] == new.shape[1:] and old.shape[0] == old_out and new.shape[0] == 2 and old_out > 2:
        return torch.stack([old[0], old[1:].mean(0)])
    raise TrainingError(f"cannot start an interactive model from this one: {key} changes shape unexpectedly")
