"""The fine-tuned child checkpoint: its classes, card and provenance, in its parent's precision.

A child is stored in the floating-point type its parent's file holds (a bundled fp16 parent of 3 MB has
a 3 MB child, not a 6.5 MB fp32 one), and its weights are rounded to that type *before* it is scored, so
the Dice it reports is the Dice of the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..models import SegModel
from .acceptance import Verdict
from .parent_fit import ParentFit

log = logging.getLogger(__name__)

_SAFETENSORS_FLOATS = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


def stored_float_dtype(path: Path) -> torch.dtype | None:
    """The floating-point type of the tensors in a ``.segmodel`` file (None if it holds none)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            dtype = _SAFETENSORS_FLOATS.get(f.get_slice(key).get_dtype())
            if dtype is not None:
                return dtype
    return None


def storage_dtype(parent: Path) -> torch.dtype | None:
    """The ``dtype`` to pass ``checkpoint.save`` for a child of ``parent`` (None: as trained, fp32)."""
    dtype = stored_float_dtype(parent)
    return None if dtype in (None, torch.float32) else dtype


@torch.no_grad()
def round_weights(model: SegModel, dtype: torch.dtype | None) -> torch.dtype | None:
    """Round floating-point weights and buffers to ``dtype`` and back, in place: what saving will keep.

    Returns the dtype the child will be stored in: ``dtype``, or None (fp32) when some value lies beyond
    ``dtype``'s range (a float16 file would hold infinities; the weights are then left as they are)."""
    if dtype is None:
        return None
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    limit = torch.finfo(dtype).max
    if any(bool((t.abs() > limit).any()) for t in tensors):
        log.warning(
            "the fine-tuned weights exceed the %s range of the parent's file; storing them in fp32", dtype
        )
        return None
    for t in tensors:
        t.copy_(t.to(dtype).to(t.dtype))
    return dtype


def child_card(meta: Any, verdict: Verdict, fit: ParentFit | None = None) -> dict[str, Any]:
    """The parent's card for its child, minus what is no longer true (a fine-tuned child is trained),
    plus ``not_better`` (the reason) when the acceptance test did not offer it, and ``start`` when the
    child was trained fresh because its parent did not fit."""
    card = {k: v for k, v in (meta.card or {}).items() if k not in ("untrained", "not_better", "start")}
    fresh = fit is not None and fit.start == "fresh"
    if (meta.card or {}).get("untrained") or fresh:
        card["title"] = f"{meta.architecture} trained by fine-tuning from random weights"
    if fresh:
        card["start"] = f"trained fresh, not from its parent: {fit.reason}"
    if not verdict.better:
        card["not_better"] = verdict.reason
    return card


def child_classes(meta: Any, names: Sequence[str], value_to_index: Mapping[int, int]) -> list[Any]:
    """The parent's classes (values and colours kept) and any new ones, in logit order."""
    from .. import checkpoint as ckpt

    n = len(names)
    old_colors = {i: c.color for i, c in enumerate(meta.classes)}
    index_to_value = {i: v for v, i in value_to_index.items()}
    return [
        ckpt.ClassInfo(
            meta.classes[i].value if i < len(meta.classes) else index_to_value.get(i, i),
            names[i],
            old_colors.get(i) or ckpt.default_classes(n)[i].color,
        )
        for i in range(n)
    ]


def child_meta(
    meta: Any,
    classes: list[Any],
    provenance: dict[str, Any],
    card: dict[str, Any],
    arch_args: Mapping[str, Any],
) -> Any:
    """The child's ModelMeta: the parent's architecture, input and normalisation, with the child's
    classes, model arguments, provenance and card (built afresh, so the current schema version)."""
    from .. import checkpoint as ckpt

    return ckpt.ModelMeta(
        architecture=meta.architecture,
        arch_args=dict(arch_args),
        spatial_dims=meta.spatial_dims,
        in_channels=meta.in_channels,
        out_channels=len(classes),
        channel_names=list(meta.channel_names),
        classes=classes,
        normalization=dict(meta.normalization),
        spacing=meta.spacing,
        patch_size=tuple(meta.patch_size),
        provenance=provenance,
        card=card,
        interactive=None if meta.interactive is None else dict(meta.interactive),
    )
