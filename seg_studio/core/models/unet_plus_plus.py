"""UNet++ (Zhou et al. 2018): nested, densely connected skip paths and prunable deep supervision.

Node X(i,j) sits at level i (resolution 1/2^i) and column j. The encoder is X(i,0); every other node
X(i,j) convolves the concatenation of X(i,0..j-1) with the up-sampled X(i+1,j-1), so the semantic gap
between encoder and decoder features is bridged step by step. A 1x1 head on X(0,j) gives a full
U-Net of depth j; with those heads (deep supervision) the network can be pruned at inference to a
shallower level L, computing only the nodes with i + j <= L.

The ``reference`` preset is the survey's NestedUNet: widths 64..1024, conv (with bias) + BN + ReLU
twice per node, bilinear (3D: trilinear) up-sampling with aligned corners, one head on X(0,4):
36,629,633 parameters for 3 input channels and 1 output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .base import AUX_DEEP_SUPERVISION, SegModel, SegOutput
from .blocks import DoubleConv, conv, max_pool, widths
from .registry import register_model

_COMBINE = ("final", "mean")


class UNetPlusPlus(SegModel):
    """UNet++ in 2D or 3D.

    ``deep_supervision``: a 1x1 head on every X(0,j) (needed to prune and to train the heads);
    ``combine``: ``"final"`` returns the deepest head as ``logits``, ``"mean"`` the mean of all heads;
    ``prune_level``: run only up to X(0,L) (see :meth:`prune`).
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
        deep_supervision: bool = True,
        combine: str = "final",
        prune_level: int | None = None,
        conv_bias: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, size_multiple=2**depth)
        if depth < 1:
            raise ModelError(f"UNet++ needs depth >= 1, got {depth}")
        if combine not in _COMBINE:
            raise ModelError(f"UNet++ combine must be one of {_COMBINE}, got {combine!r}")
        if combine == "mean" and not deep_supervision:
            raise ModelError(
                "UNet++ combine='mean' averages the deep-supervision heads: set deep_supervision"
            )
        self.depth = depth
        self.deep_supervision = deep_supervision
        self.combine = combine
        w = widths(features, depth)
        self._upsample_mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.pool = max_pool(spatial_dims)
        # nodes[i][j] is X(i,j); ModuleDict keys keep the state dict readable ("x1_2").
        self.nodes = nn.ModuleDict()
        for i in range(depth + 1):
            cin = in_channels if i == 0 else w[i - 1]
            p = dropout if i == depth else 0.0
            self.nodes[f"x{i}_0"] = DoubleConv(spatial_dims, cin, w[i], norm, dropout_p=p, bias=conv_bias)
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                cin = j * w[i] + w[i + 1]
                self.nodes[f"x{i}_{j}"] = DoubleConv(spatial_dims, cin, w[i], norm, bias=conv_bias)
        head_levels = range(1, depth + 1) if deep_supervision else [depth]
        self.heads = nn.ModuleDict({str(j): conv(spatial_dims, w[0], out_channels, 1) for j in head_levels})
        self.inference_level: int = depth
        self.prune(prune_level)

    def prune(self, level: int | None) -> UNetPlusPlus:
        """Run only up to X(0,level) from now on (``None``: the full depth); returns ``self``.

        The pruned output equals the deep-supervision head of that level, at a fraction of the cost
        (level 1 of a depth-4 net computes 3 of its 15 nodes). Needs ``deep_supervision``.
        """
        level = self.depth if level is None else int(level)
        if not 1 <= level <= self.depth:
            raise ModelError(f"UNet++ prune level must be 1..{self.depth}, got {level}")
        if str(level) not in self.heads:
            raise ModelError(
                f"this UNet++ has no head at level {level} (built without deep_supervision); "
                f"only level {self.depth} can run"
            )
        self.inference_level = level
        return self

    def _up(self, t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=2.0, mode=self._upsample_mode, align_corners=True)

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        level = self.inference_level
        cols: list[list[torch.Tensor]] = [[] for _ in range(level + 1)]  # cols[i] = [X(i,0), X(i,1), ...]
        cols[0].append(self.nodes["x0_0"](x))
        heads: list[torch.Tensor] = []
        # Walk the anti-diagonals i + j = k: each adds one encoder level and one more full U-Net.
        for k in range(1, level + 1):
            cols[k].append(self.nodes[f"x{k}_0"](self.pool(cols[k - 1][0])))
            for j in range(1, k + 1):
                i = k - j
                inputs = [*cols[i], self._up(cols[i + 1][j - 1])]
                cols[i].append(self.nodes[f"x{i}_{j}"](torch.cat(inputs, dim=1)))
            if str(k) in self.heads and (
                k == level or self.combine == "mean" or AUX_DEEP_SUPERVISION in want
            ):
                heads.append(self.heads[str(k)](cols[0][k]))
        logits = torch.stack(heads).mean(0) if self.combine == "mean" else heads[-1]
        aux = {AUX_DEEP_SUPERVISION: heads[:-1]} if AUX_DEEP_SUPERVISION in want else {}
        return SegOutput(logits, aux)


@register_model(
    "unet_plus_plus",
    description="UNet++: nested dense skip paths, deep-supervision heads on X0,1..X0,4, prunable at inference",
    presets={
        "reference": {
            "features": 64,
            "depth": 4,
            "norm": "batch",
            "conv_bias": True,
            "deep_supervision": False,
        },
        "reference_deep_supervision": {
            "features": 64,
            "depth": 4,
            "norm": "batch",
            "conv_bias": True,
            "deep_supervision": True,
        },
    },
    paper="Zhou et al. 2018, UNet++: A Nested U-Net Architecture, arXiv:1807.10165",
)
def build_unet_plus_plus(
    spatial_dims: int, in_channels: int, out_channels: int, **config: object
) -> UNetPlusPlus:
    return UNetPlusPlus(spatial_dims, in_channels, out_channels, **config)  # type: ignore[arg-type]
