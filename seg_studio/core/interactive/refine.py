"""``refine``: one click becomes a corrected mask, predicted on a crop around the click and the structure.

The crop covers the clicks of the structure and the part of its current mask near the last click, plus
a margin, at least one model patch and at most two (per axis, at the model's spacing), so a click costs
the same on a 40-voxel crop and on a whole-body CT. The crop runs through the ordinary inference engine
(``core.inference.predict``: resampling to the model's spacing, windows, backends) with the guidance
channels added to the normalised image. Inside the crop the structure becomes what the model predicts;
voxels the user painted are never changed, nothing outside the crop is, and the result says which box
changed so a front end can make it one undo step.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..checkpoint import ModelMeta
from ..errors import InferenceError
from ..models.base import SegModel
from ..progress import CancelToken
from ..transforms import normalize
from ..volume import Volume
from .clicks import Click, ClickError, check_click
from .guidance import GuidanceSpec, guidance_maps

log = logging.getLogger(__name__)

Box = tuple[slice, ...]


@dataclass
class RefineOptions:
    """How a click is predicted: device, backend and precision as in ``PredictOptions``; ``margin``
    around the clicks and the structure in the scan's units (None: four click sizes).

    ``backend="auto"`` runs the crop compiled (OpenVINO / ONNX Runtime, exported once per checkpoint and
    window size) where installed: a hippocampus click took 0.4 s there against 1.0-2.8 s in torch bf16
    (same run, load 8 on the 2-core EPYC)."""

    device: str = "cpu"
    backend: str = "auto"
    precision: str = "auto"
    margin: float | None = None


@dataclass
class Refined:
    """The labels after a click and the one box in which anything may have changed.

    ``labels`` is a new array (the input is not modified); ``before`` is the input's ``labels[region]``,
    so putting it back undoes the click; ``changed`` counts the voxels that changed.
    """

    labels: np.ndarray
    region: Box
    before: np.ndarray
    changed: int
    value: int
    seconds: float


@dataclass
class Session:
    """What every click on one scan with one model reuses: the normalised image, the guidance record."""

    scan: Volume
    model: SegModel
    meta: ModelMeta
    spec: GuidanceSpec
    image: np.ndarray
    slice_mode: bool
    options: RefineOptions


def guidance_spec(meta: ModelMeta) -> GuidanceSpec:
    """The checkpoint's guidance record; a model that takes no clicks is refused with one line."""
    if meta.interactive is None:
        raise InferenceError(
            f"{meta.architecture} is an automatic model: it takes no clicks; pick an interactive model "
            "(its card says 'interactive', e.g. resources/models/hippocampus_clicks.segmodel)"
        )
    return GuidanceSpec.from_dict(meta.interactive, meta.in_channels)


def start_session(
    scan: Volume, model: SegModel, meta: ModelMeta, options: RefineOptions | None = None
) -> Session:
    """Check the pairing once and normalise the whole scan (a crop's statistics would differ from training's)."""
    spec = guidance_spec(meta)
    if scan.channels != spec.image_channels:
        raise InferenceError(
            f"the model takes {spec.image_channels} image channel(s) but the scan has {scan.channels}"
        )
    if meta.spatial_dims == 3 and scan.ndim == 2:
        raise InferenceError("this is a 3D interactive model and the scan is 2D; pick a 2D model")
    slice_mode = meta.spatial_dims == 2 and scan.ndim == 3
    image = normalize(scan.channel_first(), meta.normalization)
    return Session(scan, model, meta, spec, image, slice_mode, options or RefineOptions())


