"""Model registry: ``@register_model`` on a builder, ``create_model(name, ...)``, ``list_models()``.

The CLI, the GUI picker and the parametrized tests all read this registry, so adding a variant is
one new module in this package (they are imported automatically by ``seg_studio.core.models``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelError
from .base import SegModel

Builder = Callable[..., SegModel]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a variant."""

    name: str
    builder: Builder
    description: str
    dims: tuple[int, ...] = (2, 3)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    paper: str = ""
    #: False for members that are not built from a config alone (the ensemble, the discriminator).
    trainable_from_scratch: bool = True
    #: True for variants with attention gates, whose maps a prediction can show (``aux["attention"]``).
    attention_maps: bool = False


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    description: str,
    dims: tuple[int, ...] = (2, 3),
    presets: dict[str, dict[str, Any]] | None = None,
    paper: str = "",
    trainable_from_scratch: bool = True,
    attention_maps: bool = False,
) -> Callable[[Builder], Builder]:
    """Register ``builder(spatial_dims, in_channels, out_channels, **config) -> SegModel``.

    ``presets`` maps a preset name (``"reference"`` reproduces the survey's layout) to config values.
    """

    def deco(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ModelError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(
            name,
            builder,
            description,
            tuple(dims),
            dict(presets or {}),
            paper,
            trainable_from_scratch,
            attention_maps,
        )
        return builder

    return deco


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name gets an error that suggests the closest ones."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model {name!r}.{hint} Run 'seg-studio models' to list them all.") from None


def makes_attention_maps(architecture: str, arch_args: Mapping[str, Any] | None = None) -> bool:
    """Whether a model of ``architecture`` has attention gates to show (an ensemble: any member)."""
    if architecture == "ensemble":
        members = (arch_args or {}).get("members") or []
        return any(makes_attention_maps(str(m.get("architecture", "")), m.get("arch_args")) for m in members)
    try:
        return get_spec(architecture).attention_maps
    except ModelError:
        return False


def list_models(trainable_only: bool = False) -> list[str]:
    """Registered names, sorted."""
    _ensure_loaded()
    return sorted(n for n, s in _REGISTRY.items() if s.trainable_from_scratch or not trainable_only)


def create_model(
    name: str,
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 2,
    preset: str | None = None,
    guidance_channels: int = 0,
    **config: Any,
) -> SegModel:
    """Build a registered variant; ``preset`` values come first and ``config`` overrides them.

    ``guidance_channels`` more input channels make any variant interactive (``core.interactive``: the
    user's clicks, and optionally the current mask, go in after the image channels).
    """
    spec = get_spec(name)
    if spatial_dims not in spec.dims:
        raise ModelError(f"model {name!r} supports {spec.dims}D inputs, not {spatial_dims}D")
    args: dict[str, Any] = {}
    if preset is not None:
        if preset not in spec.presets:
            raise ModelError(f"model {name!r} has no preset {preset!r}; presets: {sorted(spec.presets)}")
        args.update(spec.presets[preset])
    args.update(config)
    try:
        return spec.builder(
            spatial_dims=spatial_dims,
            in_channels=in_channels + guidance_channels,
            out_channels=out_channels,
            **args,
        )
    except TypeError as exc:
        raise ModelError(f"bad configuration for {name!r}: {exc}") from None


def count_parameters(model: SegModel) -> int:
    return sum(p.numel() for p in model.parameters())


# --- bounds on configurations that come from untrusted files -------------------------------------

#: Bounds of the arguments every variant shares; any other integer argument must lie in
#: ``_INT_LIMITS``. They are far above what any preset uses (depth 5, features 64) and far below
#: what would take a machine down (depth 60 asked for 23 GB before failing).
ARG_LIMITS: dict[str, tuple[float, float]] = {
    "depth": (1, 8),
    "features": (1, 512),
    "dropout": (0.0, 1.0),
    "growth": (0.0, 16.0),
    "t": (1, 8),
    "dense_layers": (0, 64),
    "bottleneck_layers": (0, 64),
    "dense_units": (0, 64),
    "blocks": (0, 64),
    "stem_kernel": (1, 15),
    "prune_level": (0, 8),
}
_INT_LIMITS = (0, 4096)
_FLOAT_LIMITS = (-1e6, 1e6)
_MAX_STR = 64
_MAX_LIST = 64
MAX_ENSEMBLE_MEMBERS = 16
#: The largest registered reference layout (Inception U-Net 3D) has 226 M parameters.
MAX_PARAMETERS = 1_000_000_000
#: Inputs are padded to this multiple; 2**depth for most variants.
MAX_SIZE_MULTIPLE = 512


