"""U-Net (Ronneberger et al. 2015) and, with ``spatial_dims=3``, the 3D U-Net (Çiçek et al. 2016).

Encoder: per level two 3x3 convs + ReLU, then 2x2 max-pool; decoder: 2x2 transposed conv, concat
with the skip, two 3x3 convs; a 1x1 conv to the classes. The survey's ``reference`` preset is the
paper's layout (64..1024, no normalisation, 'same' padding so output size = input size).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SegModel, SegOutput
from .blocks import DoubleConv, conv, conv_transpose, max_pool, widths
from .registry import register_model


class UNet(SegModel):
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int = 16,
        depth: int = 4,
        norm: str | None = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, size_multiple=2**depth)
        w = widths(features, depth)
        self.encoder = nn.ModuleList(
            DoubleConv(spatial_dims, cin, cout, norm)
            for cin, cout in zip([in_channels, *w[:-2]], w[:-1], strict=True)
        )
        self.pool = max_pool(spatial_dims)
        self.bottleneck = DoubleConv(spatial_dims, w[-2], w[-1], norm, dropout_p=dropout)
        self.up = nn.ModuleList(conv_transpose(spatial_dims, w[i + 1], w[i]) for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(
            DoubleConv(spatial_dims, 2 * w[i], w[i], norm) for i in reversed(range(depth))
        )
        self.head = conv(spatial_dims, w[0], out_channels, kernel_size=1)

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([skip, up(x)], dim=1))
        return SegOutput(self.head(x))


@register_model(
    "unet",
    description="U-Net (2D) / 3D U-Net: double 3x3 conv per level, max-pool, transposed-conv up, skip concat",
    presets={"reference": {"features": 64, "depth": 4, "norm": "none"}},
    paper="Ronneberger et al. 2015, arXiv:1505.04597; Cicek et al. 2016, arXiv:1606.06650",
)
def build_unet(spatial_dims: int, in_channels: int, out_channels: int, **config: object) -> UNet:
    return UNet(spatial_dims, in_channels, out_channels, **config)  # type: ignore[arg-type]
