"""Dice + cross-entropy with an ignore label, and weighted deep supervision.

The soft Dice is a *batch* Dice over the foreground classes (nnU-Net's choice): summing over the
whole batch before dividing keeps it stable when a class is absent from one patch. Ignored voxels
(IGNORE_INDEX) drop out of both terms, so a clinician's partial correction trains only where she
painted. Losses are computed in float32 even under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import AUX_DEEP_SUPERVISION
from .data import IGNORE_INDEX


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * (1 - soft Dice)``, multi-class softmax, ignore-aware."""

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        include_background: bool = False,
        smooth: float = 1e-5,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.include_background = include_background
        self.smooth = smooth
        self.register_buffer(
            "class_weights",
            None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32),
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        n_cls = logits.shape[1]
        valid = target != IGNORE_INDEX
        if not bool(valid.any()):
            return logits.sum() * 0.0  # keeps the graph; nothing to learn from this batch
        loss = logits.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(
                logits, target, weight=self.class_weights, ignore_index=IGNORE_INDEX
            )
        if self.dice_weight:
            probs = logits.softmax(1)
            tgt = target.clamp_min(0)
            onehot = F.one_hot(tgt, n_cls).movedim(-1, 1).to(probs.dtype)
            mask = valid.unsqueeze(1).to(probs.dtype)
            probs, onehot = probs * mask, onehot * mask
            dims = (0, *range(2, logits.ndim))
            inter = (probs * onehot).sum(dims)
            denom = probs.sum(dims) + onehot.sum(dims)
            dice = (2 * inter + self.smooth) / (denom + self.smooth)
            if not self.include_background and n_cls > 1:
                dice = dice[1:]
            loss = loss + self.dice_weight * (1 - dice.mean())
        return loss


def deep_supervision_weights(n_heads: int, decay: float = 0.5) -> list[float]:
    """Weights for ``[*aux_heads, final]``: the final head 1, each earlier head ``decay`` times the next,
    normalised to sum 1 (UNet++ averages heads; decaying favours the full-depth output used at inference)."""
    raw = [decay ** (n_heads - i) for i in range(n_heads)] + [1.0]
    s = sum(raw)
    return [w / s for w in raw]


def supervised_loss(
    loss_fn: nn.Module,
    logits: torch.Tensor,
    aux_heads: Sequence[torch.Tensor],
    target: torch.Tensor,
    decay: float = 0.5,
) -> torch.Tensor:
    """Loss of the final logits, plus the weighted deep-supervision heads when the model gave any."""
    if not aux_heads:
        return loss_fn(logits, target)
    weights = deep_supervision_weights(len(aux_heads), decay)
    heads = [*aux_heads, logits]
    total = logits.new_zeros((), dtype=torch.float32)
    for w, h in zip(weights, heads, strict=True):
        if h.shape[2:] != target.shape[1:]:
            h = F.interpolate(h.float(), size=tuple(target.shape[1:]), mode="nearest")
        total = total + w * loss_fn(h, target)
    return total


@dataclass
class SupervisedLoss:
    """The segmentation loss of a plan: Dice+CE on the final logits, plus the deep-supervision heads.

    ``deep_supervision`` None uses the heads when the model has them (UNet++, nnU-Net-style variants),
    False never asks the model for them; ``ds_decay`` weighs each earlier head against the next.
    """

    loss_fn: nn.Module = field(default_factory=DiceCELoss)
    deep_supervision: bool | None = None
    ds_decay: float = 0.5

    def wanted_aux(self) -> tuple[str, ...]:
        """The auxiliary outputs to ask the model for."""
        return () if self.deep_supervision is False else (AUX_DEEP_SUPERVISION,)

    def heads(self, aux: dict[str, list[torch.Tensor]]) -> list[torch.Tensor]:
        """The deep-supervision heads the model returned (none when switched off)."""
        return list(aux.get(AUX_DEEP_SUPERVISION, [])) if self.deep_supervision is not False else []

    def __call__(
        self, logits: torch.Tensor, heads: Sequence[torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        return supervised_loss(self.loss_fn, logits, heads, target, self.ds_decay)
