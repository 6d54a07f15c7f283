"""Model registry: ``@register_model`` on a builder, ``create_model(name, ...)``, ``list_models()``.

The CLI, the GUI picker and the parametrized tests all read this registry, so adding a variant is
one new module in this package (they are imported automatically by ``seg_studio.core.models``).
"""

from __future__ import annotations

import difflib
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
    **config: Any,
) -> SegModel:
    """Build a registered variant; ``preset`` values come first and ``config`` overrides them."""
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
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args
        )
    except TypeError as exc:
        raise ModelError(f"bad configuration for {name!r}: {exc}") from None


def count_parameters(model: SegModel) -> int:
    return sum(p.numel() for p in model.parameters())


def _ensure_loaded() -> None:
    # Importing the package imports every variant module, which registers it.
    from . import _load_all

    _load_all()
