"""A model's domain: what it was trained on, and whether a scan (and a result) lies inside it.

A U-Net segments whatever it is given and always paints plausible class names, so a model used
outside its training data gives confident garbage (the hippocampus model trained on 40x56x40 mm
crops painted 16 % of a whole TCIA head). Every checkpoint therefore records a ``Domain``: modality,
dims, channels, voxel spacing and field-of-view ranges, the intensity quantiles after the model's own
normalisation, a sentence on the expected input, and per class the voxel fraction and uncertainty it
produced on its validation data. Before a prediction ``check_scan`` compares the scan with it; after,
``check_result`` compares the prediction with what the model produced on its validation scans.
``rank_checkpoints`` orders candidate checkpoints by how well their domains fit a scan (the panel's
default). Everything here is pure numpy on a subsample, so it is cheap enough for the UI thread.

The tolerances below were set on the data in ../shared/data: MSD Task04 crops (dev and extra sets)
pass the hippocampus domain; whole-head TCIA series, JSRT films, HC18 ultrasound and TotalSegmentator
CT fail it (docs/model_domains.md lists every shipped model against every data set).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .display import scan_modality
from .errors import CheckpointError
from .io import has_physical_spacing
from .volume import Volume

log = logging.getLogger(__name__)

DOMAIN_VERSION = 1
#: Percentiles of the normalised intensities recorded per training scan.
QUANTILES: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
#: A voxel spacing may differ this much (ratio) from the training range before it is flagged.
SPACING_TOLERANCE = 1.25
#: A field of view may differ this much (ratio) from the training range before it is flagged.
FOV_TOLERANCE = 1.5
#: A normalised quantile may lie this far (plus half the training spread) outside the training range.
INTENSITY_MARGIN = 0.35
#: A class fraction is flagged above FRACTION_FACTOR x the validation maximum (and FRACTION_ABS more).
FRACTION_FACTOR = 2.0
FRACTION_ABS = 0.005
#: Mean uncertainty is flagged above UNCERTAINTY_FACTOR x the validation maximum (and UNCERTAINTY_ABS more).
UNCERTAINTY_FACTOR = 1.5
UNCERTAINTY_ABS = 0.02
#: The dark share (voxels within DARK_LEVEL of the intensity range above the minimum: the black outside an
#: ultrasound sector, the air around a body) is flagged outside [low / DARK_FACTOR, high x DARK_FACTOR + DARK_ABS]
#: of the training images'. Set on ../shared/data: HC18 ultrasound 6.6-62 %, JSRT films 0-2.5 %, ISBI EM 0-0.3 %,
#: MSD crops 0-0.9 %, the CT examples 0 %: intensity quantiles alone cannot tell these grey images apart.
DARK_LEVEL = 0.01
DARK_FACTOR = 2.0
DARK_ABS = 0.05
#: Statistics are taken on at most this many voxels (a strided subsample).
SAMPLE_VOXELS = 1_000_000

#: Severities: "refuse" (the model cannot run), "mismatch" (outside the domain), "note" (what was done),
#: "unknown" (nothing to compare with). Only "note" leaves a checkpoint fitting the scan.
_WEIGHT = {"refuse": 100, "unknown": 20, "mismatch": 10, "note": 1}


@dataclass(frozen=True)
class DomainWarning:
    """One problem: a code (``dims``, ``modality``, ``spacing``, ``fov``, ...), one line for the user."""

    code: str
    message: str
    severity: str = "mismatch"

    def __str__(self) -> str:
        return self.message


Span = tuple[float, float]  # (low, high)
Stat = tuple[float, float, float]  # (low, mean, high) over cases


@dataclass(frozen=True)
class ClassStats:
    """Per class: voxel fraction in the training labels, and the fraction and mean uncertainty the model
    produced on its validation scans (``None`` where not measured)."""

    label_fraction: Stat | None = None
    predicted_fraction: Stat | None = None
    uncertainty: Stat | None = None


@dataclass(frozen=True)
class Domain:
    """What a checkpoint was trained on. Spacing and field of view are x,y(,z) like ``Volume.spacing``,
    in mm, or in pixels when the training images stored no physical spacing (``physical_spacing``)."""

    modality: str | None
    dims: int
    channels: int
    physical_spacing: bool
    spacing: tuple[Span, ...]
    fov: tuple[Span, ...]
    intensity_lo: tuple[float, ...]
    intensity_hi: tuple[float, ...]
    normalization: dict[str, Any]
    expected_input: str = ""
    cases: int = 0
    validation_cases: int = 0
    classes: dict[str, ClassStats] = field(default_factory=dict)
    mean_uncertainty: Stat | None = None
    synthetic: bool = False
    #: the model's own target spacing (``ModelMeta.spacing``): scans are resampled to it, so their
    #: spacing is not compared, only their field of view
    resampled_to: tuple[float, ...] | None = None
    #: (low, mean, high) over the training images of the dark share (``dark_fraction``); None: not recorded
    dark_fraction: Stat | None = None
    #: False for a model made for single 2D images (an ultrasound frame, one cine image): a 3D scan does
    #: not fit it; True lets a 2D model segment each slice of a 3D scan (with a note)
    slice_by_slice: bool = True
    version: int = DOMAIN_VERSION

    # --- JSON --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "modality": self.modality,
            "dims": self.dims,
            "channels": self.channels,
            "physical_spacing": self.physical_spacing,
            "spacing": [_rl(s) for s in self.spacing],
            "fov": [_rl(s) for s in self.fov],
            "intensity": {
                "quantiles": list(QUANTILES),
                "lo": _rl(self.intensity_lo),
                "hi": _rl(self.intensity_hi),
            },
            "normalization": dict(self.normalization),
            "expected_input": self.expected_input,
            "cases": self.cases,
            "validation_cases": self.validation_cases,
            "classes": {
                name: {k: _rl(v) for k, v in vars(c).items() if v is not None}
                for name, c in self.classes.items()
            },
            "mean_uncertainty": _rl(self.mean_uncertainty),
            "synthetic": self.synthetic,
            "resampled_to": _rl(self.resampled_to),
            "dark_fraction": _rl(self.dark_fraction),
            "slice_by_slice": self.slice_by_slice,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "checkpoint") -> Domain:
        """Validate a stored record; anything malformed is a ``CheckpointError`` naming the field."""
        bad = f"{where}: the domain record"
        if not isinstance(d, Mapping):
            raise CheckpointError(f"{bad} is not a JSON object")
        version = d.get("version")
        if not isinstance(version, int) or version < 1:
            raise CheckpointError(f"{bad} has no valid version")
        if version > DOMAIN_VERSION:
            raise CheckpointError(
                f"{bad} is version {version}, newer than this seg_studio; update seg_studio"
            )
        try:
            dims = int(d["dims"])
            if dims not in (2, 3):
                raise ValueError(f"dims {dims} is not 2 or 3")
            intensity = d.get("intensity") or {}
            if list(intensity.get("quantiles", [])) != list(QUANTILES):
                raise ValueError("intensity quantiles are not the ones this seg_studio records")
            return cls(
                modality=None if d.get("modality") is None else str(d["modality"]),
                dims=dims,
                channels=_positive_int(d["channels"], "channels"),
                physical_spacing=bool(d["physical_spacing"]),
                spacing=_spans(d["spacing"], dims, "spacing"),
                fov=_spans(d["fov"], dims, "fov"),
                intensity_lo=_floats(intensity["lo"], len(QUANTILES), "intensity.lo"),
                intensity_hi=_floats(intensity["hi"], len(QUANTILES), "intensity.hi"),
                normalization=dict(d.get("normalization") or {}),
                expected_input=str(d.get("expected_input") or ""),
                cases=int(d.get("cases") or 0),
                validation_cases=int(d.get("validation_cases") or 0),
                classes={str(k): _class_stats(v, str(k)) for k, v in (d.get("classes") or {}).items()},
                mean_uncertainty=_stat(d.get("mean_uncertainty"), "mean_uncertainty"),
                synthetic=bool(d.get("synthetic", False)),
                resampled_to=None
                if d.get("resampled_to") is None
                else _floats(d["resampled_to"], dims, "resampled_to"),
                dark_fraction=_stat(d.get("dark_fraction"), "dark_fraction"),
                slice_by_slice=bool(d.get("slice_by_slice", True)),
                version=version,
            )
        except KeyError as exc:
            raise CheckpointError(f"{bad} lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{bad} is malformed: {exc}") from None


def _rl(v: Any) -> Any:
    """Round floats to 6 significant digits, recursively (tuples become lists)."""
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return [_rl(x) for x in v]
    return float(f"{float(v):.6g}")


def _finite(v: Any, what: str) -> float:
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{what} is not a finite number")
    return f


def _positive_int(v: Any, what: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError(f"{what} must be at least 1")
    return n


def _floats(v: Any, n: int, what: str) -> tuple[float, ...]:
    out = tuple(_finite(x, what) for x in v)
    if len(out) != n:
        raise ValueError(f"{what} has {len(out)} values, expected {n}")
    return out


def _spans(v: Any, dims: int, what: str) -> tuple[Span, ...]:
    spans = tuple(_floats(s, 2, what) for s in v)
    if len(spans) != dims:
        raise ValueError(f"{what} has {len(spans)} axes for a {dims}D domain")
    for lo, hi in spans:
        if not 0 < lo <= hi:
            raise ValueError(f"{what} range [{lo}, {hi}] is not positive and increasing")
    return spans  # type: ignore[return-value]


def _stat(v: Any, what: str) -> Stat | None:
    if v is None:
        return None
    lo, mean, hi = _floats(v, 3, what)
    if not lo <= mean <= hi or lo < 0:
        raise ValueError(f"{what} {[lo, mean, hi]} is not low <= mean <= high, non-negative")
    return lo, mean, hi


def _class_stats(v: Any, name: str) -> ClassStats:
    if not isinstance(v, Mapping):
        raise ValueError(f"class {name!r} is not a JSON object")
    return ClassStats(
        *(
            _stat(v.get(k), f"classes.{name}.{k}")
            for k in ("label_fraction", "predicted_fraction", "uncertainty")
        )
    )


# --- what a scan is ----------------------------------------------------------------------------------


def _axes(volume: Volume, dims: int) -> int:
    """How many x,y(,z) axes to compare: a 2D model sees each slice of a 3D scan (x and y only)."""
    return min(dims, volume.ndim)


def scan_extent(volume: Volume, dims: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(spacing, field of view) along x,y(,z), as far as a ``dims``-D model sees them."""
    n = _axes(volume, dims)
    size_xyz = tuple(reversed(volume.spatial_shape))
    spacing = tuple(volume.spacing[:n])
    return spacing, tuple(size_xyz[i] * spacing[i] for i in range(n))


