"""Inception U-Net, after DIU-Net (Zhang et al. 2020, Dense-Inception U-Net).

Inception-Res block (the survey's ``inception_res_block``): a 1x1 conv ``c1`` to the block width,
then three branches on ``c1`` -- 1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3 (two 3x3 in place of a 5x5) --
the 1x1 branch's conv and every 3x3 conv followed by normalisation, the branches concatenated, merged
by a 1x1 conv and added to ``c1`` (the residual). Convs keep their biases, as in the listing.
The listing has every activation commented out; we keep a ReLU after each normalised conv and after
the residual sum, since without them the block is a linear map apart from BN.

Dense-Inception block: inception layers densely connected (layer k reads the block input and all
earlier layers' outputs; its own 1x1 ``c1`` is the bottleneck), then a 1x1 transition to the width.
DIU-Net's analysis path is Inception-Res blocks with a Dense-Inception block on its deepest level,
a deeper Dense-Inception block in the middle, and the mirror image on the synthesis path.

The survey shows the Dense-Inception and the sampling blocks only as figures, so: down-sampling is a
2x2 max-pool and up-sampling a 2x2 transposed conv (as U-Net), the dense layers grow by a quarter of
the level's width, and the ``reference`` preset takes 12 layers beside the middle and 24 in it, the
depths public DIU-Net reimplementations use, with widths 64..1024.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .base import SegModel, SegOutput
from .blocks import conv, conv_transpose, max_pool, widths
from .blocks import dropout as dropout_layer
from .blocks import norm as norm_layer
from .registry import register_model


class _ConvNorm(nn.Sequential):
    """conv (with bias, as the listing) -> norm -> ReLU."""

    def __init__(
        self, spatial_dims: int, cin: int, cout: int, kernel_size: int, norm_kind: str | None
    ) -> None:
        super().__init__(
            conv(spatial_dims, cin, cout, kernel_size, bias=True),
            norm_layer(norm_kind, spatial_dims, cout),
            nn.ReLU(inplace=True),
        )


class InceptionResBlock(nn.Module):
    """1x1 / 3x3 / double-3x3 branches on a 1x1 projection, 1x1 merge, residual to the projection."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, norm_kind: str | None = "batch") -> None:
        super().__init__()
        sd, n = spatial_dims, cout
        self.project = conv(sd, cin, n, 1, bias=True)
        self.branch1 = _ConvNorm(sd, n, n, 1, norm_kind)
        self.branch3 = nn.Sequential(conv(sd, n, n, 1, bias=True), _ConvNorm(sd, n, n, 3, norm_kind))
        self.branch5 = nn.Sequential(
            conv(sd, n, n, 1, bias=True), _ConvNorm(sd, n, n, 3, norm_kind), _ConvNorm(sd, n, n, 3, norm_kind)
        )
        self.merge = conv(sd, 3 * n, n, 1, bias=True)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.project(x)
        branches = torch.cat([self.branch1(c1), self.branch3(c1), self.branch5(c1)], dim=1)
        return self.act(self.merge(branches) + c1)


class DenseInceptionBlock(nn.Module):
    """``layers`` Inception-Res layers of ``growth`` channels, densely connected, then a 1x1 transition.

    Layer k takes ``cin + k * growth`` channels; the transition sees all of them
    (``cin + layers * growth``) and maps to ``cout``.
    """

    def __init__(
        self, spatial_dims: int, cin: int, cout: int, layers: int, growth: int, norm_kind: str | None
    ) -> None:
        super().__init__()
        if layers < 1 or growth < 1:
            raise ModelError(
                f"a Dense-Inception block needs layers >= 1 and growth >= 1, got {layers}, {growth}"
            )
        self.layers = nn.ModuleList(
            InceptionResBlock(spatial_dims, cin + k * growth, growth, norm_kind) for k in range(layers)
        )
        self.transition = _ConvNorm(spatial_dims, cin + layers * growth, cout, 1, norm_kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1) if len(features) > 1 else x))
        return self.transition(torch.cat(features, dim=1))


class InceptionUNet(SegModel):
    """DIU-Net in 2D or 3D.

    ``dense_layers``: inception layers of the Dense-Inception blocks on the deepest level of each path;
    ``bottleneck_layers``: those of the middle block (DIU-Net's is the deepest); ``growth``: channels each
    dense layer adds, as a fraction of the level's width.
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
        dense_layers: int = 2,
        bottleneck_layers: int = 4,
        growth: float = 0.25,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, size_multiple=2**depth)
        if depth < 1:
            raise ModelError(f"inception_unet needs depth >= 1, got {depth}")
        w = widths(features, depth)
        sd = spatial_dims

        def block(cin: int, cout: int, level: int) -> nn.Module:
            if level == depth:
                layers = bottleneck_layers
            elif level == depth - 1:
                layers = dense_layers
            else:
                return InceptionResBlock(sd, cin, cout, norm)
            return DenseInceptionBlock(sd, cin, cout, layers, max(1, round(growth * cout)), norm)

        self.encoder = nn.ModuleList(
            block(cin, cout, i)
            for i, (cin, cout) in enumerate(zip([in_channels, *w[:-2]], w[:-1], strict=True))
        )
        self.pool = max_pool(sd)
        self.bottleneck = block(w[-2], w[-1], depth)
        self.bottleneck_dropout = dropout_layer(sd, dropout)
        self.up = nn.ModuleList(conv_transpose(sd, w[i + 1], w[i]) for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(block(2 * w[i], w[i], i) for i in reversed(range(depth)))
        self.head = conv(sd, w[0], out_channels, kernel_size=1)

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        skips = []
        for blk in self.encoder:
            x = blk(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck_dropout(self.bottleneck(x))
        for up, blk, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
            x = blk(torch.cat([skip, up(x)], dim=1))
        return SegOutput(self.head(x))


@register_model(
    "inception_unet",
    description="DIU-Net: Inception-Res blocks (1x1/3x3/double-3x3, 1x1 merge, residual), Dense-Inception middle",
    presets={
        "reference": {
            "features": 64,
            "depth": 4,
            "norm": "batch",
            "dense_layers": 12,
            "bottleneck_layers": 24,
            "growth": 0.25,
        }
    },
    paper="Zhang et al. 2020, DENSE-INception U-net for medical image segmentation, doi:10.1016/j.cmpb.2020.105395",
)
def build_inception_unet(
    spatial_dims: int, in_channels: int, out_channels: int, **config: object
) -> InceptionUNet:
    return InceptionUNet(spatial_dims, in_channels, out_channels, **config)  # type: ignore[arg-type]
