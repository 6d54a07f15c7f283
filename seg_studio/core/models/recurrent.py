"""Recurrent U-Nets (Alom et al. 2018): R2U-Net, the recurrent U-Net (RU-Net) and R2U-Net with attention.

A recurrent conv unit applies one shared 3x3 conv + norm + ReLU ``t + 1`` times, each time to the
block's input plus its previous output (the survey's ``Recurrent_block``: ``h = f(x)``, then ``t``
times ``h = f(x + h)``): more receptive field and depth with no extra weights. A block is a 1x1 conv
to the level's width followed by two such units; R2U-Net adds a residual connection around the two
units (``RRCNN_block``), RU-Net does not. The skeleton (up-conv decoder, optional attention gates) is
``GatedUNet`` from the Attention U-Net module, which the survey's code shares with these variants.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ModelError
from .attention_unet import BlockFactory, GatedUNet
from .blocks import ConvNormAct, conv
from .registry import register_model


class RecurrentUnit(nn.Module):
    """One shared conv applied ``t + 1`` times: ``h = f(x)``; repeat ``t`` times ``h = f(x + h)``."""

    def __init__(self, spatial_dims: int, channels: int, t: int, norm: str | None, bias: bool | None) -> None:
        super().__init__()
        self.t = t  # configuration, fixed at build time
        self.conv = ConvNormAct(spatial_dims, channels, channels, norm, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        for _ in range(self.t):
            h = self.conv(x + h)
        return h


class RecurrentBlock(nn.Module):
    """1x1 conv to ``cout``, two recurrent units, and (R2U-Net) a residual add around the units."""

    def __init__(
        self,
        spatial_dims: int,
        cin: int,
        cout: int,
        t: int,
        norm: str | None,
        bias: bool | None,
        residual: bool,
    ) -> None:
        super().__init__()
        self.residual = residual
        # Not followed by a normalisation, so this conv keeps its bias (as in the survey).
        self.conv_1x1 = conv(spatial_dims, cin, cout, kernel_size=1)
        self.units = nn.Sequential(
            RecurrentUnit(spatial_dims, cout, t, norm, bias),
            RecurrentUnit(spatial_dims, cout, t, norm, bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_1x1(x)
        y = self.units(x)
        return x + y if self.residual else y


def recurrent_block(
    spatial_dims: int, t: int, norm: str | None, bias: bool | None, residual: bool
) -> BlockFactory:
    if not isinstance(t, int) or t < 0:
        raise ModelError(f"t (recurrent steps) must be an integer >= 0, got {t!r}")
    return lambda cin, cout: RecurrentBlock(spatial_dims, cin, cout, t, norm, bias, residual)


def _variant(residual: bool, attention: bool) -> Callable[..., GatedUNet]:
    """A registry builder for one member of the family: the same U-Net, its blocks and gates chosen here."""

    def build(
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int = 16,
        depth: int = 4,
        norm: str | None = "batch",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        bias: bool | None = None,
        t: int = 2,
    ) -> GatedUNet:
        return GatedUNet(
            spatial_dims,
            in_channels,
            out_channels,
            recurrent_block(spatial_dims, t, norm, bias, residual),
            features=features,
            depth=depth,
            norm=norm,
            dropout_p=dropout,
            attention=attention,
            deep_supervision=deep_supervision,
            bias=bias,
        )

    return build


_REFERENCE = {"features": 64, "depth": 4, "norm": "batch", "bias": True, "t": 2}

register_model(
    "r2unet",
    description="R2U-Net: recurrent residual conv blocks (shared 3x3 conv unrolled t times) on every level",
    presets={"reference": dict(_REFERENCE)},
    paper="Alom et al. 2018, arXiv:1802.06955",
)(_variant(residual=True, attention=False))

register_model(
    "recurrent_unet",
    description="Recurrent U-Net (RU-Net): recurrent conv blocks without the residual connection",
    presets={"reference": dict(_REFERENCE)},
    paper="Alom et al. 2018, arXiv:1802.06955",
)(_variant(residual=False, attention=False))

register_model(
    "r2_attention_unet",
    description="R2U-Net with attention gates on the skips (R2AttU-Net); gate maps in aux['attention']",
    presets={"reference": dict(_REFERENCE)},
    paper="Alom et al. 2018, arXiv:1802.06955; Oktay et al. 2018, arXiv:1804.03999",
    attention_maps=True,
)(_variant(residual=True, attention=True))
