"""The survey's adversarial mode: a patch critic on (image, mask) pairs, trained alternately.

Luc et al. 2016 ("Semantic segmentation using adversarial networks"): the critic D learns to tell
(image, true one-hot mask) from (image, softmax of the segmenter); the segmenter S minimises its usual
Dice+CE plus ``weight * BCE(D(image, S(image)), real)``, which pushes it toward masks whose *shape*
looks like the real ones (no holes, plausible boundaries). Any registered variant is the generator;
the critic is ``models.discriminator.PatchDiscriminator``.

Where the truth is ignored (partial corrections, padding), the "real" mask takes the segmenter's own
(detached) prediction, so those voxels carry no signal either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX
from .plan import LoopHook


@dataclass
class AdversarialConfig:
    weight: float = 0.05  # of the adversarial term in the segmenter's loss
    lr: float = 2e-4
    features: int = 16
    depth: int = 3
    warmup_steps: int = 0  # segmentation-only steps before the critic joins


class AdversarialStep(LoopHook):
    """Owns the critic and its optimiser; a hook of the training loop: ``extra_loss`` adds the
    segmenter's adversarial term, ``after_update`` trains the critic on the same batch."""

    def __init__(
        self,
        spatial_dims: int,
        image_channels: int,
        num_classes: int,
        cfg: AdversarialConfig,
        device: torch.device,
    ) -> None:
        from ..models.discriminator import create_discriminator

        self.cfg = cfg
        self.num_classes = num_classes
        self.critic = create_discriminator(
            spatial_dims, image_channels, num_classes, features=cfg.features, depth=cfg.depth
        ).to(device)
        self.opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
        self.last: dict[str, float] = {}

    def active(self, step: int) -> bool:
        return step >= self.cfg.warmup_steps and self.cfg.weight > 0

    def extra_loss(self, step: int, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        return self.segmenter_loss(x, logits) if self.active(step) else None

    def after_update(
        self, step: int, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> dict[str, float]:
        if self.active(step):
            self.critic_step(x, logits, y)
        return dict(self.last)

    def _real_mask(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(target.clamp_min(0), self.num_classes).movedim(-1, 1).to(probs.dtype)
        ignored = (target == IGNORE_INDEX).unsqueeze(1)
        return torch.where(ignored, probs.detach(), onehot)

    def segmenter_loss(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``weight * BCE(D(image, softmax(logits)), real)``; the critic's weights get no gradient here."""
        for p in self.critic.parameters():
            p.requires_grad_(False)
        try:
            probs = logits.float().softmax(1)
            d_fake = self.critic(image.float(), probs)
            loss = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        finally:
            for p in self.critic.parameters():
                p.requires_grad_(True)
        self.last["adv_g"] = float(loss.detach())
        return self.cfg.weight * loss

    def critic_step(self, image: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> float:
        """One update of the critic on real (truth) vs fake (prediction) masks."""
        probs = logits.detach().float().softmax(1)
        real = self._real_mask(probs, target)
        img = image.detach().float()
        d_real = self.critic(img, real)
        d_fake = self.critic(img, probs)
        loss = 0.5 * (
            F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.last["adv_d"] = float(loss.detach())
        return self.last["adv_d"]

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.opt.load_state_dict(state["opt"])
