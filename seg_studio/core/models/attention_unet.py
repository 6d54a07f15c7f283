"""Attention U-Net (Oktay et al. 2018), and the skeleton the recurrent variants share with it.

The survey's AttU_Net, R2U_Net and R2AttU_Net have one layout: per level a conv block, 2x2 max-pool;
up the decoder an ``up_conv`` (x2 nearest upsample + 3x3 conv + BN + ReLU), the skip optionally passed
through an additive attention gate (F_int = F_l / 2), concatenated (skip first) and a conv block; a
1x1 conv to the classes. They differ only in the conv block and in whether skips are gated, so
``GatedUNet`` takes the block as a factory and ``attention`` as a flag, and each variant is a builder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ModelError
from .base import AUX_ATTENTION, AUX_DEEP_SUPERVISION, SegModel, SegOutput
from .blocks import AttentionGate, DeepSupervisionHeads, DoubleConv, UpConv, conv, dropout, max_pool, widths
from .registry import register_model

#: ``(cin, cout) -> block``: the conv block used at every level of encoder and decoder.
BlockFactory = Callable[[int, int], nn.Module]


class GatedUNet(SegModel):
    """Encoder of ``block``s and max-pools; decoder of UpConv, optional attention gate, concat, ``block``.

    ``aux["attention"]``: one gate map per decoder level, deepest first, at that level's resolution.
    ``aux["deep_supervision"]``: with ``deep_supervision=True``, logits of every decoder level but the
    last (deepest first), resized to the input's size.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        block: BlockFactory,
        features: int = 16,
        depth: int = 4,
        norm: str | None = "batch",
        dropout_p: float = 0.0,
        attention: bool = True,
        deep_supervision: bool = False,
        bias: bool | None = None,
    ) -> None:
        check_width_depth(features, depth)
        super().__init__(spatial_dims, in_channels, out_channels, size_multiple=2**depth)
        w = widths(features, depth)
        self.encoder = nn.ModuleList(
            block(cin, cout) for cin, cout in zip([in_channels, *w[:-1]], w, strict=True)
        )
        self.pool = max_pool(spatial_dims)
        self.drop = dropout(spatial_dims, dropout_p)
        levels = list(reversed(range(depth)))  # decoder order: deepest first
        self.up = nn.ModuleList(UpConv(spatial_dims, w[i + 1], w[i], norm, bias=bias) for i in levels)
        self.gates = (
            nn.ModuleList(AttentionGate(spatial_dims, w[i], w[i], max(1, w[i] // 2), norm) for i in levels)
            if attention
            else None
        )
        self.decoder = nn.ModuleList(block(2 * w[i], w[i]) for i in levels)
        self.side_heads = (
            DeepSupervisionHeads(spatial_dims, [w[i] for i in levels[:-1]], out_channels)
            if deep_supervision
            else None
        )
        self.head = conv(spatial_dims, w[0], out_channels, kernel_size=1)

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        size = tuple(x.shape[2:])
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(self.pool(x) if i else x)
            skips.append(x)
        x = self.drop(skips.pop())
        alphas: list[torch.Tensor] = []
        sides: list[torch.Tensor] = []
        for level, (up, block) in enumerate(zip(self.up, self.decoder, strict=True)):
            skip = skips.pop()
            d = up(x)
            if self.gates is not None:
                skip, alpha = self.gates[level](d, skip)
                alphas.append(alpha)
            x = block(torch.cat([skip, d], dim=1))
            if level < len(self.decoder) - 1:
                sides.append(x)
        aux: dict[str, list[torch.Tensor]] = {}
        if AUX_ATTENTION in want and self.gates is not None:
            aux[AUX_ATTENTION] = alphas
        if AUX_DEEP_SUPERVISION in want and self.side_heads is not None:
            aux[AUX_DEEP_SUPERVISION] = self.side_heads(sides, size)
        return SegOutput(self.head(x), aux)


def check_width_depth(features: int, depth: int) -> None:
    """One clear line instead of a shape error deep inside torch."""
    if not isinstance(features, int) or features < 1:
        raise ModelError(f"features must be a positive integer, got {features!r}")
    if not isinstance(depth, int) or not 1 <= depth <= 6:
        raise ModelError(f"depth must be an integer from 1 to 6, got {depth!r}")


def double_conv_block(spatial_dims: int, norm: str | None, bias: bool | None) -> BlockFactory:
    """The survey's ``conv_block``: two (3x3 conv, norm, ReLU)."""
    return lambda cin, cout: DoubleConv(spatial_dims, cin, cout, norm, bias=bias)


@register_model(
    "attention_unet",
    description="Attention U-Net: additive attention gates filter every skip; gate maps in aux['attention']",
    presets={"reference": {"features": 64, "depth": 4, "norm": "batch", "bias": True}},
    paper="Oktay et al. 2018, arXiv:1804.03999",
    attention_maps=True,
)
def build_attention_unet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    features: int = 16,
    depth: int = 4,
    norm: str | None = "batch",
    dropout: float = 0.0,
    deep_supervision: bool = False,
    bias: bool | None = None,
) -> GatedUNet:
    """``bias=None`` drops conv biases that a normalisation makes redundant; the reference keeps them."""
    return GatedUNet(
        spatial_dims,
        in_channels,
        out_channels,
        double_conv_block(spatial_dims, norm, bias),
        features=features,
        depth=depth,
        norm=norm,
        dropout_p=dropout,
        attention=True,
        deep_supervision=deep_supervision,
        bias=bias,
    )
