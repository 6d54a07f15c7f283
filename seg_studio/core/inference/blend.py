"""Step 2 of a prediction: the window loop that blends weighted window scores into whole-scan sums.

Batches of windows go through a ``WindowRunner`` on the device; their weighted scores are added
into float32 numpy buffers on the CPU, so the full volume never sits on the GPU and the peak grows
with the volume, not with volume x windows. Between batches the loop yields ``Progress`` and checks
the cancel token; out of memory halves the batch, then moves a GPU run to the CPU; a compiled
backend that fails mid-run hands over to torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InferenceError
from ..progress import CancelToken, EtaClock, Progress
from . import windows as W
from .devices import free_cache, is_out_of_memory
from .prepare import Prepared
from .runner import WindowRunner

log = logging.getLogger(__name__)

#: Voxels per window batch on the CPU (windows x window voxels); keeps activations to ~1-2 GB for a
#: 16-feature 3D U-Net while still batching small 2D windows.
CPU_BATCH_VOXELS = 2 * 96**3

Window = tuple[slice, ...]


@dataclass
class Blended:
    """Weighted sums over the windows: class scores ``(K, *work_shape)``, the spread and gate maps."""

    scores: np.ndarray
    spread: np.ndarray | None = None
    gates: list[np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


def empty_blend(classes: int, work_shape: Sequence[int], spread: bool) -> Blended:
    shape = tuple(work_shape)
    return Blended(
        scores=np.zeros((classes, *shape), dtype=np.float32),
        spread=np.zeros(shape, dtype=np.float32) if spread else None,
    )


def add_windows(
    blend: Blended,
    windows: Sequence[Window],
    scores: np.ndarray,
    spread: np.ndarray | None,
    gates: Sequence[np.ndarray],
) -> None:
    """Add one batch of weighted window outputs into the sums (gate buffers made on first use)."""
    work_shape = blend.scores.shape[1:]
    for i, w in enumerate(windows):
        blend.scores[(slice(None), *w)] += scores[i]
        if blend.spread is not None and spread is not None:
            blend.spread[w] += spread[i]
        if gates:
            if blend.gates is None:
                blend.gates = [np.zeros(work_shape, dtype=np.float32) for _ in gates]
            for g_acc, g in zip(blend.gates, gates, strict=True):
                g_acc[w] += g[i]


def window_batch(
    image: np.ndarray, starts: Sequence[Sequence[int]], roi: Sequence[int]
) -> tuple[list[Window], np.ndarray]:
    """The windows at ``starts`` and their stacked ``(N, C, *roi)`` image data."""
    windows = [tuple(slice(s, s + r) for s, r in zip(st, roi, strict=True)) for st in starts]
    return windows, np.stack([image[(slice(None), *w)] for w in windows])


def batch_size_for(requested: int, device: torch.device, roi: Sequence[int]) -> int:
    """Windows per batch: as asked, but on the CPU no more than ``CPU_BATCH_VOXELS`` voxels."""
    batch = max(1, int(requested))
    if device.type == "cpu":
        batch = max(1, min(batch, CPU_BATCH_VOXELS // math.prod(roi)))
    return batch


def recover(exc: BaseException, runner: WindowRunner, batch: int) -> tuple[int, str]:
    """After a failed batch: a compiled backend that failed goes back to torch; out of memory halves
    the batch, else moves a GPU run to the CPU, else gives up with one clear line. Any other error
    propagates. Returns the new batch size and what was done."""
    from .backends import BackendError

    if isinstance(exc, BackendError):
        runner.move_to(runner.device)
        return batch, f"{exc}; continuing with torch"
    if not is_out_of_memory(exc):
        raise exc
    device = runner.device
    free_cache(device)
    if batch > 1:
        batch //= 2
        return batch, f"out of memory on {device.type}: window batch halved to {batch}"
    if device.type != "cpu":
        runner.move_to(torch.device("cpu"))
        free_cache(device)
        return batch, "out of GPU memory even with one window: continuing on the CPU (slower)"
    raise InferenceError(
        "out of memory on the CPU with one window; use a smaller patch size or close other programs"
    ) from None


def run_windows(
    prep: Prepared,
    runner: WindowRunner,
    blend: Blended,
    batch: int,
    blend_mode: str = "gaussian",
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, Blended]:
    """Run every window of ``prep`` through ``runner`` and add it into ``blend``; yields per batch."""
    cancel = cancel or CancelToken()
    weight = torch.from_numpy(W.importance_map(prep.roi, blend_mode).copy())
    total = len(prep.starts)
    clock = EtaClock(total)
    log.info(
        "%d windows of %s on %s (%s), batch %d", total, prep.roi, runner.device, runner.forward.label, batch
    )
    done = 0
    while done < total:
        cancel.raise_if_cancelled()
        windows, xb = window_batch(prep.image, prep.starts[done : done + batch], prep.roi)
        try:
            scores, spread, gates = runner(xb, weight)
        except Exception as exc:  # noqa: BLE001 - recover re-raises what it cannot handle
            batch, msg = recover(exc, runner, batch)
            log.warning(msg)
            blend.notes.append(msg)
            yield Progress(done, total, "predict", msg, clock.eta(done))
            continue
        add_windows(blend, windows, scores, spread, gates)
        done += len(windows)
        yield Progress(
            done, total, "predict", f"window {done}/{total} on {runner.device.type}", clock.eta(done)
        )
    return blend