def _subsample(array: np.ndarray, limit: int = SAMPLE_VOXELS) -> np.ndarray:
    """A strided view with at most about ``limit`` elements (statistics need no more)."""
    if array.size <= limit:
        return array
    step = int(math.ceil((array.size / limit) ** (1 / array.ndim)))
    return array[(slice(None, None, step),) * array.ndim]


def dark_fraction(volume: Volume) -> float:
    """Share of the voxels (first channel) within ``DARK_LEVEL`` of the intensity range above the minimum:
    the black outside an ultrasound sector or the air around a body, which grey pictures of other
    kinds (films, EM, MRI crops) hardly have."""
    a = np.asarray(_subsample(volume.channel_first()[0]), dtype=np.float64)
    if not a.size:
        return 0.0
    lo, hi = float(a.min()), float(a.max())
    return float(np.mean(a <= lo + DARK_LEVEL * (hi - lo)))


def intensity_quantiles(volume: Volume, normalization: Mapping[str, Any] | None) -> np.ndarray:
    """``QUANTILES`` of the scan's intensities after the model's normalisation (all channels pooled)."""
    from .transforms import normalize

    sample = _subsample(volume.channel_first()[0] if volume.channels == 1 else volume.channel_first())
    arr = np.asarray(sample)[None] if volume.channels == 1 else np.asarray(sample)
    norm = normalize(arr, normalization)
    return np.percentile(norm.ravel(), QUANTILES)


