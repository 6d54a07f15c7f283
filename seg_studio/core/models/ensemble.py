"""Ensemble U-Net: several trained members, the mean of their probabilities, their spread as uncertainty.

Members must agree on dimensions and channels. ``logits`` are chosen so that the usual activation
gives back the mean probability: ``log(mean softmax)`` for several classes (softmax of it is the
mean) and ``logit(mean sigmoid)`` for one channel (sigmoid of it is the mean). ``aux["uncertainty"]``
is ``[std]``, the per-voxel, per-class standard deviation of the members' probabilities.

An ensemble is saved like any model: its ``members`` config lists each member's architecture and
arguments, so the registry rebuilds it and the state dict (``members.0.*``, ...) fills it. It is not
trainable from scratch: build it from trained members or from checkpoints
(:meth:`Ensemble.from_checkpoints`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ModelError
from .base import AUX_ATTENTION, AUX_UNCERTAINTY, SegModel, SegOutput
from .registry import create_model, register_model

if TYPE_CHECKING:
    from ..checkpoint import ModelMeta

#: Keeps ``log`` finite where every member is certain a class is absent.
_EPS = 1e-7


class Ensemble(SegModel):
    """Mean of the members' probabilities.

    ``member_specs`` (optional) records ``{"architecture", "arch_args"}`` per member so the ensemble
    can be rebuilt from its config (:attr:`arch_args`).
    """

    def __init__(
        self, members: Sequence[SegModel], member_specs: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        if len(members) < 1:
            raise ModelError("an ensemble needs at least one member model")
        first = members[0]
        for k, m in enumerate(members[1:], start=1):
            mine = (m.spatial_dims, m.in_channels, m.out_channels)
            theirs = (first.spatial_dims, first.in_channels, first.out_channels)
            if mine != theirs:
                raise ModelError(
                    f"ensemble member {k} is {mine[0]}D with {mine[1]} input and {mine[2]} output channels, "
                    f"member 0 is {theirs[0]}D with {theirs[1]} and {theirs[2]}: pick models trained for the "
                    "same task"
                )
        if member_specs is not None and len(member_specs) != len(members):
            raise ModelError(f"{len(member_specs)} member specs for {len(members)} members")
        multiple = math.lcm(*(m.size_multiple for m in members))
        super().__init__(first.spatial_dims, first.in_channels, first.out_channels, size_multiple=multiple)
        self.members = nn.ModuleList(members)
        self.member_specs = [dict(s) for s in member_specs] if member_specs is not None else None

    @property
    def arch_args(self) -> dict[str, Any]:
        """The config that rebuilds this ensemble through the registry (needs ``member_specs``)."""
        if self.member_specs is None:
            raise ModelError("this ensemble was built from live models: it does not know their configs")
        return {"members": [dict(s) for s in self.member_specs]}

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.out_channels == 1 else torch.softmax(logits, dim=1)

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        member_aux = want & {AUX_ATTENTION}
        outs = [m(x, member_aux) for m in self.members]  # x is padded to every member's multiple already
        probs = torch.stack([self.probabilities(o.logits.float()) for o in outs])
        mean = probs.mean(0)
        if self.out_channels == 1:
            p = mean.clamp(_EPS, 1 - _EPS)
            logits = torch.log(p) - torch.log1p(-p)
        else:
            logits = torch.log(mean.clamp_min(_EPS))
        aux: dict[str, list[torch.Tensor]] = {}
        if AUX_UNCERTAINTY in want:
            aux[AUX_UNCERTAINTY] = [probs.std(0, correction=0)]
        if AUX_ATTENTION in want:
            maps = _mean_attention([o.aux.get(AUX_ATTENTION, []) for o in outs])
            if maps:
                aux[AUX_ATTENTION] = maps
        return SegOutput(logits, aux)

    @classmethod
    def from_checkpoints(
        cls, paths: Sequence[str | Path], device: str | torch.device = "cpu"
    ) -> tuple[Ensemble, ModelMeta]:
        """Load each ``.segmodel`` and combine them, like ``checkpoint.load``: ``(model, meta)``.

        The members must share dimensions, channels, classes, normalisation and spacing (the scan is
        prepared once for all of them). The returned meta is the first member's, renamed
        ``ensemble`` with the members' configs as ``arch_args`` (so ``checkpoint.save`` can store the
        ensemble as one file) and each member's file hash in its provenance.
        """
        from ..checkpoint import file_hash, load  # late: the checkpoint module pulls in safetensors

        if not paths:
            raise ModelError("an ensemble needs at least one checkpoint")
        members, metas = [], []
        for path in paths:
            model, meta = load(path, device=device)
            members.append(model)
            metas.append(meta)
        first, name0 = metas[0], Path(paths[0]).name
        for path, meta in zip(paths[1:], metas[1:], strict=True):
            for what, mine, theirs in (
                ("classes", [c.name for c in meta.classes], [c.name for c in first.classes]),
                ("normalisation", meta.normalization, first.normalization),
                ("spacing", meta.spacing, first.spacing),
            ):
                if mine != theirs:
                    raise ModelError(
                        f"{Path(path).name} has {what} {mine}, {name0} has {theirs}: "
                        "ensemble only models trained for the same task and preprocessing"
                    )
        specs = [{"architecture": m.architecture, "arch_args": dict(m.arch_args)} for m in metas]
        ensemble = cls(members, specs).to(device).eval()
        provenance = {
            "members": [
                {"file": Path(p).name, "hash": file_hash(p), "architecture": m.architecture}
                for p, m in zip(paths, metas, strict=True)
            ]
        }
        meta = dataclasses.replace(
            first, architecture="ensemble", arch_args=ensemble.arch_args, provenance=provenance, card={}
        )
        return ensemble, meta


def _mean_attention(per_member: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Average the members' gate maps level by level, over the members that have that level's map."""
    with_maps = [maps for maps in per_member if maps]
    if not with_maps:
        return []
    out = []
    for level in range(max(len(m) for m in with_maps)):
        same = [m[level] for m in with_maps if len(m) > level and m[level].shape == with_maps[0][level].shape]
        out.append(torch.stack(same).mean(0))
    return out


@register_model(
    "ensemble",
    description="Ensemble U-Net: mean of member probabilities, their standard deviation as uncertainty",
    paper="survey section 2.9 (Ensemble U-Net)",
    trainable_from_scratch=False,
)
def build_ensemble(
    spatial_dims: int, in_channels: int, out_channels: int, members: Sequence[Mapping[str, Any]] = ()
) -> Ensemble:
    """Rebuild from ``members=[{"architecture": name, "arch_args": {...}}, ...]`` (untrained weights)."""
    if not members:
        raise ModelError(
            "an ensemble is built from trained members: use Ensemble.from_checkpoints([...]) "
            "or pass members=[{'architecture': ..., 'arch_args': {...}}, ...]"
        )
    models = []
    for spec in members:
        if "architecture" not in spec:
            raise ModelError(f"ensemble member spec {dict(spec)} names no 'architecture'")
        if spec["architecture"] == "ensemble":
            raise ModelError("an ensemble cannot contain another ensemble")
        models.append(
            create_model(
                spec["architecture"],
                spatial_dims=spatial_dims,
                in_channels=in_channels,
                out_channels=out_channels,
                **dict(spec.get("arch_args", {})),
            )
        )
    return Ensemble(models, members)
