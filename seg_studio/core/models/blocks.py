"""Building blocks that take ``spatial_dims``, so one variant module serves 2D and 3D.

Factories pick Conv2d/Conv3d, BatchNorm2d/3d, MaxPool2d/3d and so on; the blocks here are the ones
several variants share (the survey's double conv, its up-conv, the attention gate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


def conv(
    spatial_dims: int, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, bias: bool = True
) -> nn.Module:
    """A 'same' convolution for odd kernels."""
    return _CONV[spatial_dims](cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


def conv_transpose(spatial_dims: int, cin: int, cout: int, factor: int = 2) -> nn.Module:
    return _CONV_T[spatial_dims](cin, cout, kernel_size=factor, stride=factor)


def max_pool(spatial_dims: int, factor: int = 2) -> nn.Module:
    return _POOL[spatial_dims](kernel_size=factor, stride=factor)


def avg_pool(spatial_dims: int, factor: int = 2) -> nn.Module:
    return _AVGPOOL[spatial_dims](kernel_size=factor, stride=factor)


def dropout(spatial_dims: int, p: float) -> nn.Module:
    return _DROPOUT[spatial_dims](p) if p > 0 else nn.Identity()


def norm(kind: str | None, spatial_dims: int, channels: int) -> nn.Module:
    """``batch``, ``instance``, ``group`` (8 groups or fewer) or ``none``."""
    if kind in (None, "none"):
        return nn.Identity()
    if kind == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)
    if kind == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims](channels, affine=True)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown normalisation {kind!r}: use batch, instance, group or none")


def uses_bias(norm_kind: str | None) -> bool:
    """A conv followed by a normalisation with its own shift does not need a bias."""
    return norm_kind in (None, "none")


class ConvNormAct(nn.Sequential):
    """conv -> norm -> ReLU."""

    def __init__(
        self,
        spatial_dims: int,
        cin: int,
        cout: int,
        norm_kind: str | None = "batch",
        kernel_size: int = 3,
        bias: bool | None = None,
    ) -> None:
        super().__init__(
            conv(spatial_dims, cin, cout, kernel_size, bias=uses_bias(norm_kind) if bias is None else bias),
            norm(norm_kind, spatial_dims, cout),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two (3x3 conv, norm, ReLU): the survey's basic U-Net step (norm ``none`` is the 2015 paper)."""

    def __init__(
        self,
        spatial_dims: int,
        cin: int,
        cout: int,
        norm_kind: str | None = "batch",
        dropout_p: float = 0.0,
        bias: bool | None = None,
    ) -> None:
        super().__init__(
            ConvNormAct(spatial_dims, cin, cout, norm_kind, bias=bias),
            dropout(spatial_dims, dropout_p),
            ConvNormAct(spatial_dims, cout, cout, norm_kind, bias=bias),
        )


class UpConv(nn.Sequential):
    """x2 nearest upsample + 3x3 conv + norm + ReLU (the survey's ``up_conv``)."""

    def __init__(
        self,
        spatial_dims: int,
        cin: int,
        cout: int,
        norm_kind: str | None = "batch",
        bias: bool | None = None,
    ) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            ConvNormAct(spatial_dims, cin, cout, norm_kind, bias=bias),
        )


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al.): ``x * sigmoid(psi(relu(W_g g + W_x x)))``.

    ``g`` (the gating signal from the decoder) and ``x`` (the skip) have the same spatial size here,
    as in the survey's layout. Returns the gated skip and the coefficient map in [0, 1].
    """

    def __init__(
        self, spatial_dims: int, f_g: int, f_l: int, f_int: int, norm_kind: str | None = "batch"
    ) -> None:
        super().__init__()
        bias = True  # the survey's gate keeps conv biases even beside BN
        self.w_g = nn.Sequential(
            conv(spatial_dims, f_g, f_int, 1, bias=bias), norm(norm_kind, spatial_dims, f_int)
        )
        self.w_x = nn.Sequential(
            conv(spatial_dims, f_l, f_int, 1, bias=bias), norm(norm_kind, spatial_dims, f_int)
        )
        self.psi = nn.Sequential(
            conv(spatial_dims, f_int, 1, 1, bias=bias), norm(norm_kind, spatial_dims, 1), nn.Sigmoid()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.psi(self.relu(self.w_g(g) + self.w_x(x)))
        return x * alpha, alpha


def resize_to(t: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """(Bi/tri)linear resize of a logit map to ``size``: a coarse head's logits, at the input's size."""
    if tuple(t.shape[2:]) == tuple(size):
        return t
    mode = "bilinear" if t.ndim == 4 else "trilinear"
    return F.interpolate(t, size=size, mode=mode, align_corners=False)


class DeepSupervisionHeads(nn.Module):
    """1x1 conv heads on intermediate decoder outputs, returned as logits at the input's size.

    Built only when a model is configured with ``deep_supervision=True`` (so the parameter count of a
    plain model is unchanged), computed only when a caller asks for ``aux["deep_supervision"]``.
    """

    def __init__(self, spatial_dims: int, in_widths: list[int], out_channels: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(conv(spatial_dims, w, out_channels, kernel_size=1) for w in in_widths)

    def forward(self, features: list[torch.Tensor], size: tuple[int, ...]) -> list[torch.Tensor]:
        return [resize_to(head(f), size) for head, f in zip(self.heads, features, strict=True)]


def widths(base: int, depth: int) -> list[int]:
    """Channel widths per level: base, 2*base, ... (depth+1 levels including the bottleneck)."""
    return [base * 2**i for i in range(depth + 1)]
