"""BCDU-Net (Azad et al. 2019): bidirectional ConvLSTM on the skips, densely connected bottleneck.

At each decoder level the encoder skip and the up-sampled decoder feature are read as a two-step
sequence ``[skip, up]`` by a convolutional LSTM; its final hidden state (forward and backward
passes concatenated) replaces U-Net's plain concatenation, so the decoder learns how much of each
to keep. The bottleneck is a chain of double convs where unit k sees all earlier units' outputs
(D1, D2, D3 = conv(D2 ++ D1) in the survey's ``BCDU_net_D3``).

The ``reference`` preset is the survey's listing: widths 64/128/256 with a 512 bottleneck of three
dense units and dropout 0.5, no normalisation except BN after each 2x2 transposed conv, a ConvLSTM
with half the level's width read backwards only (Keras ``go_backwards=True``, as in the listing),
then a 3x3 conv to 2 channels before the 1x1 head. ``reference_bidirectional`` is the same with both
directions, as the paper's title says.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .base import SegModel, SegOutput
from .blocks import ConvNormAct, DoubleConv, conv, conv_transpose, max_pool, widths
from .blocks import dropout as dropout_layer
from .blocks import norm as norm_layer
from .registry import register_model


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step in 2D or 3D (Shi et al. 2015), gates i, f, g, o from two 'same' convs.

    The input conv has the bias and the hidden-state conv has none (as Keras' ConvLSTM2D), which
    lets the first step skip the hidden conv: with a zero state it would add nothing.
    """

    def __init__(self, spatial_dims: int, cin: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_conv = conv(spatial_dims, cin, 4 * hidden, kernel_size, bias=True)
        self.hidden_conv = conv(spatial_dims, hidden, 4 * hidden, kernel_size, bias=False)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: returns the new ``(h, c)``; ``state=None`` is the zero state."""
        gates = self.input_conv(x)
        if state is not None:
            gates = gates + self.hidden_conv(state[0])
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(i) * torch.tanh(g)
        if state is not None:
            c = c + torch.sigmoid(f) * state[1]
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTM(nn.Module):
    """Reads a sequence of feature maps and returns the final hidden state.

    ``bidirectional``: a forward and a backward cell, outputs concatenated (``2 * hidden``
    channels); otherwise one cell reading the sequence backwards, as the survey's listing does.
    """

    def __init__(
        self, spatial_dims: int, cin: int, hidden: int, bidirectional: bool = True, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.backward_cell = ConvLSTMCell(spatial_dims, cin, hidden, kernel_size)
        self.forward_cell = ConvLSTMCell(spatial_dims, cin, hidden, kernel_size) if bidirectional else None
        self.out_channels = hidden * (2 if bidirectional else 1)

    @staticmethod
    def _run(cell: ConvLSTMCell, steps: list[torch.Tensor]) -> torch.Tensor:
        state = None
        for x in steps:
            state = cell(x, state)
        assert state is not None
        return state[0]

    def forward(self, steps: list[torch.Tensor]) -> torch.Tensor:
        if not steps:
            raise ValueError("ConvLSTM needs at least one step")
        h_bwd = self._run(self.backward_cell, steps[::-1])
        if self.forward_cell is None:
            return h_bwd
        return torch.cat([self._run(self.forward_cell, steps), h_bwd], dim=1)


class DenseBottleneck(nn.Module):
    """``units`` double convs; unit k takes the concatenation of units k-1..0 (newest first)."""

    def __init__(
        self, spatial_dims: int, cin: int, cout: int, norm_kind: str | None, units: int, dropout_p: float
    ) -> None:
        super().__init__()
        if units < 1:
            raise ModelError(f"BCDU-Net needs at least 1 dense unit, got {units}")
        self.units = nn.ModuleList(
            DoubleConv(spatial_dims, cin if k == 0 else k * cout, cout, norm_kind) for k in range(units)
        )
        self.drop = dropout_layer(spatial_dims, dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        for k, unit in enumerate(self.units):
            inp = x if k == 0 else torch.cat(outs[::-1], dim=1)
            outs.append(self.drop(unit(inp)))
        return outs[-1]


class BCDUNet(SegModel):
    """BCDU-Net in 2D or 3D (the ConvLSTM cell takes ``spatial_dims`` like every block).

    ``dense_units``: units in the bottleneck (the survey's D3 = 3); ``bidirectional``: both ConvLSTM
    directions; ``up_norm``: normalisation after each transposed conv (``None`` = ``norm``);
    ``head_channels``: an extra 3x3 conv before the head (the survey's 2-channel conv; 0 = none).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int = 16,
        depth: int = 3,
        norm: str | None = "batch",
        dropout: float = 0.0,
        dense_units: int = 3,
        bidirectional: bool = True,
        up_norm: str | None = None,
        head_channels: int = 0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, size_multiple=2**depth)
        w = widths(features, depth)
        if w[0] < 2:
            raise ModelError(f"BCDU-Net needs features >= 2 (the ConvLSTM has half of them), got {features}")
        up_kind = norm if up_norm is None else up_norm
        self.encoder = nn.ModuleList(
            DoubleConv(spatial_dims, cin, cout, norm)
            for cin, cout in zip([in_channels, *w[: depth - 1]], w[:depth], strict=True)
        )
        self.pool = max_pool(spatial_dims)
        self.skip_dropout = dropout_layer(spatial_dims, dropout)  # the survey's drop3 on the deepest skip
        self.bottleneck = DenseBottleneck(spatial_dims, w[depth - 1], w[depth], norm, dense_units, dropout)
        self.up = nn.ModuleList(
            nn.Sequential(
                conv_transpose(spatial_dims, w[i + 1], w[i]),
                norm_layer(up_kind, spatial_dims, w[i]),
                nn.ReLU(inplace=True),
            )
            for i in reversed(range(depth))
        )
        self.lstm = nn.ModuleList(
            ConvLSTM(spatial_dims, w[i], w[i] // 2, bidirectional) for i in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(
            DoubleConv(spatial_dims, lstm.out_channels, w[i], norm)
            for i, lstm in zip(reversed(range(depth)), self.lstm, strict=True)
        )
        last = w[0]
        self.pre_head: nn.Module = nn.Identity()
        if head_channels > 0:
            self.pre_head = ConvNormAct(spatial_dims, w[0], head_channels, norm)
            last = head_channels
        self.head = conv(spatial_dims, last, out_channels, kernel_size=1)

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        skips[-1] = self.skip_dropout(skips[-1])
        x = self.bottleneck(x)
        for up, lstm, block, skip in zip(self.up, self.lstm, self.decoder, reversed(skips), strict=True):
            x = block(lstm([skip, up(x)]))
        return SegOutput(self.head(self.pre_head(x)))


_REFERENCE = {
    "features": 64,
    "depth": 3,
    "norm": "none",
    "dropout": 0.5,
    "dense_units": 3,
    "up_norm": "batch",
    "head_channels": 2,
}


@register_model(
    "bcdu_net",
    description="BCDU-Net: bidirectional ConvLSTM merges skip and up-sampled features; dense bottleneck",
    presets={
        "reference": {**_REFERENCE, "bidirectional": False},
        "reference_bidirectional": {**_REFERENCE, "bidirectional": True},
    },
    paper="Azad et al. 2019, Bi-Directional ConvLSTM U-Net with Densely Connected Convolutions, arXiv:1909.00166",
)
def build_bcdu_net(spatial_dims: int, in_channels: int, out_channels: int, **config: object) -> BCDUNet:
    return BCDUNet(spatial_dims, in_channels, out_channels, **config)  # type: ignore[arg-type]
