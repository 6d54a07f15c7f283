"""Scoring a model during training: logits of a whole case, and Dice per class on validation cases.

Used by the loop's validations and by a fine-tune's acceptance test (parent and child on the same
voxels). Voxels labelled IGNORE_INDEX never count. Kept apart from ``inference.engine``: training scores
preloaded, already normalised tensors and needs no resampling or output files.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..models import SegModel
from ..progress import CancelToken
from .data import IGNORE_INDEX, Case


def autocast_ctx(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype``, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def unwrap(model: nn.Module) -> SegModel:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def memory_format(nd: int, channels_last: bool) -> torch.memory_format:
    """The tensor layout of an ``nd``-dimensional model: channels-last when asked, else contiguous."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if nd == 2 else torch.channels_last_3d


def default_channels_last(spatial_dims: int, device: torch.device) -> bool:
    """Whether training uses channels-last tensors by default.

    2D everywhere but MPS; 3D on the CPU too, where a 16-feature 3D U-Net step (2x40x56x40, one
    thread, AVX2 EPYC) took 1.0 s in channels_last_3d against 1.5 s in NCDHW. On CUDA 3D stays NCDHW,
    which has not been measured against it here.
    """
    if device.type == "mps":
        return False
    return spatial_dims == 2 or device.type == "cpu"


def _tile_starts(spatial: Sequence[int], patch: Sequence[int]) -> list[tuple[list[int], int]]:
    """Per axis: tile origins (3/4 of a patch apart, the last flush with the end) and the tile size."""
    out = []
    for n, p in zip(spatial, patch, strict=True):
        p = min(p, n)
        stride = max(1, int(p * 0.75))
        starts = list(range(0, max(1, n - p + 1), stride))
        if starts[-1] != n - p:
            starts.append(n - p)
        out.append((starts, p))
    return out


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
    if math.prod(spatial) <= 4 * math.prod(patch):
        with autocast_ctx(device, dtype):
            return model(x.contiguous(memory_format=fmt)).logits.float()[0].cpu()
    acc = torch.zeros((unwrap(model).out_channels, *spatial))
    cnt = torch.zeros((1, *spatial))
    tiles = _tile_starts(spatial, patch)
    for origin in itertools.product(*[s for s, _ in tiles]):
        sl = tuple(slice(o, o + p) for o, (_, p) in zip(origin, tiles, strict=True))
        with autocast_ctx(device, dtype):
            tile = x[(slice(None), slice(None), *sl)].contiguous(memory_format=fmt)
            out = model(tile).logits.float()[0].cpu()
        acc[(slice(None), *sl)] += out
        cnt[(slice(None), *sl)] += 1
    return acc / cnt


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
    means = {c: nanmean(v) for c, v in per_class.items()}
    return {"dice": nanmean(list(means.values())), "per_class": means, "cases": len(cases)}


def nanmean(v: Sequence[float]) -> float:
    """The mean of the values that are not NaN (NaN when none is)."""
    vals = [x for x in v if not math.isnan(x)]
    return math.nan if not vals else float(sum(vals) / len(vals))


def finite_or_none(v: Any) -> float | None:
    """A float rounded for JSON, or None for NaN, infinity and non-numbers."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if not math.isfinite(f) else round(f, 6)
