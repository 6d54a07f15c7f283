"""Residual U-Net: a ResNet-18/34 encoder (He et al. 2016) under a U-Net decoder.

The encoder is torchvision's ResNet-18/34 layout, written once for 2D and 3D with torchvision's
parameter names: stem (7x7 conv stride 2, norm, ReLU, 3x3 max-pool stride 2) and four stages of basic
blocks (two 3x3 convs, residual add, 1x1 projection where the shape changes). With ``features=64``,
``norm="batch"`` in 2D it *is* torchvision's ``resnet18``/``resnet34`` (a test loads torchvision's state
dict into it and compares outputs), so a local ImageNet weights file can initialise it: nothing is
downloaded. In 3D the same blocks are 3D, and 2D weights are inflated (each 2D kernel repeated along
depth and divided by its length). The decoder upsamples with transposed convs, concatenates the
encoder output of the same stride (stages, stem, and a small full-resolution conv so thin structures
such as vessels keep their edges) and applies a double conv, as the survey's Res U-Net does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from .base import AUX_DEEP_SUPERVISION, SegModel, SegOutput
from .blocks import DeepSupervisionHeads, DoubleConv, conv, conv_transpose, norm, uses_bias
from .blocks import dropout as dropout_layer
from .registry import register_model

log = logging.getLogger(__name__)

#: Basic blocks per stage, as in torchvision.
ENCODERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` for 2D or 3D, same attribute names (``conv1``, ``bn1``, ...)."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, stride: int, norm_kind: str) -> None:
        super().__init__()
        bias = uses_bias(norm_kind)  # False with a normalisation, as torchvision
        self.conv1 = conv(spatial_dims, cin, cout, 3, stride=stride, bias=bias)
        self.bn1 = norm(norm_kind, spatial_dims, cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(spatial_dims, cout, cout, 3, bias=bias)
        self.bn2 = norm(norm_kind, spatial_dims, cout)
        self.downsample = (
            nn.Sequential(
                conv(spatial_dims, cin, cout, 1, stride=stride, bias=bias),
                norm(norm_kind, spatial_dims, cout),
            )
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """Stem + ``depth`` stages of basic blocks; returns the stem output and every stage's output."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: int,
        blocks: tuple[int, ...],
        depth: int,
        norm_kind: str,
    ) -> None:
        super().__init__()
        self.conv1 = conv(spatial_dims, in_channels, features, 7, stride=2, bias=uses_bias(norm_kind))
        self.bn1 = norm(norm_kind, spatial_dims, features)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = _POOL[spatial_dims](kernel_size=3, stride=2, padding=1)
        cin = features
        for i in range(depth):
            cout = features * 2**i
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(spatial_dims, cin, cout, stride, norm_kind)]
            stage += [BasicBlock(spatial_dims, cout, cout, 1, norm_kind) for _ in range(blocks[i] - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            cin = cout
        self.depth = depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        outs = [x]
        x = self.maxpool(x)
        for i in range(self.depth):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


class ResUNet(SegModel):
    """ResNet encoder, U-Net decoder; ``size_multiple`` is ``2 ** (depth + 1)`` (stem and max-pool)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int = 16,
        depth: int = 4,
        norm: str | None = "batch",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        encoder: str = "resnet18",
        encoder_weights: str | Path | None = None,
    ) -> None:
        if encoder not in ENCODERS:
            raise ModelError(f"unknown encoder {encoder!r}: use one of {', '.join(ENCODERS)}")
        if not isinstance(features, int) or features < 1:
            raise ModelError(f"features must be a positive integer, got {features!r}")
        if not isinstance(depth, int) or not 1 <= depth <= 4:
            raise ModelError(f"depth of a ResNet encoder is the number of its stages, 1 to 4; got {depth!r}")
        super().__init__(spatial_dims, in_channels, out_channels, size_multiple=2 ** (depth + 1))
        norm_kind = norm or "none"
        self.encoder = ResNetEncoder(spatial_dims, in_channels, features, ENCODERS[encoder], depth, norm_kind)
        self.drop = dropout_layer(spatial_dims, dropout)
        stage_w = [features * 2**i for i in range(depth)]
        fine = max(1, features // 2)
        # Skip widths from deep to shallow: stages depth-1..1 (strides 2**(i+2)), stem (stride 2), full res.
        skip_w = [*reversed(stage_w[:-1]), features, fine]
        self.full_res = DoubleConv(spatial_dims, in_channels, fine, norm_kind)
        cin = stage_w[-1]
        ups, decs = [], []
        for w in skip_w:
            ups.append(conv_transpose(spatial_dims, cin, w))
            decs.append(DoubleConv(spatial_dims, 2 * w, w, norm_kind))
            cin = w
        self.up = nn.ModuleList(ups)
        self.decoder = nn.ModuleList(decs)
        self.side_heads = (
            DeepSupervisionHeads(spatial_dims, skip_w[:-1], out_channels) if deep_supervision else None
        )
        self.head = conv(spatial_dims, fine, out_channels, kernel_size=1)
        if encoder_weights is not None:
            self.load_encoder_weights(encoder_weights)

    def load_encoder_weights(self, path: str | Path) -> None:
        """Initialise the encoder from a local torchvision ResNet state dict (see ``load_resnet_weights``)."""
        load_resnet_weights(self.encoder, path)

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        size = tuple(x.shape[2:])
        skips = [self.full_res(x), *self.encoder(x)]
        x = self.drop(skips.pop())
        sides = []
        for up, block in zip(self.up, self.decoder, strict=True):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
            sides.append(x)
        sides.pop()
        aux: dict[str, list[torch.Tensor]] = {}
        if AUX_DEEP_SUPERVISION in want and self.side_heads is not None:
            aux[AUX_DEEP_SUPERVISION] = self.side_heads(sides, size)
        return SegOutput(self.head(x), aux)


def load_resnet_weights(encoder: ResNetEncoder, path: str | Path) -> None:
    """Initialise ``encoder`` from a local torchvision ResNet state dict (``torch.save`` of it).

    Read with ``weights_only=True`` (never unpickles objects). ``fc.*`` is ignored; running statistics
    are skipped when the encoder uses instance/group norm; the stem is adapted to the input channels
    (summed for 1 channel, spread evenly otherwise) and 2D kernels are inflated for a 3D encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"ResNet weights file not found: {path}; give the path of a local torchvision state dict"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with objects, not a torch file
        raise ModelError(
            f"cannot read ResNet weights from {path} ({exc.__class__.__name__}); "
            "save a plain state dict with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            f"{path} is not a state dict of tensors; save one with torch.save(model.state_dict(), path)"
        )
    own = encoder.state_dict()
    missing = [k for k in own if k not in state and not _is_stat(k)]
    if missing:
        raise ModelError(
            f"{path} does not match a torchvision {_describe(encoder)}: missing {missing[0]} "
            f"and {len(missing) - 1} more (is it a ResNet-18 for resnet18, ResNet-34 for resnet34?)"
        )
    extra = [k for k in state if k not in own and not _is_stat(k) and not _unused_here(k, encoder.depth)]
    if extra:
        raise ModelError(
            f"{path} does not match a torchvision {_describe(encoder)}: it has {extra[0]} and "
            f"{len(extra) - 1} more tensors the encoder lacks (a ResNet-34 file for a resnet18 encoder?)"
        )
    new = {}
    for key, target in own.items():
        if key not in state:
            continue  # running statistics absent from the file: keep fresh ones
        src = _adapt(key, state[key], target)
        if src is None:
            raise ModelError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, the encoder needs "
                f"{tuple(target.shape)}; weights exist for features=64 only"
            )
        new[key] = src
    encoder.load_state_dict(new, strict=False)
    log.info("initialised the ResNet encoder from %s (%d tensors)", path, len(new))


def _unused_here(key: str, depth: int) -> bool:
    """The classifier and the stages an encoder of this depth leaves out are expected in the file."""
    return key.startswith("fc.") or any(key.startswith(f"layer{i}.") for i in range(depth + 1, 5))


def _is_stat(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def _describe(encoder: ResNetEncoder) -> str:
    return f"ResNet encoder ({encoder.depth} stages, {encoder.conv1.out_channels} stem channels)"


def _adapt(key: str, src: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """``src`` reshaped to ``target``'s shape where that is meaningful, else None."""
    src = src.to(target.dtype)
    if src.shape == target.shape:
        return src
    if src.ndim != 4 or target.ndim not in (4, 5) or src.shape[0] != target.shape[0]:
        return None
    if key == "conv1.weight" and src.shape[1] != target.shape[1]:
        cin = target.shape[1]
        src = (
            src.sum(1, keepdim=True)
            if cin == 1
            else src.mean(1, keepdim=True).repeat(1, cin, 1, 1) * (3 / cin)
        )
    if src.shape[1] != target.shape[1]:
        return None
    if target.ndim == 5:
        k = target.shape[2]
        src = src.unsqueeze(2).repeat(1, 1, k, 1, 1) / k
    return src if src.shape == target.shape else None


@register_model(
    "res_unet",
    description="Residual U-Net: ResNet-18/34 encoder (torchvision layout, 2D or 3D) under a U-Net decoder",
    presets={
        "reference": {"features": 64, "depth": 4, "norm": "batch", "encoder": "resnet34"},
        "resnet18": {"features": 64, "depth": 4, "norm": "batch", "encoder": "resnet18"},
    },
    paper="He et al. 2016, arXiv:1512.03385; ResNet encoder U-Net as in the survey (ResNet-34, or 18)",
)
def build_res_unet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    features: int = 16,
    depth: int = 4,
    norm: str | None = "batch",
    dropout: float = 0.0,
    deep_supervision: bool = False,
    encoder: str = "resnet18",
    encoder_weights: str | Path | None = None,
) -> ResUNet:
    """``encoder``: resnet18 | resnet34.

    ``encoder_weights`` (optional path of a local torchvision ResNet state dict) only initialises the
    encoder: it is not part of the architecture, so a checkpoint's ``arch_args`` should leave it out.
    """
    return ResUNet(
        spatial_dims,
        in_channels,
        out_channels,
        features,
        depth,
        norm,
        dropout,
        deep_supervision,
        encoder,
        encoder_weights,
    )