def check_config(name: str, config: Mapping[str, Any], where: str = "arch_args") -> None:
    """Refuse argument values of the wrong kind or out of bounds, before anything is built.

    Values are JSON scalars, short lists of numbers, or (``members`` of an ensemble) a short list of
    ``{"architecture", "arch_args"}`` records, checked in turn.
    """
    if not isinstance(config, Mapping):
        raise ModelError(f"{where} must be a JSON object, got {type(config).__name__}")
    for key, value in config.items():
        if not isinstance(key, str) or not key.isidentifier() or len(key) > _MAX_STR:
            raise ModelError(f"{where} has an invalid argument name {str(key)[:_MAX_STR]!r}")
        _check_value(name, key, value, where)


def _check_value(name: str, key: str, value: Any, where: str) -> None:
    label = f"{where}.{key}"
    if key == "members" and name == "ensemble":
        _check_members(value, label)
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if len(value) > _MAX_STR or not value.isprintable():
            raise ModelError(f"{label} is not a short plain name")
        return
    if isinstance(value, int | float):
        _check_number(key, value, label)
        return
    if isinstance(value, list | tuple):
        if len(value) > _MAX_LIST:
            raise ModelError(f"{label} has {len(value)} entries (at most {_MAX_LIST})")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ModelError(f"{label} must be a list of numbers")
            _check_number(key, v, label)
        return
    raise ModelError(f"{label} has an unsupported type ({type(value).__name__})")


def _check_number(key: str, value: float, label: str) -> None:
    if not math.isfinite(value):
        raise ModelError(f"{label} is not a finite number ({value})")
    lo, hi = ARG_LIMITS.get(key, _INT_LIMITS if isinstance(value, int) else _FLOAT_LIMITS)
    if not lo <= value <= hi:
        raise ModelError(f"{label} = {value} is outside the supported range {lo:g}..{hi:g}")


def _check_members(value: Any, label: str) -> None:
    if not isinstance(value, list | tuple) or not value:
        raise ModelError(f"{label} must be a non-empty list of member records")
    if len(value) > MAX_ENSEMBLE_MEMBERS:
        raise ModelError(f"{label} lists {len(value)} members (at most {MAX_ENSEMBLE_MEMBERS})")
    for i, member in enumerate(value):
        if not isinstance(member, Mapping) or not isinstance(member.get("architecture"), str):
            raise ModelError(f"{label}[{i}] must be a record with an 'architecture' name")
        arch = member["architecture"]
        get_spec(arch)
        if arch == "ensemble":
            raise ModelError("an ensemble cannot contain another ensemble")
        unknown = set(member) - {"architecture", "arch_args"}
        if unknown:
            raise ModelError(f"{label}[{i}] has unknown fields {sorted(unknown)}")
        check_config(arch, member.get("arch_args") or {}, f"{label}[{i}].arch_args")


@dataclass(frozen=True)
class ModelPlan:
    """What a configuration would build, found without allocating it (on torch's meta device)."""

    parameters: int
    nbytes: int
    size_multiple: int
    #: state-dict entry -> (shape, is floating point)
    tensors: dict[str, tuple[tuple[int, ...], bool]]


def plan_model(name: str, spatial_dims: int, in_channels: int, out_channels: int, **config: Any) -> ModelPlan:
    """Build the variant on the meta device (no memory): its parameter count, size and state shapes.

    ``config`` is bounded first (``check_config``); any error of the builder is a ``ModelError``.
    The plan is refused when it exceeds ``MAX_PARAMETERS`` or ``MAX_SIZE_MULTIPLE``.
    """
    import torch

    check_config(name, {k: v for k, v in config.items() if k != "preset"})
    try:
        with torch.device("meta"):
            model = create_model(name, spatial_dims, in_channels, out_channels, **config)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a builder rejects bad values with many exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"bad configuration for {name!r}: {first}") from None
    state = model.state_dict()
    params = sum(t.numel() for t in state.values())
    if params > MAX_PARAMETERS:
        raise ModelError(
            f"this configuration of {name!r} would have {params:,} parameters (at most {MAX_PARAMETERS:,}); "
            "its arguments are implausible"
        )
    if model.size_multiple > MAX_SIZE_MULTIPLE:
        raise ModelError(
            f"this configuration of {name!r} pads inputs to multiples of {model.size_multiple} "
            f"(at most {MAX_SIZE_MULTIPLE}); its depth is implausible"
        )
    return ModelPlan(
        parameters=int(params),
        nbytes=int(sum(t.numel() * t.element_size() for t in state.values())),
        size_multiple=int(model.size_multiple),
        tensors={k: (tuple(t.shape), t.is_floating_point()) for k, t in state.items()},
    )


def _ensure_loaded() -> None:
    # Importing the package imports every variant module, which registers it.
    from . import _load_all

    _load_all()