# --- building a domain --------------------------------------------------------------------------------


def _span(values: Sequence[float]) -> Span:
    return float(min(values)), float(max(values))


def _stat_of(values: Sequence[float]) -> Stat | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return min(vals), float(np.mean(vals)), max(vals)


def uncertainty_of(probabilities: Volume) -> np.ndarray:
    """Per voxel ``1 - max class probability`` (0 = certain); a single-channel map is P(foreground).
    Quantised (uint8) probabilities carry their step in ``meta["scale"]`` (``PredictOptions.probability_dtype``)."""
    p = np.asarray(probabilities.channel_first(), dtype=np.float32)
    scale = probabilities.meta.get("scale")
    if scale is not None and probabilities.array.dtype.kind == "u":
        p *= np.float32(scale)
    if p.shape[0] == 1:
        return 1.0 - np.maximum(p[0], 1.0 - p[0])
    return 1.0 - p.max(axis=0)


def class_fractions(labels: np.ndarray, values: Sequence[int]) -> dict[int, float]:
    """Fraction of voxels holding each label value in ``values``."""
    a = _subsample(np.asarray(labels)).ravel().astype(np.int64)
    a = a[a >= 0]  # IGNORE_INDEX (-1): not supervised, not counted
    counts = np.bincount(a, minlength=max(values) + 1 if values else 1)
    return {v: float(counts[v]) / max(1, a.size) if v < counts.size else 0.0 for v in values}


