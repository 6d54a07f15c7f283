"""The one output type of every model and the padding that lets any input size go in."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

#: Names a caller may ask for in ``aux``.
AUX_ATTENTION = "attention"
AUX_DEEP_SUPERVISION = "deep_supervision"
#: Per-voxel spread of the class probabilities (the ensemble: std over its members).
AUX_UNCERTAINTY = "uncertainty"


@dataclass
class SegOutput:
    """What every model returns.

    ``logits``: ``(N, out_channels, *spatial)`` at the input's size.
    ``aux``: only what the caller asked for. ``aux["attention"]`` is a list of gate coefficient maps
    ``(N, 1, *level_spatial)`` in [0, 1], deepest level first; ``aux["deep_supervision"]`` is a list
    of extra logits at the input's size (e.g. UNet++ heads X0,1..X0,3; the final head is ``logits``);
    ``aux["uncertainty"]`` is ``[std]``, the ``(N, out_channels, *spatial)`` spread of the probabilities.
    """

    logits: torch.Tensor
    aux: dict[str, list[torch.Tensor]] = field(default_factory=dict)


class SegModel(nn.Module):
    """Base of every variant: pads the input to the size multiple it needs and crops back.

    Subclasses implement ``forward_padded(x, want)`` on an input whose spatial sizes are multiples
    of ``size_multiple``, and fill only the aux entries named in ``want``. Nothing is kept on the
    module between calls, so the model is safe to share between threads in eval mode.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, size_multiple: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_multiple = size_multiple

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, aux: Collection[str] | bool = ()) -> SegOutput:
        """Segment ``x`` of shape ``(N, in_channels, *spatial)``; ``aux=True`` asks for everything."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims + 2}D tensor (N, C, *spatial), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"model takes {self.in_channels} input channel(s), got {x.shape[1]}")
        want = frozenset(
            (AUX_ATTENTION, AUX_DEEP_SUPERVISION, AUX_UNCERTAINTY) if aux is True else (aux or ())
        )
        size = tuple(x.shape[2:])
        xp, padded = pad_to_multiple(x, self.size_multiple)
        out = self.forward_padded(xp, want)
        if padded == size:
            return out
        return SegOutput(
            logits=crop_to(out.logits, size, padded),
            aux={k: [crop_to(t, size, padded) for t in v] for k, v in out.aux.items()},
        )


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the spatial axes at the far end up to a multiple (replicate: no artificial edges)."""
    size = tuple(x.shape[2:])
    target = tuple(-(-s // multiple) * multiple for s in size)
    if target == size:
        return x, size
    pad: list[int] = []
    for s, t in zip(reversed(size), reversed(target), strict=True):
        pad += [0, t - s]
    mode = "replicate" if all(s > 1 for s in size) else "constant"
    return F.pad(x, pad, mode=mode), target


def crop_to(t: torch.Tensor, size: tuple[int, ...], padded: tuple[int, ...]) -> torch.Tensor:
    """Crop a map computed on the padded input back to the original extent, at its own scale."""
    slices = [slice(None), slice(None)]
    for s, p, have in zip(size, padded, t.shape[2:], strict=True):
        slices.append(slice(0, -(-s * have // p)))
    return t[tuple(slices)]
