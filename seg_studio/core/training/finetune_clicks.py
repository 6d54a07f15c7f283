"""The user's recorded clicks in a fine-tune: they train the next interactive model (click to correct).

The panel saves the clicks of a corrected scan beside its labels (``NAME.clicks.json``) and the CLI picks
them up. For an interactive parent they become the first round of guidance of their pair: each click is
drawn as the model draws clicks, the maps ride with the case through patches and spatial augmentation
(``Case.recorded``), and ``clicksim.ClickSimulator`` uses them instead of simulating the first click, then
adds simulated rounds after them as in training. The model learns what *this* user's clicks mean on
scans like this one, so the next scan needs fewer. An automatic model takes no clicks: they are not used,
which the log, the result and the child's provenance say.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SegStudioError, TrainingError
from ..interactive.clicks import Click, check_click
from ..interactive.guidance import GuidanceSpec
from .clicksim import ClickSimulator, ClickTraining, click_validation, median_spacing, recorded_maps
from .data import IGNORE_INDEX, Case
from .plan import TrainingPlan

log = logging.getLogger(__name__)

#: A click as training holds it: (label value after the label map, positive, voxel of its item).
ItemClick = tuple[int, bool, tuple[int, ...]]


@dataclass
class ClickUse:
    """What became of the recorded clicks: how many were given, used, and on how many pairs."""

    given: int = 0
    used: int = 0
    pairs: int = 0
    reason: str = ""
    #: per training item (case name), its clicks
    by_item: dict[str, list[ItemClick]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """For the child's provenance (and the CLI's summary)."""
        out: dict[str, Any] = {"given": self.given, "used": self.used, "pairs": self.pairs}
        if self.reason:
            out["reason"] = self.reason
        return out


def check_pair_clicks(clicks: Any, n_pairs: int) -> list[Sequence[Click] | None]:
    """``clicks`` as one entry (a list of ``Click`` or None) per training pair."""
    if clicks is None:
        return [None] * n_pairs
    clicks = list(clicks)
    if len(clicks) != n_pairs:
        raise TrainingError(f"{len(clicks)} click list(s) for {n_pairs} training pair(s); give one per pair")
    for entry in clicks:
        if entry is not None and not all(isinstance(c, Click) for c in entry):
            raise TrainingError("recorded clicks must be core.interactive.Click records")
    return clicks


def item_clicks(
    clicks: Sequence[Click],
    name: str,
    values: np.ndarray,
    item_names: Sequence[str],
    lmap: Mapping[int, int],
) -> dict[str, list[ItemClick]]:
    """The clicks of one pair on its training items: the pair itself, or (a 3D pair for a 2D model) the
    labelled z-slices, a click going to the slice it was made on. Values go through the label map; a
    click on a value mapped to ignore is dropped."""
    for i, c in enumerate(clicks):
        try:
            check_click(c, values.shape, f"{name}: click {i + 1}")
        except SegStudioError as exc:
            raise TrainingError(str(exc)) from None
    mapped = [(lmap.get(c.value, c.value), c.positive, tuple(c.voxel)) for c in clicks]
    mapped = [m for m in mapped if m[0] != IGNORE_INDEX]
    if len(item_names) == 1 and not item_names[0].endswith("]"):
        return {item_names[0]: mapped}
    zs = [z for z in range(values.shape[0]) if np.any(values[z] != IGNORE_INDEX)]
    return {
        item: [(v, p, vox[1:]) for v, p, vox in mapped if vox[0] == z]
        for item, z in zip(item_names, zs, strict=True)
    }


def attach_recorded(
    cases: Sequence[Case],
    use: ClickUse,
    value_to_index: Mapping[int, int],
    n_classes: int,
    spec: GuidanceSpec,
) -> None:
    """Draw each case's recorded clicks into ``case.recorded``; clicks on a value that names no class
    of the corrections (nothing of it is labelled) are dropped and counted out."""
    used = 0
    for case in cases:
        clicks = [
            (value_to_index[v], p, vox) for v, p, vox in use.by_item.get(case.name, []) if v in value_to_index
        ]
        clicks = [c for c in clicks if c[0] > 0]
        if clicks:
            case.recorded = recorded_maps(clicks, case.spatial, case.spacing_zyx, n_classes, spec)
            used += len(clicks)
    if used < use.given:
        log.info(
            "%d of %d recorded click(s) name no labelled class and are not used", use.given - used, use.given
        )
    use.used = used


def click_training(meta: Any, spec: GuidanceSpec) -> ClickTraining:
    """The simulated user of the parent's own training (its provenance's interactive table), drawn as
    the checkpoint draws clicks; the defaults where an older file records none."""
    table = ((meta.provenance or {}).get("settings") or {}).get("interactive")
    try:
        cfg = ClickTraining.from_dict(table if isinstance(table, Mapping) else None)
    except TrainingError:
        cfg = ClickTraining()
    cfg.sigma, cfg.shape, cfg.previous_mask = spec.sigma, spec.shape, spec.previous_mask
    return cfg


def add_finetune_clicks(plan: TrainingPlan, meta: Any, spec: GuidanceSpec, n_classes: int) -> ClickTraining:
    """An interactive fine-tune: recorded, then simulated clicks on every batch (``ClickSimulator``) and
    parent and child scored after simulated clicks, as the parent was validated (``click_validation``)."""
    cfg = click_training(meta, spec)
    c = plan.compute
    plan.hooks.insert(
        0,
        ClickSimulator(cfg, spec, n_classes, median_spacing(plan.train_cases), c.autocast, plan.batches.seed),
    )
    patch = plan.batches.patch

    def scorer(model: Any, cases: Any, cancel: Any) -> dict[str, Any]:
        return click_validation(
            model, cases, cfg, spec, n_classes, patch, c.device, c.autocast, c.channels_last, cancel
        )

    plan.validation.scorer = scorer
    plan.n_classes = 2
    return cfg


def click_card_line(use: ClickUse, cfg: ClickTraining | None) -> str | None:
    """The child's card line on the recorded clicks (None when none were given)."""
    if not use.given:
        return None
    if not use.used:
        return (
            f"{use.given} recorded click(s) given, none used: {use.reason or 'they name no labelled class'}"
        )
    rounds = f", then up to {cfg.max_rounds} simulated round(s)" if cfg is not None else ""
    return (
        f"fine-tuned with {use.used} recorded click(s) on {use.pairs} pair(s) as the first round of "
        f"guidance{rounds}"
    )