def result_stats(prediction: Any, classes: Sequence[Any]) -> dict[str, Any]:
    """Per class fraction and mean uncertainty (over voxels given that class), and the overall mean
    uncertainty, of one ``Prediction`` (uncertainty only when it carries probabilities)."""
    labels = np.asarray(prediction.labels.array)
    values = [int(c.value) for c in classes]
    fractions = class_fractions(labels, values)
    out: dict[str, Any] = {"fraction": {c.name: fractions[int(c.value)] for c in classes}, "uncertainty": {}}
    out["mean_uncertainty"] = None
    if getattr(prediction, "probabilities", None) is not None:
        unc = uncertainty_of(prediction.probabilities)
        out["mean_uncertainty"] = float(unc.mean())
        for c in classes:
            sel = labels == int(c.value)
            out["uncertainty"][c.name] = float(unc[sel].mean()) if sel.any() else None
    return out


def domain_from_pairs(
    train: Sequence[tuple[Volume, np.ndarray]],
    meta: Any,
    *,
    model: Any = None,
    validation: Sequence[Volume] = (),
    modality: str | None = None,
    expected_input: str = "",
    synthetic: bool = False,
    slice_by_slice: bool = True,
    device: str = "cpu",
) -> Domain:
    """The domain of a model trained on ``train`` (image, class-value label array) pairs.

    ``meta`` is the checkpoint's ``ModelMeta`` (normalisation, classes, spacing). With ``model`` and
    ``validation`` images, the model segments each validation image (the app's inference, with
    probabilities) and the per-class fractions and uncertainties it produced are recorded, so that
    ``check_result`` can tell an unusual result later. ``modality`` defaults to what the images say.
    ``slice_by_slice=False`` marks a 2D model made for single images only (a 3D scan then does not fit).
    """
    if not train:
        raise ValueError("a domain needs at least one training image")
    images = [img for img, _ in train]
    dims = images[0].ndim
    geo = [scan_extent(img, dims) for img in images]
    quants = np.array([intensity_quantiles(img, meta.normalization) for img in images])
    if modality is None:
        found = {scan_modality(img) for img in images} - {None}
        modality = found.pop() if len(found) == 1 else None
    values = [int(c.value) for c in meta.classes]
    label_fracs = [class_fractions(lab.array if isinstance(lab, Volume) else lab, values) for _, lab in train]
    preds = [_validation_stats(model, meta, img, device) for img in validation] if model is not None else []
    classes = {}
    for c in meta.classes:
        classes[c.name] = ClassStats(
            label_fraction=_stat_of([f[int(c.value)] for f in label_fracs]),
            predicted_fraction=_stat_of([p["fraction"][c.name] for p in preds]),
            uncertainty=_stat_of([p["uncertainty"].get(c.name) for p in preds]),
        )
    return Domain(
        modality=modality,
        dims=dims,
        channels=images[0].channels,
        physical_spacing=all(has_physical_spacing(img) for img in images),
        spacing=tuple(_span([g[0][i] for g in geo]) for i in range(dims)),
        fov=tuple(_span([g[1][i] for g in geo]) for i in range(dims)),
        intensity_lo=tuple(float(v) for v in quants.min(axis=0)),
        intensity_hi=tuple(float(v) for v in quants.max(axis=0)),
        normalization=dict(meta.normalization),
        expected_input=expected_input,
        cases=len(images),
        validation_cases=len(preds),
        classes=classes,
        mean_uncertainty=_stat_of([p["mean_uncertainty"] for p in preds]),
        synthetic=synthetic,
        resampled_to=None if meta.spacing is None else tuple(float(s) for s in meta.spacing),
        dark_fraction=_stat_of([dark_fraction(img) for img in images]),
        slice_by_slice=slice_by_slice,
    )


