"""Step 2's inner part: run one batch of windows through the model, with flip TTA and attention.

A ``WindowRunner`` takes ``(N, C, *roi)`` windows and returns them scored and weighted by the
importance map, ready to be added into the blend. How the network itself runs is a *forward*: torch
(``TorchForward``: a private fused copy, channels-last, autocast) or a compiled backend
(``backends.CompiledForward``); the runner does the same flips and maths around either.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Collection
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import ModelMeta
from ..models.base import AUX_ATTENTION, AUX_UNCERTAINTY, SegModel, SegOutput
from .devices import autocast, resolve_precision

log = logging.getLogger(__name__)


class Forward(Protocol):
    """How a runner calls the network: ``forward(x, aux)`` like ``SegModel.forward``."""

    #: what ran, for logs and the result ("torch bf16", "openvino bf16", ...)
    label: str

    def adopt(self, x: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor, aux: Collection[str] = ()) -> SegOutput: ...


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode model with each Conv->BatchNorm pair inside a Sequential folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for seq in fused.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = seq._modules[a], seq._modules[b]
            if (
                isinstance(conv, nn.Conv2d | nn.Conv3d)
                and isinstance(bn, nn.BatchNorm2d | nn.BatchNorm3d)
                and bn.track_running_stats
                and bn.running_mean is not None
                and conv.out_channels == bn.num_features
            ):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return fused


def has_own_uncertainty(model: SegModel) -> bool:
    """Whether the model reports its own uncertainty (an ensemble's member spread): probe once."""
    m = model.size_multiple
    x = torch.zeros(1, model.in_channels, *(m,) * model.spatial_dims, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return bool(model(x, aux={AUX_UNCERTAINTY}).aux.get(AUX_UNCERTAINTY))
    finally:
        model.train(was_training)


def tta_flip_axes(meta: ModelMeta) -> list[int] | None:
    """The spatial axes (0-based, array order) the model was trained to be mirror-invariant along.

    Training records them (``provenance.settings.flip_axes``): ``flip="auto"`` leaves out every axis
    along which a class is lateralised (JSRT's left/right lungs, MSD hippocampus head/tail). Test-time
    flips along any other axis swap those classes: on the shipped hippocampus model, flip TTA over all
    three axes dropped the validation Dice from 0.876 to 0.09. None: not recorded (imported weights,
    or trained with every axis), so every axis is used.
    """
    settings = (meta.provenance or {}).get("settings") or {}
    axes = settings.get("flip_axes")
    if axes is None:
        return None
    return sorted({int(a) for a in axes if 0 <= int(a) < meta.spatial_dims})


def tta_notes(tta: bool, flip_axes: list[int] | None, spatial_dims: int) -> list[str]:
    """What the user must know when TTA runs with fewer flips than axes (lateralised classes)."""
    if not tta or flip_axes is None or len(flip_axes) >= spatial_dims:
        return []
    if flip_axes:
        return [
            f"test-time flips only along array axes {flip_axes}: the model was trained to mirror only there"
        ]
    return [
        "no test-time flips: the model was trained without mirroring (its classes are lateralised), "
        "so flipped inputs would swap them"
    ]


def flip_sets(tta: bool, spatial_dims: int, flip_axes: list[int] | None) -> list[tuple[int, ...]]:
    """Every combination of the allowed flip axes, as tensor dims (N, C, *spatial); ``[()]`` without TTA."""
    if not tta:
        return [()]
    allowed = range(spatial_dims) if flip_axes is None else flip_axes
    axes = [2 + a for a in allowed]
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class TorchForward:
    """The network in torch on one device: a private copy (the caller's model keeps its device, mode
    and memory format), Conv+BN folded, channels-last, under autocast where it pays."""

    def __init__(
        self, model: SegModel, device: torch.device, precision: str, fuse_bn: bool, channels_last: bool
    ):
        self.device = device
        self.dtype = resolve_precision(precision, device)
        net = fuse_conv_bn(model) if fuse_bn else copy.deepcopy(model)
        net = net.to(device).eval()
        self.memory_format = None
        if channels_last:
            # Measured on a 2-core AVX2 EPYC: a 16-feature 3D U-Net on 96^3 runs ~1.6x faster in
            # channels_last_3d than in NCDHW (fp32); 2D gains as much (benchmarks/inference.py).
            self.memory_format = torch.channels_last if model.spatial_dims == 2 else torch.channels_last_3d
            net = net.to(memory_format=self.memory_format)
        self.net = net
        self.label = f"torch {self.dtype or torch.float32}".replace("torch.", "")

    def adopt(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)

    def __call__(self, x: torch.Tensor, aux: Collection[str] = ()) -> SegOutput:
        with autocast(self.device, self.dtype):
            return self.net(x, aux=aux)


class WindowRunner:
    """Runs batches of windows through a forward; knows slice mode, flip TTA and attention."""

    def __init__(
        self,
        forward: Forward,
        spatial_dims: int,
        slice_mode: bool,
        tta: bool,
        want: frozenset[str],
        flip_axes: list[int] | None = None,
        rebuild: Callable[[torch.device], Forward] | None = None,
    ) -> None:
        self.forward = forward
        self._rebuild = rebuild
        self.spatial_dims = spatial_dims
        self.slice_mode = slice_mode
        self.tta = tta
        self.want = want
        self.flips = flip_sets(tta, spatial_dims, flip_axes)

    @property
    def device(self) -> torch.device:
        return getattr(self.forward, "device", torch.device("cpu"))

    def move_to(self, device: torch.device) -> None:
        """Continue on another device (out of GPU memory even with one window: the CPU)."""
        if self._rebuild is None:
            raise RuntimeError("this runner cannot change device")
        self.forward = self._rebuild(device)

    @torch.inference_mode()
    def __call__(
        self, batch: np.ndarray, weight: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
        """``batch``: (N, C, *roi) float32. Returns weighted scores, weighted spread, weighted gates."""
        x = torch.from_numpy(batch)
        if self.slice_mode:
            x = x[:, :, 0]
        x = self.forward.adopt(x)
        total, spread, gates = self._flip_average(x)
        if self.slice_mode:
            total = total.unsqueeze(2)
            spread = None if spread is None else spread.unsqueeze(1)
            gates = [g.unsqueeze(2) for g in gates]
        w = weight.to(total.device)
        scores = (total * w).cpu().numpy()
        spread_np = None if spread is None else (spread * w).cpu().numpy()
        gates_np = [(g[:, 0] * w).cpu().numpy() for g in gates]
        return scores, spread_np, gates_np

    def _flip_average(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """Logits (no TTA) or the mean probabilities over the flips, the spread, and the gate maps.

        Without TTA the spread is the model's own (an ensemble's), if it reports one; with TTA it is
        the mean over classes of the std over flips. Gate maps come from the unflipped pass, resized
        to the window.
        """
        roi = tuple(x.shape[2:])
        total = sq = None
        gates: list[torch.Tensor] = []
        for k, dims in enumerate(self.flips):
            xi = x.flip(dims) if dims else x
            out = self.forward(xi, aux=self.want if k == 0 else ())
            logits = out.logits.float()
            if dims:
                logits = logits.flip(dims)
            if k == 0 and self.want:
                mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
                gates = [
                    F.interpolate(a.float(), size=roi, mode=mode, align_corners=False)
                    for a in out.aux.get(AUX_ATTENTION, [])
                ]
            if not self.tta:
                own = out.aux.get(AUX_UNCERTAINTY)
                # (N, K, *roi) per-class std from the model itself
                return logits, (own[0].float().mean(dim=1) if own else None), gates
            p = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
            total = p if total is None else total + p
            sq = p * p if sq is None else sq + p * p
        assert total is not None and sq is not None
        n = len(self.flips)
        total = total / n
        var = (sq / n - total * total).clamp_min(0)
        return total, var.sqrt().mean(dim=1), gates  # spread (N, *roi): mean over classes of the std
