"""The sliding-window inference engine.

``iter_predict`` is a generator: it yields ``Progress`` between window batches (where it also
checks the cancel token) and returns a ``Prediction`` in the scan's own geometry. Steps:

1. normalise intensities as the checkpoint says; resample to the model's spacing (linear);
2. place windows (MONAI's placement, Gaussian importance map); a 2D model on a 3D scan runs on
   1-slice windows, batched across slices;
3. run batches of windows on the device (autocast where it pays), multiply by the importance map
   there, and add into float32 numpy buffers on the CPU, so the full volume never sits on the GPU
   and the peak grows with the volume, not with volume x windows;
4. labels = argmax (no division needed: the weight sum is positive) or a threshold for a
   single-logit model; probabilities only when asked for; back to the source grid exactly
   (labels nearest, probabilities linear); optional post-processing.

Nothing is written anywhere: cancelling (``Cancelled`` between batches) leaves no trace.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import postprocess as _post
from ..checkpoint import ModelMeta
from ..defaults import OVERLAP
from ..errors import InferenceError
from ..models.base import AUX_ATTENTION, AUX_UNCERTAINTY, SegModel
from ..progress import CancelToken, EtaClock, Progress
from ..transforms import normalize, resample_to_shape, resampled_shape
from ..volume import Volume
from . import windows as W
from .devices import autocast, free_cache, is_out_of_memory, pick_device, resolve_precision

log = logging.getLogger(__name__)

#: Voxels per window batch on the CPU (windows x window voxels); keeps activations to ~1-2 GB for a
#: 16-feature 3D U-Net while still batching small 2D windows.
CPU_BATCH_VOXELS = 2 * 96**3


@dataclass
class PredictOptions:
    """How to run a prediction.

    ``uncertainty`` is the spread of the class probabilities over flip TTA (turned on for it), or,
    for a model that reports its own spread (an ensemble) and no TTA asked for, the model's.
    """

    device: str = "auto"
    overlap: float = OVERLAP
    batch_size: int = 4
    tta: bool = False
    precision: str = "auto"
    probabilities: bool = False
    attention: bool = False
    uncertainty: bool = False
    postprocess: dict[str, Any] | None = None
    #: for single-logit (sigmoid) models
    threshold: float = 0.5
    #: "gaussian" (default) or "constant" window blending
    blend: str = "gaussian"
    #: fold eval-mode BatchNorm into the preceding convolution (same maths, one pass fewer)
    fuse_bn: bool = True
    #: channels-last memory format (faster convolutions on CPU and on tensor cores)
    channels_last: bool = True


@dataclass
class Prediction:
    """The result, in the source scan's geometry."""

    labels: Volume
    probabilities: Volume | None = None
    attention: list[Volume] = field(default_factory=list)
    uncertainty: Volume | None = None
    device: str = "cpu"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# --- model preparation ----------------------------------------------------------------------------


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


def _has_own_uncertainty(model: SegModel) -> bool:
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