def stamp_checkpoint(
    path: Any,
    train: Sequence[tuple[Volume, np.ndarray]],
    validation: Sequence[Volume] = (),
    *,
    modality: str | None = None,
    expected_input: str = "",
    device: str = "cpu",
) -> Domain:
    """Compute the domain of the checkpoint at ``path`` from its training pairs (and what it produces
    on ``validation``) and store it in the file, keeping the weights as they are: what training calls
    once its best checkpoint is written."""
    from . import checkpoint

    model, meta = checkpoint.load(path)
    meta.domain = domain_from_pairs(
        train,
        meta,
        model=model,
        validation=validation,
        modality=modality,
        expected_input=expected_input,
        device=device,
    )
    checkpoint.replace_meta(path, meta)
    log.info("%s: domain recorded (%s)", path, "; ".join(describe(meta.domain)))
    return meta.domain


def _validation_stats(model: Any, meta: Any, image: Volume, device: str) -> dict[str, Any]:
    from .inference import PredictOptions, predict

    pred = predict(image, model, meta, PredictOptions(device=device, probabilities=True))
    return result_stats(pred, meta.classes)


def widen(domain: Domain, images: Sequence[Volume]) -> Domain:
    """``domain`` stretched to cover ``images`` too (a fine-tune on new scans extends what fits)."""
    from dataclasses import replace

    if not images:
        return domain
    n = domain.dims
    geo = [scan_extent(img, n) for img in images]
    quants = np.array([intensity_quantiles(img, domain.normalization) for img in images])

    def grow(spans: tuple[Span, ...], k: int) -> tuple[Span, ...]:
        out = []
        for i, (lo, hi) in enumerate(spans):
            vals = [g[k][i] for g in geo if i < len(g[k])]
            out.append((min([lo, *vals]), max([hi, *vals])))
        return tuple(out)

    dark = domain.dark_fraction
    if dark is not None:
        fracs = [dark_fraction(img) for img in images]
        dark = (min(dark[0], *fracs), dark[1], max(dark[2], *fracs))
    return replace(
        domain,
        dark_fraction=dark,
        spacing=grow(domain.spacing, 0),
        fov=grow(domain.fov, 1),
        intensity_lo=tuple(float(v) for v in np.minimum(domain.intensity_lo, quants.min(axis=0))),
        intensity_hi=tuple(float(v) for v in np.maximum(domain.intensity_hi, quants.max(axis=0))),
        physical_spacing=domain.physical_spacing and all(has_physical_spacing(i) for i in images),
        cases=domain.cases + len(images),
    )


# --- checks ----------------------------------------------------------------------------------------------


def _fmt(values: Sequence[float], unit: str) -> str:
    return " x ".join(f"{v:.3g}" for v in values) + f" {unit}"


def format_spans(spans: Sequence[Span], unit: str) -> str:
    parts = [f"{lo:.3g}" if math.isclose(lo, hi, rel_tol=1e-3) else f"{lo:.3g}-{hi:.3g}" for lo, hi in spans]
    return " x ".join(parts) + f" {unit}"


def _outside(values: Sequence[float], spans: Sequence[Span], tolerance: float) -> bool:
    return any(v < lo / tolerance or v > hi * tolerance for v, (lo, hi) in zip(values, spans, strict=False))


def _ordinal(q: float) -> str:
    n = int(q)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _with_expected_input(domain: Domain, warnings: list[DomainWarning]) -> list[DomainWarning]:
    """Name the expected input once, on the first warning that says the scan is of another kind."""
    if not domain.expected_input:
        return warnings
    for i, w in enumerate(warnings):
        if w.severity == "mismatch":
            text = f"{w.message}; the model expects {domain.expected_input}"
            return [*warnings[:i], DomainWarning(w.code, text, w.severity), *warnings[i + 1 :]]
    return warnings


