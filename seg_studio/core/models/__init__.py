"""The U-Net family: every variant is one module here, registered by name on import."""

from __future__ import annotations

import importlib
import pkgutil

from .base import AUX_ATTENTION, AUX_DEEP_SUPERVISION, AUX_UNCERTAINTY, SegModel, SegOutput
from .registry import (
    ModelPlan,
    ModelSpec,
    check_config,
    count_parameters,
    create_model,
    get_spec,
    list_models,
    makes_attention_maps,
    plan_model,
    register_model,
)

_INFRA = {"base", "registry", "blocks"}
_loaded = False


def _load_all() -> None:
    """Import every variant module once, so its ``@register_model`` runs."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _INFRA and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = [
    "AUX_ATTENTION",
    "AUX_DEEP_SUPERVISION",
    "AUX_UNCERTAINTY",
    "ModelPlan",
    "ModelSpec",
    "SegModel",
    "SegOutput",
    "check_config",
    "count_parameters",
    "create_model",
    "get_spec",
    "makes_attention_maps",
    "list_models",
    "plan_model",
    "register_model",
]
