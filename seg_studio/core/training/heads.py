"""Model surgery a fine-tune may need: a wider output head for new classes, a frozen encoder.

Both work on any registered variant without knowing its layers: the head grows wherever a tensor
differs only along the class axis, and the encoder is what the variant names (``encoder_modules()``)
or, failing that, the usual names of a contracting path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from ..errors import TrainingError
from ..models import SegModel, create_model

log = logging.getLogger(__name__)

_ENCODER_PREFIXES = (
    "encoder",
    "enc",
    "down",
    "inc",
    "conv0_0",
    "conv1_0",
    "conv2_0",
    "conv3_0",
    "conv4_0",
    "bottleneck",
)


def grow_head(
    model: SegModel, architecture: str, arch_args: Mapping[str, object], new_out: int
) -> tuple[SegModel, list[str]]:
    """The same network with ``new_out`` output classes; every weight is kept, the extra output rows of
    the head(s) are fresh. Works for any registered variant: tensors that differ only in the class axis
    are copied row by row. Returns the model and the names of the grown parameters."""
    grown = create_model(architecture, model.spatial_dims, model.in_channels, new_out, **dict(arch_args))
    old_sd, new_sd = model.state_dict(), grown.state_dict()
    if old_sd.keys() != new_sd.keys():
        raise TrainingError(
            f"cannot grow the output of {architecture!r}: its layers change with the class count"
        )
    changed = []
    with torch.no_grad():
        for k, new in new_sd.items():
            old = old_sd[k]
            if old.shape == new.shape:
                new.copy_(old)
                continue
            axis = _class_axis(old.shape, new.shape, model.out_channels, new_out)
            if axis is None:
                raise TrainingError(
                    f"cannot grow the output of {architecture!r}: {k} changes shape unexpectedly"
                )
            new.narrow(axis, 0, model.out_channels).copy_(old)
            if k.endswith("bias"):
                # New classes start unlikely (below background), so the first predictions do not change.
                start = float(old.narrow(0, 0, 1).item()) - 2.0
                new.narrow(axis, model.out_channels, new_out - model.out_channels).fill_(start)
            changed.append(k.rsplit(".", 1)[0])
    grown.load_state_dict(new_sd)
    names = [n for n, _ in grown.named_parameters() if n.rsplit(".", 1)[0] in changed]
    return grown, names


def _class_axis(old: torch.Size, new: torch.Size, old_out: int, new_out: int) -> int | None:
    """The one axis along which ``old`` grows from ``old_out`` to ``new_out`` (None if it is not so)."""
    if len(old) != len(new):
        return None
    diff = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    if len(diff) != 1 or (old[diff[0]], new[diff[0]]) != (old_out, new_out):
        return None
    return diff[0]


def encoder_parameter_names(model: SegModel) -> list[str]:
    """Parameters of the contracting path: a variant may say (``encoder_modules()``), else by name."""
    if hasattr(model, "encoder_modules"):
        mods = list(model.encoder_modules())  # type: ignore[operator]
        ids = {id(p) for m in mods for p in m.parameters()}
        return [n for n, p in model.named_parameters() if id(p) in ids]
    return [n for n, _ in model.named_parameters() if n.split(".")[0].startswith(_ENCODER_PREFIXES)]


def freeze_encoder(model: SegModel, architecture: str) -> list[str]:
    """Stop gradients to the encoder (a fine-tune that should only adapt the decoder); returns its names."""
    frozen = set(encoder_parameter_names(model))
    if not frozen:
        log.warning("%s does not name its encoder; training every layer", architecture)
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    return sorted(frozen)


def unfreeze(model: SegModel) -> None:
    """Every parameter trainable again (what a saved checkpoint's next fine-tune expects)."""
    for p in model.parameters():
        p.requires_grad_(True)
