"""Batch augmentation in torch, 2D and 3D: flips, rotation, scaling, elastic deformation, intensity.

All spatial transforms of a batch are folded into ONE sampling grid (affine + smooth random
displacement, as the 3D U-Net paper's elastic deformation) and applied with one ``grid_sample`` to
the images (linear) and one to the labels (nearest), so a step pays for a single resampling however
many transforms are on. Voxels that come from outside the patch get image 0 and label IGNORE_INDEX:
the loss never learns from made-up borders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


@dataclass
class AugmentConfig:
    """Probabilities and ranges; ``flip_axes=None`` means all spatial axes (see ``symmetric_axes``)."""

    flip_axes: list[int] | None = None
    flip_p: float = 0.5
    rotate_p: float = 0.5
    rotate_deg: float = 15.0
    scale_p: float = 0.5
    scale: tuple[float, float] = (0.85, 1.15)
    elastic_p: float = 0.2
    elastic_sigma: float = 0.04  # displacement std as a fraction of the patch (normalised coords)
    elastic_grid: int = 6  # control points per axis
    gamma_p: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast_p: float = 0.3
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.1
    noise_p: float = 0.2
    noise_std: float = 0.1
    enabled: bool = True
    extra: dict = field(default_factory=dict)

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(enabled=False)

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentConfig:
        if not d:
            return cls()
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("scale", "gamma", "contrast"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _rotation(nd: int, n: int, max_rad: float, g: torch.Generator, on: torch.Tensor) -> torch.Tensor:
    """(n, nd, nd) rotation matrices (identity where ``on`` is False). In 3D: about each axis."""
    if nd == 2:
        a = _uniform(n, -max_rad, max_rad, g) * on
        c, s = torch.cos(a), torch.sin(a)
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    r = torch.eye(3).expand(n, 3, 3).clone()
    for ax in range(3):
        a = _uniform(n, -max_rad, max_rad, g) * on
        c, s = torch.cos(a), torch.sin(a)
        m = torch.eye(3).expand(n, 3, 3).clone()
        i, j = [k for k in range(3) if k != ax]
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
        r = r @ m
    return r


def spatial_grid(
    shape: Sequence[int], cfg: AugmentConfig, g: torch.Generator, n: int, device: torch.device
) -> torch.Tensor | None:
    """The sampling grid ``(n, *shape, nd)`` for one batch, or None when no sample is transformed."""
    nd = len(shape)
    rot_on = (torch.rand(n, generator=g) < cfg.rotate_p).float()
    scale_on = torch.rand(n, generator=g) < cfg.scale_p
    ela_on = torch.rand(n, generator=g) < cfg.elastic_p
    axes = list(range(nd)) if cfg.flip_axes is None else list(cfg.flip_axes)
    flips = torch.ones(n, nd)
    for ax in axes:
        flips[:, ax] = torch.where(torch.rand(n, generator=g) < cfg.flip_p, -1.0, 1.0)
    if not (rot_on.any() or scale_on.any() or ela_on.any() or (flips < 0).any()):
        return None
    mat = _rotation(nd, n, math.radians(cfg.rotate_deg), g, rot_on)
    sc = torch.where(scale_on, _uniform(n, *cfg.scale, g), torch.ones(n))
    # affine_grid works in x,y(,z) order = reversed array axes; flip axis k of the array = coord nd-1-k.
    flip_xyz = flips.flip(-1)
    mat = mat * sc[:, None, None] * flip_xyz[:, None, :]
    theta = torch.cat([mat, torch.zeros(n, nd, 1)], dim=-1).to(device)
    grid = F.affine_grid(theta, [n, 1, *shape], align_corners=False)
    if ela_on.any():
        ctrl = torch.randn(n, nd, *([cfg.elastic_grid] * nd), generator=g) * cfg.elastic_sigma
        ctrl = ctrl * ela_on.float().view(n, *([1] * (nd + 1)))
        mode = "bicubic" if nd == 2 else "trilinear"
        disp = F.interpolate(ctrl.to(device), size=tuple(shape), mode=mode, align_corners=True)
        grid = grid + disp.movedim(1, -1)
    return grid


def intensity(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Gamma (on each sample's own range), contrast/brightness and Gaussian noise, per sample."""
    n = x.shape[0]
    view = (n, *([1] * (x.ndim - 1)))
    gam_on = torch.rand(n, generator=g) < cfg.gamma_p
    if gam_on.any():
        lo = x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)
        hi = x.amax(dim=tuple(range(1, x.ndim)), keepdim=True)
        rng = (hi - lo).clamp_min(1e-6)
        gam = torch.where(gam_on, _uniform(n, *cfg.gamma, g), torch.ones(n)).view(view).to(x.device)
        x = ((x - lo) / rng).clamp(0, 1).pow(gam) * rng + lo
    con_on = torch.rand(n, generator=g) < cfg.contrast_p
    if con_on.any():
        c = torch.where(con_on, _uniform(n, *cfg.contrast, g), torch.ones(n)).view(view).to(x.device)
        b = torch.where(con_on, _uniform(n, -cfg.brightness, cfg.brightness, g), torch.zeros(n)).view(view)
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        x = (x - mean) * c + mean + b.to(x.device)
    noise_on = torch.rand(n, generator=g) < cfg.noise_p
    if noise_on.any():
        std = (torch.rand(n, generator=g) * cfg.noise_std * noise_on).view(view).to(x.device)
        x = x + torch.randn(x.shape, generator=g).to(x.device) * std
    return x


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, spatial_only: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images ``(N, C, *sp)`` float and labels ``(N, *sp)`` long together; the last
    ``spatial_only`` channels (maps of recorded clicks) move with the image but keep their values."""
    if not cfg.enabled:
        return x, y
    shape = tuple(y.shape[1:])
    grid = spatial_grid(shape, cfg, g, x.shape[0], x.device)
    if grid is not None:
        x = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        # Labels shifted by +1 so that 0 marks "came from outside" -> IGNORE_INDEX after the shift back.
        # (IGNORE_INDEX is -1, so ignored voxels also map to 0 and stay ignored.)
        yl = (y.clamp_min(-1) + 1).to(torch.float32).unsqueeze(1)
        ys = F.grid_sample(yl, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        y = ys.squeeze(1).round().long() - 1
        y[y < 0] = IGNORE_INDEX
    if spatial_only:
        keep = x.shape[1] - spatial_only
        return torch.cat([intensity(x[:, :keep], cfg, g), x[:, keep:]], 1), y
    x = intensity(x, cfg, g)
    return x, y
