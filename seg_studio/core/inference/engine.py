"""The sliding-window inference engine: ``iter_predict`` composes three named steps.

``iter_predict`` is a generator: it yields ``Progress`` between window batches (where it also
checks the cancel token) and returns a ``Prediction`` in the scan's own geometry. Steps:

1. ``prepare.prepare``: normalise intensities as the checkpoint says, resample to the model's
   spacing (linear), place windows (MONAI's placement); a 2D model on a 3D scan runs on 1-slice
   windows, batched across slices;
2. ``blend.run_windows``: run batches of windows through a ``runner.WindowRunner`` (flip TTA,
   attention, autocast where it pays), weight them by the Gaussian importance map and add them into
   float32 numpy buffers on the CPU, so the full volume never sits on the GPU;
3. ``finish.finish``: labels = argmax (no division needed: the weight sum is positive) or a
   threshold for a single-logit model; probabilities and maps only when asked for; back to the
   source grid exactly (labels nearest, maps linear); optional post-processing.

Nothing is written anywhere: cancelling (``Cancelled`` between batches) leaves no trace.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..checkpoint import ModelMeta
from ..defaults import OVERLAP
from ..errors import InferenceError
from ..models.base import AUX_ATTENTION, AUX_UNCERTAINTY, SegModel
from ..progress import CancelToken, Progress
from ..volume import Volume
from .backends import choose_backend, try_compiled
from .blend import batch_size_for, empty_blend, run_windows
from .devices import pick_device, resolve_precision
from .finish import PROBABILITY_DTYPES, finish
from .prepare import Prepared, check_pairing, prepare
from .runner import TorchForward, WindowRunner, fuse_conv_bn, has_own_uncertainty, tta_flip_axes, tta_notes

log = logging.getLogger(__name__)

__all__ = ["Prediction", "PredictOptions", "fuse_conv_bn", "iter_predict", "predict"]


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
    #: "float32", or "uint8" (round(p * 255), a quarter of the memory; ``meta["scale"]`` = 1/255)
    probability_dtype: str = "float32"
    #: "auto" (OpenVINO or ONNX Runtime on the CPU when installed, else torch), "torch", "openvino",
    #: "onnxruntime"; GPUs always run torch (see ``backends``)
    backend: str = "auto"


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
    #: what ran the network ("openvino bf16", "torch bfloat16", ...)
    backend: str = "torch"


# --- the engine: prepare -> window loop -> finish ----------------------------------------------------


def resolve_options(options: PredictOptions | None, model: SegModel) -> PredictOptions:
    """A private copy of the options; an uncertainty request turns flip TTA on unless the model
    reports its own spread (an ensemble) and no TTA was asked for."""
    opts = copy.copy(options or PredictOptions())
    if opts.probability_dtype not in PROBABILITY_DTYPES:
        raise InferenceError(
            f"probabilities can be {' or '.join(PROBABILITY_DTYPES)}, not {opts.probability_dtype!r}"
        )
    model_spread = opts.uncertainty and not opts.tta and has_own_uncertainty(model)
    if opts.uncertainty and not model_spread:
        opts.tta = True  # the spread over flips is the uncertainty
    return opts


def make_runner(
    model: SegModel, meta: ModelMeta, device: torch.device, opts: PredictOptions, prep: Prepared, backend: str
) -> Generator[Progress, None, WindowRunner]:
    """The window runner for this prediction: ``backend`` (see ``backends.choose_backend``) where it
    compiles, else torch on ``device``; flip TTA and the asked maps either way."""
    want = frozenset(
        ({AUX_ATTENTION} if opts.attention else set()) | ({AUX_UNCERTAINTY} if opts.uncertainty else set())
    )

    def torch_forward(dev: torch.device) -> TorchForward:
        return TorchForward(model, dev, opts.precision, opts.fuse_bn, opts.channels_last)

    forward = None
    if backend != "torch":
        net_roi = prep.roi[1:] if prep.slice_mode else prep.roi
        dtype = resolve_precision(opts.precision, device)
        forward = yield from try_compiled(backend, model, meta, net_roi, want, dtype)
    return WindowRunner(
        forward or torch_forward(device),
        model.spatial_dims,
        prep.slice_mode,
        opts.tta,
        want,
        tta_flip_axes(meta),
        rebuild=torch_forward,
    )


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
    opts = resolve_options(options, model)
    cancel = cancel or CancelToken()
    t0 = time.perf_counter()
    slice_mode = check_pairing(volume, model, meta, opts.overlap)
    device = pick_device(opts.device)
    backend = choose_backend(opts.backend, device, resolve_precision(opts.precision, device))
    yield Progress(0, 0, "prepare", "normalising")
    prep = prepare(volume, meta, opts.overlap, slice_mode)
    cancel.raise_if_cancelled()

    runner = yield from make_runner(model, meta, device, opts, prep, backend)
    notes = tta_notes(opts.tta, tta_flip_axes(meta), model.spatial_dims)
    for note in notes:
        log.info(note)
    blend = empty_blend(meta.out_channels, prep.work_shape, opts.uncertainty)
    batch = batch_size_for(opts.batch_size, device, prep.roi)
    yield from run_windows(prep, runner, blend, batch, opts.blend, cancel)
    prep.image = np.empty(0, np.float32)  # the model's input is no longer needed: free it first
    notes += blend.notes
    if opts.attention and blend.gates is None:
        notes.append(f"{meta.architecture} has no attention gates; no attention maps")

    total = len(prep.starts)
    yield Progress(total, total, "finalise", "labels")
    labels, probs, unc, att = finish(prep, blend, volume, meta, opts)
    seconds = time.perf_counter() - t0
    label = runner.forward.label
    log.info("predicted %s in %.1f s on %s (%s)", prep.src_shape, seconds, runner.device, label)
    return Prediction(labels, probs, att, unc, str(runner.device), seconds, notes, label)


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