def _shape_checks(domain: Domain, volume: Volume) -> list[DomainWarning]:
    """Channels and dimensions: what cannot run at all, and the 2D-model-on-3D-scan slice mode."""
    out = []
    if volume.channels != domain.channels:
        kind = " (colour)" if volume.channels in (3, 4) else ""
        out.append(
            DomainWarning(
                "channels",
                f"the model takes {domain.channels} channel(s) and the scan has {volume.channels}{kind}; "
                "it cannot run on this scan: pick a model made for such images",
                "refuse",
            )
        )
    if domain.dims == 3 and volume.ndim == 2:
        out.append(DomainWarning("dims", "a 3D model cannot segment a 2D image: pick a 2D model", "refuse"))
    elif domain.dims == 2 and volume.ndim == 3 and not domain.slice_by_slice:
        n = volume.spatial_shape[0]
        out.append(
            DomainWarning(
                "dims",
                f"the scan is a 3D volume of {n} slices but the model was made for single 2D images, "
                "not for the slices of a volume",
            )
        )
    elif domain.dims == 2 and volume.ndim == 3:
        n = volume.spatial_shape[0]
        out.append(
            DomainWarning(
                "dims",
                f"a 2D model on a 3D scan: it segments each of the {n} slices on its own (slice by slice), "
                "without context from the neighbouring slices",
                "note",
            )
        )
    return out


def _modality_check(domain: Domain, volume: Volume) -> list[DomainWarning]:
    found = scan_modality(volume)
    if domain.modality is None or found is None or found == domain.modality:
        return []
    return [
        DomainWarning(
            "modality",
            f"the scan is {found} but the model was trained on {domain.modality} images",
        )
    ]


def _geometry_checks(domain: Domain, volume: Volume) -> list[DomainWarning]:
    """Voxel spacing and physical field of view against the training ranges."""
    out = []
    spacing, fov = scan_extent(volume, domain.dims)
    physical = has_physical_spacing(volume)
    if domain.physical_spacing and not physical:
        out.append(
            DomainWarning(
                "no_spacing",
                f"the scan stores no pixel size; the model was trained on {format_spans(domain.spacing, 'mm')} "
                "voxels, so its size cannot be checked",
            )
        )
        return out
    unit = "mm" if domain.physical_spacing else "px"
    if not domain.physical_spacing:
        spacing, fov = (1.0,) * len(spacing), tuple(reversed(volume.spatial_shape))[: len(spacing)]
    if (
        domain.resampled_to is None
        and domain.physical_spacing
        and _outside(spacing, domain.spacing, SPACING_TOLERANCE)
    ):
        out.append(
            DomainWarning(
                "spacing",
                f"the voxels are {_fmt(spacing, 'mm')} but the model was trained on {format_spans(domain.spacing, 'mm')} "
                "and runs at the scan's own spacing",
            )
        )
    if _outside(fov, domain.fov, FOV_TOLERANCE):
        out.append(
            DomainWarning(
                "fov",
                f"the scan covers {_fmt(fov, unit)} but the model was trained on {format_spans(domain.fov, unit)}",
            )
        )
    return out


def _intensity_check(
    domain: Domain, volume: Volume, cache: dict[str, np.ndarray] | None
) -> list[DomainWarning]:
    """The scan's normalised intensity quantiles against the training range (the worst one is named)."""
    import json

    key = json.dumps(domain.normalization, sort_keys=True)
    q = None if cache is None else cache.get(key)
    if q is None:
        q = intensity_quantiles(volume, domain.normalization)
        if cache is not None:
            cache[key] = q
    lo, hi = np.asarray(domain.intensity_lo), np.asarray(domain.intensity_hi)
    margin = INTENSITY_MARGIN + 0.5 * (hi - lo)
    excess = np.maximum(lo - q, q - hi) / margin
    worst = int(np.argmax(excess))
    if excess[worst] <= 1.0:
        return []
    name = "median" if QUANTILES[worst] == 50 else f"{_ordinal(QUANTILES[worst])} percentile"
    return [
        DomainWarning(
            "intensity",
            f"the intensities are unlike the training scans: after normalisation the {name} is {q[worst]:.2f} "
            f"(training scans {lo[worst]:.2f} to {hi[worst]:.2f})",
        )
    ]


def _dark_check(domain: Domain, volume: Volume) -> list[DomainWarning]:
    """The dark share against the training images' (where the domain records it)."""
    if domain.dark_fraction is None:
        return []
    lo, _, hi = domain.dark_fraction
    frac = dark_fraction(volume)
    if lo / DARK_FACTOR <= frac <= hi * DARK_FACTOR + DARK_ABS:
        return []
    return [
        DomainWarning(
            "dark",
            f"{100 * frac:.1f} % of the scan is at its darkest level (the black outside an ultrasound sector, "
            f"the air around a body); in the training scans {100 * lo:.1f}-{100 * hi:.1f} %",
        )
    ]