def crop_extents(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """The smallest and largest crop per array axis in scan voxels: one and two model patches."""
    meta, scan = session.meta, session.scan
    patch = np.asarray(meta.patch_size or ((96,) * 3 if meta.spatial_dims == 3 else (256, 256)), float)
    if meta.spacing is not None:
        patch = (
            patch * np.asarray(meta.spacing[::-1], float) / np.asarray(scan.spacing_zyx[-len(patch) :], float)
        )
    if session.slice_mode:
        patch = np.concatenate([[1.0], patch])
    lo = np.maximum(1, np.round(patch)).astype(int)
    hi = np.where(np.arange(lo.size) == 0, lo, 2 * lo) if session.slice_mode else 2 * lo
    return lo, hi


def crop_box(
    shape: Sequence[int],
    last: Sequence[int],
    points: np.ndarray,
    mask_box: Box | None,
    margin: np.ndarray,
    lo_ext: np.ndarray,
    hi_ext: np.ndarray,
) -> Box:
    """The crop: clicks and the structure near the last click plus ``margin`` voxels, then at most
    ``hi_ext`` (centred on the last click) and at least ``lo_ext`` (grown about its centre), in the scan."""
    shp, c = np.asarray(shape), np.asarray(last)
    lo, hi = points.min(0), points.max(0) + 1
    if mask_box is not None:
        lo = np.minimum(lo, [s.start for s in mask_box])
        hi = np.maximum(hi, [s.stop for s in mask_box])
    lo, hi = lo - margin, hi + margin
    size = np.clip(hi - lo, np.minimum(lo_ext, shp), np.minimum(hi_ext, shp))
    centre = np.where(hi - lo > hi_ext, c, (lo + hi) // 2)
    lo = np.clip(centre - size // 2, 0, shp - size)
    lo = np.minimum(lo, c)  # the last click is always inside
    lo = np.maximum(lo, c - size + 1)
    return tuple(slice(int(a), int(a + s)) for a, s in zip(lo, size, strict=True))


def structure_box(labels: np.ndarray, value: int, last: Sequence[int], hi_ext: np.ndarray) -> Box | None:
    """The box of the structure's voxels within ``hi_ext`` of the last click (None when there are none)."""
    win = tuple(
        slice(max(0, int(c) - int(e)), min(s, int(c) + int(e) + 1))
        for c, e, s in zip(last, hi_ext, labels.shape, strict=True)
    )
    mask = labels[win] == value
    if not mask.any():
        return None
    out = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        out.append(slice(win[ax].start + int(hit[0]), win[ax].start + int(hit[-1]) + 1))
    return tuple(out)


def crop_input(
    session: Session, region: Box, clicks: Sequence[Click], labels: np.ndarray, value: int
) -> Volume:
    """The crop as the model takes it: normalised image channels, then the guidance maps."""
    origin = np.array([s.start for s in region])
    spacing = session.scan.spacing_zyx
    pos = [np.array(c.voxel) - origin for c in clicks if c.positive]
    neg = [np.array(c.voxel) - origin for c in clicks if not c.positive]
    shape = tuple(s.stop - s.start for s in region)
    prev = labels[region] == value
    guide = guidance_maps(shape, spacing, pos, neg, prev, session.spec)
    arr = np.concatenate([session.image[(slice(None), *region)], guide]).astype(np.float32)
    return Volume.from_array(arr, spacing=session.scan.spacing, channels=arr.shape[0])


def predict_crop(session: Session, crop: Volume) -> np.ndarray:
    """The structure's voxels (bool) in the crop, through the inference engine (image already normalised).

    The crop runs as ONE window (it is at most two patches a side): no seams and no overlap to pay
    for (a 512 x 512 ISBI crop took 1.1-1.4 s as nine overlapping 256-windows). It is padded with zeros
    at the far end, as training pads its patches, to one or two patches a side, so a compiled backend
    compiles at most 2**dims window sizes per checkpoint (a new size cost 6-10 s on its first click)."""
    from ..inference import PredictOptions, predict

    opts = session.options
    patch = session.meta.patch_size or ((96,) * 3 if session.meta.spatial_dims == 3 else (256, 256))
    meta = dataclasses.replace(
        session.meta, normalization={"mode": "none"}, patch_size=tuple(2 * p for p in patch)
    )
    popts = PredictOptions(device=opts.device, backend=opts.backend, precision=opts.precision)
    shape = crop.spatial_shape
    unit = crop_extents(session)[0]
    want = np.maximum(shape, -(-np.asarray(shape) // unit) * unit)
    if tuple(want) != shape:
        arr = np.zeros((crop.channels, *want), np.float32)
        arr[(slice(None), *(slice(0, s) for s in shape))] = crop.array
        crop = Volume.from_array(arr, spacing=crop.spacing, channels=crop.channels)
    pred = predict(crop, session.model, meta, popts)
    found = pred.labels.array == session.meta.classes[1].value
    return found[tuple(slice(0, s) for s in shape)]


def window_sizes(session: Session) -> list[tuple[int, ...]]:
    """Every window size a click's crop can run as on this scan (``predict_crop`` pads a crop to one or
    two patches a side, or to the scan where it is smaller), smallest first, then the largest, then the
    mixed ones: what a compiled backend compiles, once per size."""
    import itertools

    lo, hi = crop_extents(session)
    shp = np.asarray(session.scan.spatial_shape)
    per_axis = []
    for ax in range(lo.size):
        a, b = int(min(lo[ax], shp[ax])), int(min(hi[ax], shp[ax]))
        sizes = {int(max(s, -(-s // lo[ax]) * lo[ax])) for s in (a, b)}
        per_axis.append(sorted(sizes))
    every = [tuple(c) for c in itertools.product(*per_axis)]
    ends = [every[0], every[-1]] if len(every) > 1 else every
    return ends + [c for c in every if c not in ends]


def warm_up(
    session: Session,
    sizes: Sequence[tuple[int, ...]] | None = None,
    limit: int = 4,
    cancel: CancelToken | None = None,
) -> list[tuple[int, ...]]:
    """Compile the model for this scan's crops before the first click (a compiled backend takes 6-10 s per
    window size on its first call): one prediction of a blank crop per size (``sizes``, else those of
    ``window_sizes``), at most ``limit`` (the backends keep four compiled models per process). Returns
    the sizes run."""
    done = []
    for size in list(sizes if sizes is not None else window_sizes(session))[:limit]:
        if cancel is not None:
            cancel.raise_if_cancelled()
        chans = session.image.shape[0] + session.spec.guidance_channels
        blank = np.zeros((chans, *size), np.float32)
        predict_crop(session, Volume.from_array(blank, spacing=session.scan.spacing, channels=chans))
        done.append(size)
    return done


def merge(
    labels: np.ndarray, region: Box, found: np.ndarray, value: int, painted: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """The structure in ``region`` becomes ``found``: found voxels take ``value``, voxels of ``value`` not
    found become background, painted voxels keep what they had. Returns (new labels, old crop, changed)."""
    before = labels[region].copy()
    after = before.copy()
    after[found] = value
    after[(before == value) & ~found] = 0
    if painted is not None:
        keep = painted[region].astype(bool)
        after[keep] = before[keep]
    out = labels.copy()
    out[region] = after
    return out, before, int(np.count_nonzero(after != before))


def refine_step(
    session: Session, clicks: Sequence[Click], labels: np.ndarray, painted: np.ndarray | None = None
) -> Refined:
    """One prediction for the structure of the last click, guided by all its clicks so far."""
    t0 = time.perf_counter()
    if not clicks:
        raise ClickError("no clicks given; click on the structure first")
    last = clicks[-1]
    shape = session.scan.spatial_shape
    for i, c in enumerate(clicks):
        check_click(c, shape, f"click {i + 1}")
    mine = [c for c in clicks if c.value == last.value]
    if session.slice_mode:
        mine = [c for c in mine if c.voxel[0] == last.voxel[0]]
    lo_ext, hi_ext = crop_extents(session)
    size = session.spec.sigma * 4 if session.options.margin is None else session.options.margin
    margin = np.ceil(size / np.asarray(session.scan.spacing_zyx, float)).astype(int)
    if session.slice_mode:
        margin[0] = 0
    points = np.array([c.voxel for c in mine])
    mask_box = structure_box(labels, last.value, last.voxel, hi_ext)
    region = crop_box(shape, last.voxel, points, mask_box, margin, lo_ext, hi_ext)
    found = predict_crop(session, crop_input(session, region, mine, labels, last.value))
    new, before, changed = merge(labels, region, found, last.value, painted)
    seconds = time.perf_counter() - t0
    log.info(
        "click %d (class %d): %d voxels changed in %s, %.2f s",
        len(clicks),
        last.value,
        changed,
        region,
        seconds,
    )
    return Refined(new, region, before, changed, last.value, seconds)


def check_labels(scan: Volume, labels: np.ndarray | None, painted: np.ndarray | None) -> np.ndarray:
    """The starting labels (background when None) as an integer array on the scan's grid."""
    shape = scan.spatial_shape
    if labels is None:
        return np.zeros(shape, dtype=np.uint16)
    if labels.shape != shape:
        raise ClickError(
            f"the labels have shape {list(labels.shape)} but the scan {list(shape)}; give labels of this scan"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ClickError("the labels are not whole numbers; give a label map")
    if painted is not None and painted.shape != shape:
        raise ClickError(f"the painted mask has shape {list(painted.shape)} but the scan {list(shape)}")
    return labels if labels.dtype.itemsize >= 2 else labels.astype(np.uint16)


def refine(
    scan: Volume,
    model: SegModel,
    meta: ModelMeta,
    clicks: Sequence[Click],
    labels: np.ndarray | None = None,
    painted: np.ndarray | None = None,
    options: RefineOptions | None = None,
) -> Refined:
    """Re-predict the structure of the last click (all its clicks guide the model) on a crop around the
    clicks and the structure; ``painted`` voxels (bool, the scan's shape) are never changed."""
    base = check_labels(scan, labels, painted)
    return refine_step(start_session(scan, model, meta, options), clicks, base, painted)


def apply_clicks(
    scan: Volume,
    model: SegModel,
    meta: ModelMeta,
    clicks: Sequence[Click],
    labels: np.ndarray | None = None,
    painted: np.ndarray | None = None,
    options: RefineOptions | None = None,
) -> tuple[np.ndarray, list[Refined]]:
    """Every click in order, as a user makes them (one prediction per click); the final labels and
    each step in order (its ``region`` and ``before`` undo it)."""
    session = start_session(scan, model, meta, options)
    current = check_labels(scan, labels, painted)
    steps: list[Refined] = []
    for i in range(len(clicks)):
        step = refine_step(session, clicks[: i + 1], current, painted)
        current = step.labels
        steps.append(step)
    return current, steps
