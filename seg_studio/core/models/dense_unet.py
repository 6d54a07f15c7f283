"""Dense U-Net: a U-Net whose every level is a densely connected block (the survey's ``dens_block``).

Inside a block each unit (norm -> ReLU -> 3x3 conv, DenseNet's pre-activation order) sees the block
input and the outputs of all earlier units, concatenated; the block returns the last unit's output.
Every level of the encoder and the decoder uses such a block; the centre is a plain double conv with
dropout; up-sampling is nearest-neighbour (no weights) followed by the concatenation with the skip.

The ``reference`` preset is the survey's layout (Dense-U-net, THUHoloLab): a 7x7 stem to 32 channels,
dense blocks of 64, 64, 128, 256 on the way down and back up, a 512-channel centre without
normalisation and dropout 0.5, then a 7x7 conv to 32 channels and the 1x1 head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError
from .base import SegModel, SegOutput
from .blocks import ConvNormAct, DoubleConv, conv, max_pool, norm, uses_bias
from .blocks import widths as level_widths
from .registry import register_model


class DenseUnit(nn.Sequential):
    """norm -> ReLU -> 3x3 conv: the pre-activation unit of a dense block."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, norm_kind: str | None) -> None:
        super().__init__(
            norm(norm_kind, spatial_dims, cin),
            nn.ReLU(inplace=False),  # its input is a concatenation other units reuse: no in-place
            conv(spatial_dims, cin, cout, 3, bias=uses_bias(norm_kind)),
        )


class DenseBlock(nn.Module):
    """``layers`` units; unit k convolves the concatenation of the input and units 0..k-1.

    Unit k therefore takes ``cin + k * growth`` channels; the block outputs the last unit
    (``growth`` channels), as the survey's ``dens_block`` does.
    """

    def __init__(
        self, spatial_dims: int, cin: int, growth: int, norm_kind: str | None, layers: int = 3
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ModelError(f"a dense block needs at least 1 layer, got {layers}")
        self.units = nn.ModuleList(
            DenseUnit(spatial_dims, cin + k * growth, growth, norm_kind) for k in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for unit in self.units:
            features.append(unit(torch.cat(features, dim=1) if len(features) > 1 else x))
        return features[-1]


class DenseUNet(SegModel):
    """Dense U-Net in 2D or 3D.

    ``widths``: channels per level, deepest (the centre) last; default ``features * 2**i``.
    ``stem_kernel``: kernel of the stem and of the conv before the head (7 in the survey; 3 keeps 3D
    cheap). ``center_norm``: normalisation of the plain convs (centre, pre-head); ``None`` = ``norm``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int = 16,
        depth: int = 4,
        norm: str | None = "batch",
        dropout: float = 0.0,
        dense_layers: int = 3,
        widths: Sequence[int] | None = None,
        stem_kernel: int = 3,
        center_norm: str | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, size_multiple=2**depth)
        w = list(widths) if widths is not None else level_widths(features, depth)
        if len(w) != depth + 1:
            raise ModelError(f"dense_unet widths must list depth + 1 = {depth + 1} values, got {len(w)}")
        plain = norm if center_norm is None else center_norm
        stem = max(w[0] // 2, 1)
        self.stem = conv(spatial_dims, in_channels, stem, stem_kernel, bias=False)
        self.encoder = nn.ModuleList(
            DenseBlock(spatial_dims, cin, cout, norm, dense_layers)
            for cin, cout in zip([stem, *w[: depth - 1]], w[:depth], strict=True)
        )
        self.pool = max_pool(spatial_dims)
        self.center = DoubleConv(spatial_dims, w[depth - 1], w[depth], plain)
        self.center_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoder = nn.ModuleList(
            DenseBlock(spatial_dims, w[i] + w[i + 1], w[i], norm, dense_layers)
            for i in reversed(range(depth))
        )
        self.pre_head = ConvNormAct(spatial_dims, w[0], stem, plain, kernel_size=stem_kernel)
        self.head = conv(spatial_dims, stem, out_channels, kernel_size=1)

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        x = self.stem(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.center_dropout(self.center(x))
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([skip, self.up(x)], dim=1))
        return SegOutput(self.head(self.pre_head(x)))


@register_model(
    "dense_unet",
    description="Dense U-Net: a densely connected block (3 units, each fed all earlier outputs) on every level",
    presets={
        "reference": {
            "features": 64,
            "depth": 4,
            "norm": "batch",
            "dropout": 0.5,
            "widths": [64, 64, 128, 256, 512],
            "stem_kernel": 7,
            "center_norm": "none",
        }
    },
    paper="Huang et al. 2017 (DenseNet), arXiv:1608.06993; survey's Dense-U-net (github.com/THUHoloLab/Dense-U-net)",
)
def build_dense_unet(spatial_dims: int, in_channels: int, out_channels: int, **config: object) -> DenseUNet:
    return DenseUNet(spatial_dims, in_channels, out_channels, **config)  # type: ignore[arg-type]