class _Runner:
    """Runs batches of windows on one device; knows slice mode, TTA and attention."""

    def __init__(
        self,
        model: SegModel,
        device: torch.device,
        opts: PredictOptions,
        slice_mode: bool,
        flip_axes: list[int] | None = None,
    ) -> None:
        self.source_model = model
        self.opts = opts
        self.flip_axes = flip_axes
        self.slice_mode = slice_mode
        self.spatial_dims = model.spatial_dims
        self.want = frozenset(
            ({AUX_ATTENTION} if opts.attention else set())
            | ({AUX_UNCERTAINTY} if opts.uncertainty else set())
        )
        self.to_device(device)

    def to_device(self, device: torch.device) -> None:
        self.device = device
        self.dtype = resolve_precision(self.opts.precision, device)
        # a private copy: the caller's model keeps its device, mode and memory format
        model = fuse_conv_bn(self.source_model) if self.opts.fuse_bn else copy.deepcopy(self.source_model)
        model = model.to(device).eval()
        self.memory_format = None
        if self.opts.channels_last:
            # Measured on a 2-core AVX2 EPYC: a 16-feature 3D U-Net on 96^3 runs ~1.6x faster in
            # channels_last_3d than in NCDHW (fp32); 2D gains as much (benchmarks/inference.py).
            self.memory_format = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
            model = model.to(memory_format=self.memory_format)
        self.model = model

    def flips(self) -> list[tuple[int, ...]]:
        """Every combination of the allowed flip axes, as tensor dims (N, C, *spatial)."""
        if not self.opts.tta:
            return [()]
        allowed = range(self.spatial_dims) if self.flip_axes is None else self.flip_axes
        axes = [2 + a for a in allowed]
        return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]

    @torch.inference_mode()
    def __call__(
        self, batch: np.ndarray, weight: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
        """``batch``: (N, C, *roi) float32. Returns weighted scores, weighted spread, weighted gates."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.slice_mode:
            x = x[:, :, 0]
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        roi = tuple(x.shape[2:])
        flips = self.flips()
        total = sq = None
        gates: list[torch.Tensor] = []
        for k, dims in enumerate(flips):
            xi = x.flip(dims) if dims else x
            with autocast(self.device, self.dtype):
                out = self.model(xi, aux=self.want if k == 0 else ())
            logits = out.logits.float()
            if dims:
                logits = logits.flip(dims)
            if k == 0 and self.want:
                mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
                gates = [
                    F.interpolate(a.float(), size=roi, mode=mode, align_corners=False)
                    for a in out.aux.get(AUX_ATTENTION, [])
                ]
            if not self.opts.tta:
                total = logits
                own = out.aux.get(AUX_UNCERTAINTY)
                if own:  # (N, K, *roi) per-class std from the model itself
                    sq = own[0].float().mean(dim=1)
                break
            p = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
            total = p if total is None else total + p
            sq = p * p if sq is None else sq + p * p
        assert total is not None
        spread = sq if not self.opts.tta else None
        if self.opts.tta:
            n = len(flips)
            total = total / n
            var = (sq / n - total * total).clamp_min(0)  # type: ignore[operator]
            spread = var.sqrt().mean(dim=1)  # (N, *roi): mean over classes of the std over flips
        if self.slice_mode:
            total = total.unsqueeze(2)
            spread = None if spread is None else spread.unsqueeze(1)
            gates = [g.unsqueeze(2) for g in gates]
        w = weight.to(self.device)
        total = total * w
        scores = total.cpu().numpy()
        spread_np = None if spread is None else (spread * w).cpu().numpy()
        gates_np = [(g[:, 0] * w).cpu().numpy() for g in gates]
        return scores, spread_np, gates_np


# --- the engine -------------------------------------------------------------------------------------


def _check(volume: Volume, model: SegModel, meta: ModelMeta) -> bool:
    """Validate the pairing and return True for slice mode (2D model on a 3D scan)."""
    if volume.channels != meta.in_channels:
        raise InferenceError(
            f"the model takes {meta.in_channels} channel(s) ({', '.join(meta.channel_names)}) but the scan has "
            f"{volume.channels}"
        )
    if model.spatial_dims != meta.spatial_dims or model.out_channels != meta.out_channels:
        raise InferenceError("the model does not match its metadata (dims or classes); reload the checkpoint")
    if meta.spatial_dims == 3 and volume.ndim == 2:
        raise InferenceError("this is a 3D model and the scan is 2D; pick a 2D model")
    return meta.spatial_dims == 2 and volume.ndim == 3


def _target_spacing(meta: ModelMeta, volume: Volume, slice_mode: bool) -> list[float | None] | None:
    if meta.spacing is None:
        return None
    target: list[float | None] = list(meta.spacing)
    if slice_mode:
        target = [*target[:2], None]  # in-plane only; slices stay slices
    if len(target) != volume.ndim:
        raise InferenceError(f"model spacing {meta.spacing} does not fit a {volume.ndim}D scan")
    return target


def _roi(meta: ModelMeta, shape: Sequence[int], slice_mode: bool) -> tuple[int, ...]:
    patch = tuple(meta.patch_size) or ((96,) * 3 if meta.spatial_dims == 3 else (256, 256))
    if slice_mode:
        patch = (1, *patch)
    if len(patch) != len(shape):
        raise InferenceError(f"patch size {meta.patch_size} does not fit a {len(shape)}D scan")
    return tuple(min(p, s) for p, s in zip(patch, shape, strict=True))


def _chunks(n: int, step: int = 8) -> list[slice]:
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _argmax(acc: np.ndarray) -> np.ndarray:
    """Argmax over the class axis, slab by slab, into the smallest unsigned type (no int64 volume)."""
    k = acc.shape[0]
    out = np.empty(acc.shape[1:], dtype=np.uint8 if k <= 256 else np.uint16)
    if k == 2:
        np.greater(acc[1], acc[0], out=out, casting="unsafe")
        return out
    for sl in _chunks(acc.shape[1]):
        out[sl] = acc[:, sl].argmax(axis=0)
    return out


def _divide(acc: np.ndarray, wsum: np.ndarray) -> None:
    """``acc /= wsum`` in place, slab by slab along the first spatial axis (no temporary volume)."""
    for sl in _chunks(wsum.shape[0]):
        acc[:, sl] /= wsum[sl]


def _softmax_inplace(acc: np.ndarray) -> None:
    for sl in _chunks(acc.shape[1]):
        block = acc[:, sl]
        block -= block.max(axis=0, keepdims=True)
        np.exp(block, out=block)
        block /= block.sum(axis=0, keepdims=True)


def _label_dtype(values: Sequence[int]) -> np.dtype:
    top = max(values) if values else 1
    return np.dtype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)


def iter_predict(
    volume: Volume,
    model: SegModel,
    meta: ModelMeta,
    options: PredictOptions | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, Prediction]:
    """Segment ``volume``; yields progress per window batch, returns a ``Prediction``.

    The caller's model is not modified (a fused copy runs); it may live on any device.
    """
    opts = copy.copy(options or PredictOptions())
    model_spread = opts.uncertainty and not opts.tta and _has_own_uncertainty(model)
    if opts.uncertainty and not model_spread:
        opts.tta = True  # the spread over flips is the uncertainty
    if not 0 <= opts.overlap < 1:
        raise InferenceError(f"overlap must be in [0, 1), got {opts.overlap}")
    cancel = cancel or CancelToken()
    t0 = time.perf_counter()
    slice_mode = _check(volume, model, meta)
    device = pick_device(opts.device)
    notes: list[str] = []
    yield Progress(0, 0, "prepare", "normalising")

    src_shape = volume.spatial_shape
    image = normalize(volume.channel_first(), meta.normalization)
    target = _target_spacing(meta, volume, slice_mode)
    work_shape = src_shape if target is None else resampled_shape(src_shape, volume.spacing, target)
    if work_shape != src_shape:
        log.info("resampling %s -> %s voxels for the model's spacing %s", src_shape, work_shape, meta.spacing)
        image = resample_to_shape(image, work_shape, "linear")
    cancel.raise_if_cancelled()

    roi = _roi(meta, work_shape, slice_mode)
    starts = W.window_starts(work_shape, roi, opts.overlap)
    weight_np = W.importance_map(roi, opts.blend)
    weight = torch.from_numpy(weight_np.copy())
    k = meta.out_channels
    acc = np.zeros((k, *work_shape), dtype=np.float32)
    spread_acc = np.zeros(work_shape, dtype=np.float32) if opts.uncertainty else None
    gate_acc: list[np.ndarray] | None = None

    flip_axes = tta_flip_axes(meta)
    runner = _Runner(model, device, opts, slice_mode, flip_axes)
    if opts.tta and flip_axes is not None and len(flip_axes) < model.spatial_dims:
        if flip_axes:
            notes.append(
                f"test-time flips only along array axes {flip_axes}: the model was trained to mirror only there"
            )
        else:
            notes.append(
                "no test-time flips: the model was trained without mirroring (its classes are lateralised), "
                "so flipped inputs would swap them"
            )
        log.info(notes[-1])
    batch = max(1, int(opts.batch_size))
    if device.type == "cpu":
        batch = max(1, min(batch, CPU_BATCH_VOXELS // math.prod(roi)))
    total = len(starts)
    clock = EtaClock(total)
    log.info("%d windows of %s on %s (%s), batch %d", total, roi, device, runner.dtype or "float32", batch)
    done = 0
    while done < total:
        cancel.raise_if_cancelled()
        chunk = starts[done : done + batch]
        windows = [tuple(slice(s, s + r) for s, r in zip(st, roi, strict=True)) for st in chunk]
        xb = np.stack([image[(slice(None), *w)] for w in windows])
        try:
            scores, spread, gates = runner(xb, weight)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            free_cache(runner.device)
            if batch > 1:
                batch //= 2
                msg = f"out of memory on {runner.device.type}: window batch halved to {batch}"
            elif runner.device.type != "cpu":
                runner.to_device(torch.device("cpu"))
                free_cache(device)
                msg = "out of GPU memory even with one window: continuing on the CPU (slower)"
            else:
                raise InferenceError(
                    "out of memory on the CPU with one window; use a smaller patch size or close other programs"
                ) from None
            log.warning(msg)
            notes.append(msg)
            yield Progress(done, total, "predict", msg, clock.eta(done))
            continue
        for i, w in enumerate(windows):
            acc[(slice(None), *w)] += scores[i]
            if spread_acc is not None and spread is not None:
                spread_acc[w] += spread[i]
            if gates:
                if gate_acc is None:
                    gate_acc = [np.zeros(work_shape, dtype=np.float32) for _ in gates]
                for g_acc, g in zip(gate_acc, gates, strict=True):
                    g_acc[w] += g[i]
        done += len(chunk)
        yield Progress(
            done, total, "predict", f"window {done}/{total} on {runner.device.type}", clock.eta(done)
        )
    del image
    if opts.attention and gate_acc is None:
        notes.append(f"{meta.architecture} has no attention gates; no attention maps")

    # --- finalise: labels, probabilities, maps, back to the source grid ------------------------------------
    yield Progress(total, total, "finalise", "labels")
    wsum: np.ndarray | None = None

    def weights() -> np.ndarray:
        nonlocal wsum
        if wsum is None:
            wsum = W.weight_sum(work_shape, roi, starts, opts.blend)
        return wsum

    values = [c.value for c in meta.classes]
    if k == 1:
        _divide(acc, weights())
        if not opts.tta:  # scores are logits: threshold in logit space, sigmoid only if asked for
            cut = math.log(opts.threshold / (1 - opts.threshold)) if 0 < opts.threshold < 1 else 0.0
            idx = (acc[0] > cut).astype(np.uint8)
            if opts.probabilities:
                np.negative(acc, out=acc)
                np.exp(acc, out=acc)
                acc += 1
                np.reciprocal(acc, out=acc)
        else:
            idx = (acc[0] > opts.threshold).astype(np.uint8)
    else:
        idx = _argmax(acc)
        if opts.probabilities:
            _divide(acc, weights())
            if not opts.tta:
                _softmax_inplace(acc)
    lut = np.asarray(values if len(values) > 1 else [0, 1], dtype=_label_dtype(values))
    if not np.array_equal(lut, np.arange(len(lut))):
        idx = lut[idx]
    else:
        idx = idx.astype(lut.dtype, copy=False)
    labels = resample_to_shape(idx[None], src_shape, "nearest")[0]
    labels = _post.apply(labels, opts.postprocess)

    geom = {"spacing": volume.spacing, "origin": volume.origin, "direction": volume.direction}
    labels_vol = Volume(
        array=np.ascontiguousarray(labels),
        labels=meta.label_infos(),
        source=None,
        meta={"kind": "labels", "architecture": meta.architecture, "from": str(volume.source or "")},
        **geom,
    )
    prob_vol = None
    if opts.probabilities:
        probs = resample_to_shape(acc, src_shape, "linear")
        prob_vol = Volume(
            array=probs if k > 1 else probs[0],
            channels=k if k > 1 else 1,
            meta={"kind": "probabilities", "classes": [c.name for c in meta.classes]},
            **geom,
        )
    del acc
    unc_vol = None
    if spread_acc is not None:
        _divide(spread_acc[None], weights())
        unc_vol = Volume(
            array=resample_to_shape(spread_acc[None], src_shape, "linear")[0],
            meta={
                "kind": "uncertainty",
                "what": "mean over classes of the std of class probabilities over "
                + ("flip TTA" if opts.tta else "the ensemble's members"),
            },
            **geom,
        )
    att_vols = []
    for i, g_acc in enumerate(gate_acc or []):
        _divide(g_acc[None], weights())
        att_vols.append(
            Volume(
                array=resample_to_shape(g_acc[None], src_shape, "linear")[0],
                meta={"kind": "attention", "gate": i, "name": f"attention gate {i} (deepest first)"},
                **geom,
            )
        )
    seconds = time.perf_counter() - t0
    log.info("predicted %s in %.1f s on %s", src_shape, seconds, runner.device)
    return Prediction(labels_vol, prob_vol, att_vols, unc_vol, str(runner.device), seconds, notes)


def predict(
    volume: Volume,
    model: SegModel,
    meta: ModelMeta,
    options: PredictOptions | None = None,
    cancel: CancelToken | None = None,
) -> Prediction:
    """``iter_predict`` without progress: the plain-call form."""
    from ..progress import run_to_end

    return run_to_end(iter_predict(volume, model, meta, options, cancel))
