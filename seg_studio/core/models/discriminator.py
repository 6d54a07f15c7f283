"""The critic of the survey's adversarial U-Net: a patch discriminator on (image, mask) pairs.

Adversarial training is a mode of training any segmenter, not a segmenter, so this network is not
in the model registry. It is a PatchGAN (Isola et al. 2017; used for segmentation by Luc et al. 2016):
the image and a mask (one-hot labels or softmax probabilities) are concatenated and passed through
strided conv + norm + LeakyReLU layers; the output is one real/fake logit per receptive-field patch,
so the critic judges local shape plausibility and works on any input size. Strided convs use 3x3
kernels with padding 1 (``ceil(size / 2)`` per layer), so odd sizes and thin 3D slabs pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .blocks import conv, norm


class PatchDiscriminator(nn.Module):
    """``forward(image, mask) -> logits`` of shape ``(N, 1, *ceil(spatial / 2**depth))``.

    ``num_classes`` is the segmenter's number of output channels. ``mask`` is ``(N, num_classes,
    *spatial)`` probabilities / one-hot (softmax, or sigmoid for one channel), or ``(N, *spatial)``
    integer labels (encoded here the same way). Logits, not probabilities: pair with ``BCEWithLogitsLoss``.
    """

    def __init__(
        self,
        spatial_dims: int,
        image_channels: int,
        num_classes: int,
        features: int = 16,
        depth: int = 3,
        norm_kind: str | None = "instance",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ModelError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ModelError(f"num_classes is the segmenter's output channels (>= 1), got {num_classes!r}")
        if not isinstance(depth, int) or depth < 1 or not isinstance(features, int) or features < 1:
            raise ModelError(f"features and depth must be positive integers, got {features!r}, {depth!r}")
        self.spatial_dims = spatial_dims
        self.image_channels = image_channels
        self.num_classes = num_classes
        cin = image_channels + num_classes
        layers: list[nn.Module] = []
        for i in range(depth):
            cout = features * 2 ** min(i, 3)
            # No normalisation on the first layer (pix2pix): it would erase the input's statistics.
            layers += [
                conv(spatial_dims, cin, cout, 3, stride=2, bias=i == 0 or norm_kind in (None, "none")),
                norm(norm_kind, spatial_dims, cout) if i else nn.Identity(),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            cin = cout
        layers.append(conv(spatial_dims, cin, 1, 3))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.ndim != self.spatial_dims + 2 or image.shape[1] != self.image_channels:
            raise ValueError(
                f"expected image (N, {self.image_channels}, *{self.spatial_dims}D), got {tuple(image.shape)}"
            )
        if mask.ndim == self.spatial_dims + 1:
            mask = self._encode_labels(mask)
        if (
            mask.shape[1] != self.num_classes
            or mask.shape[2:] != image.shape[2:]
            or mask.shape[0] != image.shape[0]
        ):
            raise ValueError(
                f"mask {tuple(mask.shape)} does not match image {tuple(image.shape)} with {self.num_classes} classes"
            )
        return self.net(torch.cat([image, mask.to(image.dtype)], dim=1))

    def _encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Integer labels as the segmenter's output would look: one-hot, or foreground for one channel."""
        if labels.is_floating_point():
            raise ValueError("a mask without a channel axis must hold integer labels")
        if self.num_classes == 1:
            return (labels > 0).unsqueeze(1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1}, got {int(labels.min())}..{int(labels.max())}"
                " (mask out ignored voxels before the critic sees them)"
            )
        return F.one_hot(labels.long(), self.num_classes).movedim(-1, 1)


def create_discriminator(
    spatial_dims: int,
    image_channels: int,
    num_classes: int,
    features: int = 16,
    depth: int = 3,
    norm: str | None = "instance",
) -> PatchDiscriminator:
    """The critic for adversarial training of a segmenter with ``num_classes`` output channels."""
    return PatchDiscriminator(spatial_dims, image_channels, num_classes, features, depth, norm)