def check_scan(
    domain: Domain | None, volume: Volume, cache: dict[str, np.ndarray] | None = None
) -> list[DomainWarning]:
    """Every way ``volume`` lies outside ``domain``; empty when it fits. ``None``: nothing recorded.
    ``cache`` (a dict kept by the caller for one scan) saves recomputing its intensity quantiles."""
    if domain is None:
        return [
            DomainWarning(
                "no_domain",
                "the checkpoint does not record what it was trained on, so the scan cannot be checked against it",
                "unknown",
            )
        ]
    out = _shape_checks(domain, volume)
    if any(w.severity == "refuse" for w in out):
        return out
    out += _modality_check(domain, volume)
    out += _geometry_checks(domain, volume)
    out += _intensity_check(domain, volume, cache)
    out += _dark_check(domain, volume)
    return _with_expected_input(domain, out)


def check_result(domain: Domain | None, prediction: Any) -> list[DomainWarning]:
    """Whether ``prediction`` (a ``Prediction``) looks like what the model produced on its validation
    scans: the fraction of voxels per class, and the mean uncertainty when it carries probabilities."""
    if domain is None:
        return []
    labels = np.asarray(prediction.labels.array)
    infos = prediction.labels.labels or {}
    names = {li.name: int(v) for v, li in infos.items()}
    out = []
    for name, stats in domain.classes.items():
        ref = stats.predicted_fraction or stats.label_fraction
        if ref is None or name not in names or names[name] == 0:
            continue
        frac = class_fractions(labels, [names[name]])[names[name]]
        lo, _, hi = ref
        where = "its validation scans" if stats.predicted_fraction else "its training labels"
        if frac > FRACTION_FACTOR * hi and frac - hi > FRACTION_ABS:
            out.append(
                DomainWarning(
                    "fraction",
                    f"the model marked {100 * frac:.1f} % of the voxels '{name}'; on {where} it was "
                    f"{100 * lo:.1f}-{100 * hi:.1f} %",
                )
            )
    if domain.mean_uncertainty is not None and getattr(prediction, "probabilities", None) is not None:
        unc = float(uncertainty_of(prediction.probabilities).mean())
        lo, _, hi = domain.mean_uncertainty
        if unc > UNCERTAINTY_FACTOR * hi and unc - hi > UNCERTAINTY_ABS:
            out.append(
                DomainWarning(
                    "uncertainty",
                    f"the model is unsure of this result: mean uncertainty {unc:.3f} (1 - top class probability); "
                    f"on its validation scans {lo:.3f}-{hi:.3f}",
                )
            )
    return out


# --- ranking -----------------------------------------------------------------------------------------------


@dataclass
class Ranked:
    """One candidate checkpoint scored against a scan: ``fits`` when nothing but notes was found."""

    key: Any
    meta: Any
    warnings: list[DomainWarning]
    score: int

    @property
    def fits(self) -> bool:
        return all(w.severity == "note" for w in self.warnings)


def meta_domain(meta: Any) -> Domain | None:
    d = getattr(meta, "domain", None)
    return d if isinstance(d, Domain) else None


def _shape_only(meta: Any, volume: Volume) -> list[DomainWarning]:
    """Dims and channels from the metadata alone (a checkpoint without a domain)."""
    probe = Domain(None, int(meta.spatial_dims), int(meta.in_channels), True, (), (), (), (), {})
    return _shape_checks(probe, volume)


def scan_warnings(
    meta: Any, volume: Volume, cache: dict[str, np.ndarray] | None = None
) -> list[DomainWarning]:
    """``check_scan`` for a checkpoint's metadata: without a domain, dims and channels plus one
    "not recorded" line."""
    if getattr(meta, "interactive", None) is not None:  # never picked for an automatic prediction
        return [
            DomainWarning(
                "interactive",
                "an interactive model: it segments what you click (seg-studio refine, the panel's clicks), "
                "not a whole scan on its own",
                "refuse",
            )
        ]
    domain = meta_domain(meta)
    if domain is None:
        return _shape_only(meta, volume) + check_scan(None, volume)
    return check_scan(domain, volume, cache)


def validation_dice(meta: Any) -> float:
    """The checkpoint's recorded validation Dice (model card, else training metrics); NaN if none."""
    card = getattr(meta, "card", None) or {}
    v = (card.get("validation") or {}).get("mean_dice")
    if v is None:
        v = ((getattr(meta, "provenance", None) or {}).get("metrics") or {}).get("best_val_dice")
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def benchmark_dice(meta: Any) -> dict[str, float]:
    """The card's Dice on named shared benchmarks (``validation.benchmarks``: the same held-back cases
    scored for several models, e.g. the 49 MSD hippocampus cases), name -> mean Dice."""
    card = getattr(meta, "card", None) or {}
    out = {}
    for name, b in ((card.get("validation") or {}).get("benchmarks") or {}).items():
        try:
            v = float(b["mean_dice"])
        except (TypeError, ValueError, KeyError):
            continue
        if math.isfinite(v):
            out[str(name)] = v
    return out


def comparable_dice(metas: Sequence[Any]) -> list[float]:
    """One Dice per checkpoint to order them by: on the shared benchmark most of them were scored on
    (like for like), else each card's own validation Dice (on cases that may differ)."""
    marks = [benchmark_dice(m) for m in metas]
    counts: dict[str, int] = {}
    for b in marks:
        for name in b:
            counts[name] = counts.get(name, 0) + 1
    shared = sorted((n for n, c in counts.items() if c > 1), key=lambda n: (-counts[n], n))
    if not shared:
        return [validation_dice(m) for m in metas]
    return [b[shared[0]] if shared[0] in b else validation_dice(m) for b, m in zip(marks, metas, strict=True)]


def rank_checkpoints(candidates: Sequence[tuple[Any, Any]], volume: Volume) -> list[Ranked]:
    """``(key, ModelMeta)`` candidates ordered by fit to ``volume``, best first.

    Checkpoints that fit (nothing but notes) come first, then the others by their warnings'
    severities added up. Within each group the best validation Dice comes first: on the benchmark
    they share when several were scored on the same held-back cases, so a worse model is never
    preferred for having fewer notes or a luckier validation set. The key breaks ties, so the order
    never depends on the listing order.
    """
    cache: dict[str, np.ndarray] = {}
    ranked = [Ranked(key, meta, scan_warnings(meta, volume, cache), 0) for key, meta in candidates]
    for r in ranked:
        r.score = sum(_WEIGHT.get(w.severity, 10) for w in r.warnings)
    groups: dict[int, list[Ranked]] = {}
    for r in ranked:
        groups.setdefault(0 if r.fits else r.score, []).append(r)
    dice: dict[int, float] = {}
    for members in groups.values():
        dice.update(zip(map(id, members), comparable_dice([r.meta for r in members]), strict=True))

    def order(r: Ranked) -> tuple[int, float, str]:
        d = dice[id(r)]
        return 0 if r.fits else r.score, -(d if math.isfinite(d) else -1.0), str(r.key)

    return sorted(ranked, key=order)


def describe(domain: Domain | None) -> list[str]:
    """The domain in a few short lines (``seg-studio inspect``, the panel's card, the docs table)."""
    if domain is None:
        return ["not recorded"]
    unit = "mm" if domain.physical_spacing else "px (no stored pixel size)"
    lines = [
        f"{domain.modality or 'unknown modality'}{' (synthetic)' if domain.synthetic else ''}, {domain.dims}D, "
        f"{domain.channels} channel(s), {domain.cases} training scans"
        + (
            ""
            if domain.slice_by_slice or domain.dims == 3
            else "; single 2D images only (not the slices of a volume)"
        ),
        f"field of view {format_spans(domain.fov, unit)}",
    ]
    if domain.physical_spacing:
        lines.append(f"voxels {format_spans(domain.spacing, 'mm')}")
    fg = [
        f"{name} {100 * s.predicted_fraction[0]:.1f}-{100 * s.predicted_fraction[2]:.1f} %"
        for name, s in domain.classes.items()
        if s.predicted_fraction is not None and name != "background"
    ]
    if fg:
        lines.append(f"predicted on {domain.validation_cases} validation scans: " + ", ".join(fg))
    if domain.expected_input:
        lines.append(f"expects {domain.expected_input}")
    return lines
