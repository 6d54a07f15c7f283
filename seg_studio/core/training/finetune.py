"""One-click fine-tuning: a checkpoint + corrected labels -> a NEW checkpoint that names its parent.

Called from the GUI's worker thread with in-memory Volumes (labels may hold IGNORE_INDEX, or another
``ignore_value``, where the user did not correct anything) and from ``seg-studio finetune`` with
folders. A fine-tune is the training loop (``loop.run_plan``) on a plan built from the parent, plus
the steps only a fine-tune has. Guarantees:

- the parent file is never written (``out`` may not be the parent), and cancelling writes nothing:
  the only write is ``checkpoint.save`` at the very end, which is atomic;
- the whole call, validation and saving included, ends within ``budget_s`` (default 50 s for 2D and
  100 s for 3D, GUI and CLI alike): the training deadline is the budget minus the measured cost of one
  evaluation and a save, and no step starts that would not end before it;
- a label value the parent does not know becomes a new class: the output head grows (old rows kept,
  new rows freshly initialised and trained at a higher learning rate) and the class takes the name
  the user gave it;
- parent and child are scored on the same voxels (``acceptance``): the parent's stored validation
  split when the pairs include its cases, else a split of the new cases fixed by image hash (written
  beside ``out`` and into its provenance, so the next fine-tune reuses it), else the corrected region
  the caller passes as validation, else the corrected pairs themselves, which the result says; the
  child is offered only when it is better after at least ``MIN_OFFERED_STEPS`` steps;
- the child is stored in its parent's precision; torch's thread count follows the load (``threads``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..defaults import FINETUNE_BUDGET_2D_S, FINETUNE_BUDGET_3D_S, finetune_budget_s
from ..errors import Cancelled, TrainingError
from ..inference.devices import describe_hardware, pick_device
from ..interactive.clicks import Click
from ..interactive.guidance import GuidanceSpec
from ..interactive.refine import guidance_spec
from ..models import SegModel
from ..progress import CancelToken, Progress
from ..volume import Volume
from .acceptance import MIN_OFFERED_STEPS, WARMUP_STEPS, Acceptance, Verdict, not_better_path
from .augment import AugmentConfig
from .checks import check_has_foreground, check_label_values
from .child import child_card, child_classes, child_meta, round_weights, storage_dtype
from .data import (
    IGNORE_INDEX,
    Case,
    PairSource,
    Split,
    apply_label_map,
    fit_patch,
    image_hash,
    make_case,
    make_or_extend_split,
    pairs_from_list,
    parse_label_map,
    read_pair,
    slices_as_2d,
    symmetric_axes,
)
from .distributed import pick_precision
from .evaluation import default_channels_last, finite_or_none, memory_format, unwrap
from .finetune_clicks import (
    ClickUse,
    add_finetune_clicks,
    attach_recorded,
    check_pair_clicks,
    click_card_line,
    item_clicks,
)
from .heads import encoder_parameter_names, freeze_encoder, grow_head, unfreeze
from .loop import make_optimizer, patch_forward, run_plan
from .losses import SupervisedLoss
from .parent_fit import ParentFit, assess_parent_fit, start_fresh
from .plan import Batches, Compute, LoopState, Schedule, StoppingRule, TrainingPlan, Validation
from .records import child_domain, training_data_record
from .replay import ReplayStore, replay_folder
from .threads import ThreadTuner

log = logging.getLogger(__name__)

#: Default total budgets (seconds), evaluation and saving included; the GUI and the CLI both use them.
DEFAULT_BUDGET_2D = FINETUNE_BUDGET_2D_S
DEFAULT_BUDGET_3D = FINETUNE_BUDGET_3D_S
#: Default learning rates (AdamW): an untrained parent learns from scratch and needs a large step to get
#: anywhere in a 50 s budget; a trained parent must not be shaken out of what it knows.
LR_FROM_SCRATCH = 3e-3
LR_TRAINED = 1e-3
#: Augmentation a fine-tune starts from (what the caller passes goes on top). It learns from one or two
#: scans, and the next scan differs from them most in exposure and contrast, so gamma, contrast and noise
#: are applied twice as often as in full training. JSRT from scratch, two X-rays -> ten others, 160 steps,
#: width 8, seeds 0/1/2 (benchmarks/training.py --only jsrt --steps 160 --seed N): lungs 0.949/0.958/0.945
#: (mean 0.951) with the training defaults, 0.963/0.963/0.957 (mean 0.961) with these.
FINETUNE_AUGMENT: dict[str, Any] = {"gamma_p": 0.6, "contrast_p": 0.6, "noise_p": 0.4}
#: The largest 3D fine-tune patch per axis on a CPU. The budget is wall-clock, so steps count more than
#: context: on MSD hippocampus scans (about 40 x 50 x 39, which a 64^3 cap trains on whole) 32^3 patches
#: ran 195 steps in 100 s where the whole volume ran 76, and the child's Dice on five next scans was 0.373
#: against 0.230 (13 890 voxels to correct against 51 938; same start, same two scans, load 6-7).
CPU_PATCH_3D = 32

__all__ = [
    "DEFAULT_BUDGET_2D",
    "DEFAULT_BUDGET_3D",
    "FINETUNE_AUGMENT",
    "LR_FROM_SCRATCH",
    "LR_TRAINED",
    "MIN_OFFERED_STEPS",
    "FinetuneResult",
    "default_budget",
    "default_lr",
    "encoder_parameter_names",
    "eval_view",
    "grow_head",
    "iter_finetune",
    "parent_is_untrained",
]


@dataclass
class FinetuneResult:
    path: Path
    parent: Path
    dice_before: float
    dice_after: float
    per_class_before: dict[str, float | None] = field(default_factory=dict)
    per_class_after: dict[str, float | None] = field(default_factory=dict)
    dice_on: str = "validation"
    val_cases: list[str] = field(default_factory=list)
    train_cases: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    split_path: Path | None = None
    stop_reason: str = ""
    lr: float = 0.0
    #: whether the child beat its parent on the same voxels (after enough steps): only then is it offered
    better: bool = True
    #: why it is not offered ("" when it is)
    not_better_reason: str = ""
    threads: dict[str, Any] = field(default_factory=dict)
    #: what the child started from ("parent", or "fresh" when the parent did not fit) and why
    start: dict[str, Any] = field(default_factory=dict)
    #: names of the series' earlier pairs it trained on again (replay)
    replayed: list[str] = field(default_factory=list)
    #: the user's recorded clicks: given, used (an interactive parent), on how many pairs, why not
    clicks: dict[str, Any] = field(default_factory=dict)
    #: the child is an interactive (click) model, like its parent
    interactive: bool = False


@dataclass
class FinetuneOptions:
    """How a fine-tune trains (every keyword of ``iter_finetune`` that is not data or a destination)."""

    budget_s: float
    lr: float
    lr_explicit: bool = False  # the caller chose ``lr`` (a fresh start keeps it too)
    steps: int | None = None
    head_lr_mult: float = 5.0
    freeze_encoder: bool = False
    batch_size: int | None = None
    patch_size: Sequence[int] | None = None
    augment: Mapping[str, Any] | None = None
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0


def default_budget(spatial_dims: int) -> float:
    """The one default time budget of a fine-tune (GUI and CLI): 50 s in 2D, 100 s in 3D."""
    return finetune_budget_s(spatial_dims)


def parent_is_untrained(meta: Any) -> bool:
    """True for a parent with random weights: the GUI's untrained variant (card ``untrained``), or a
    checkpoint whose provenance records no training, fine-tune or import."""
    if (meta.card or {}).get("untrained"):
        return True
    prov = meta.provenance or {}
    return not any(k in prov for k in ("kind", "parent", "imported_from", "metrics", "data"))


def default_lr(meta: Any) -> float:
    return LR_FROM_SCRATCH if parent_is_untrained(meta) else LR_TRAINED


def iter_finetune(
    checkpoint: str | Path,
    pairs: Iterable[tuple[Any, Any]],
    out: str | Path,
    budget_s: float | None = None,
    *,
    steps: int | None = None,
    lr: float | None = None,
    head_lr_mult: float = 5.0,
    freeze_encoder: bool = False,
    label_map: str | Mapping[Any, Any] | None = None,
    ignore_value: int | None = None,
    class_names: Mapping[int, str] | None = None,
    val_pairs: Iterable[tuple[Any, Any]] | None = None,
    split: str | Path | None = None,
    val_fraction: float = 0.2,
    batch_size: int | None = None,
    patch_size: Sequence[int] | None = None,
    augment: Mapping[str, Any] | None = None,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    name_not_better: bool = False,
    replay: bool | str | Path = False,
    clicks: Sequence[Sequence[Click] | None] | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, FinetuneResult]:
    """Fine-tune ``checkpoint`` on ``pairs`` of (image, labels) Volumes or paths; write ``out``.

    ``class_names`` names label values the parent lacks (value -> name); ``ignore_value`` marks voxels
    to leave out (IGNORE_INDEX = -1 always is). ``steps`` caps the steps (the budget still applies).
    ``val_pairs`` score parent and child (e.g. the corrected region of the one scan, from
    ``acceptance.corrected_region_labels``). A child that is not better is written all the same, flagged
    in its card, and with ``name_not_better`` under ``<out stem>.notbetter.segmodel``. ``replay`` (True,
    or a folder) makes it one of a series: the earlier corrected pairs of the series train too, and this
    fine-tune's pairs join them (``replay.py``). ``clicks`` (one list of ``core.interactive.Click`` or
    None per pair of ``pairs``, as saved beside the labels) train an interactive parent: they are the
    first round of guidance of their pair (``finetune_clicks``); an automatic parent does not use them.
    """
    from .. import checkpoint as ckpt

    t0 = time.perf_counter()
    parent, out = check_destination(Path(checkpoint), Path(out))
    yield Progress(0, 1, "prepare", f"loading {parent.name}")
    parent_hash = ckpt.file_hash(parent)
    parent_model, meta = ckpt.load(parent, device="cpu")
    opts = FinetuneOptions(
        resolve_budget(budget_s, meta.spatial_dims), resolve_lr(lr, meta), lr is not None, steps, head_lr_mult,
        freeze_encoder, batch_size, patch_size, augment, device, precision, seed,
    )  # fmt: skip
    folder = replay_folder(replay, meta.provenance, out)
    store = ReplayStore(folder) if folder is not None else None
    earlier = store.pairs() if store is not None else []
    corr = read_corrections(
        meta, pairs, val_pairs, label_map, ignore_value, class_names, cancel, earlier, clicks
    )
    choice = choose_validation(corr, meta, split, val_fraction)
    setup = FinetuneSetup(parent, parent_hash, meta, opts, corr, choice, storage_dtype(parent), store)
    model, head_params = start_child(parent_model, meta, corr)
    plan = finetune_plan(model, meta, choice, corr, head_params, opts)
    acceptance = Acceptance(
        plan, [eval_view(c, plan.batches.patch) for c in choice.val_cases], choice.dice_on
    )
    parent_model = prepare_parent(parent_model, model, plan)
    trained = yield from train_and_judge(plan, acceptance, parent_model, setup, t0, cancel)
    v = trained.verdict
    dest = out if v.better or not name_not_better else not_better_path(out)
    split_path = save_child(dest, plan, setup, trained)
    if store is not None:
        for h, name, img, values in corr.new_pairs:
            store.add(h, name, img, values, dest.name)
    result = finetune_result(dest, plan, setup, trained, split_path)
    result.seconds = time.perf_counter() - t0
    result.clicks = corr.clicks.record()
    log_result(result, v)
    yield Progress(1, 1, "done", f"saved {dest.name}" + ("" if v.better else " (not better than its parent)"), 0.0,
                   {"dice_before": v.dice_parent, "dice_after": v.dice_child, "dice": v.dice_child, "step": v.steps})  # fmt: skip
    return result


@dataclass
class FinetuneSetup:
    """What a fine-tune knows before it trains: the parent, how to train, the corrections, who scores."""

    parent: Path
    parent_hash: str
    meta: Any
    opts: FinetuneOptions
    corr: Corrections
    choice: ValidationChoice
    dtype: torch.dtype | None  # the parent file's float type (None: fp32), which the child is stored in
    store: ReplayStore | None = None  # the series' earlier pairs, when it is one


# --- the steps of a fine-tune, in order ---------------------------------------------------------------


def check_destination(parent: Path, out: Path) -> tuple[Path, Path]:
    """The parent must exist and ``out`` must be a new ``.segmodel`` in an existing folder."""
    from ..checkpoint import SUFFIX

    if out.suffix != SUFFIX:
        raise TrainingError(f"the fine-tuned model is a {SUFFIX} file; got {out.name}")
    if not parent.exists():
        raise TrainingError(f"{parent}: no such checkpoint")
    if out.resolve() == parent.resolve():
        raise TrainingError(
            "the fine-tuned model must go to a new file; the parent checkpoint is never overwritten"
        )
    if not out.parent.is_dir():
        raise TrainingError(f"{out.parent}: no such folder for the fine-tuned model")
    return parent, out


def resolve_budget(budget_s: float | None, spatial_dims: int) -> float:
    budget = float(budget_s) if budget_s is not None else default_budget(spatial_dims)
    if budget <= 0:
        raise TrainingError(f"the time budget must be positive, got {budget}")
    return budget


def resolve_lr(lr: float | None, meta: Any) -> float:
    if lr is None:
        return default_lr(meta)
    if lr <= 0:
        raise TrainingError(f"the learning rate must be positive, got {lr}")
    return float(lr)


@dataclass
class Corrections:
    """The corrected pairs as cases (each flagged when it only validates) and the child's classes."""

    cases: list[tuple[Case, bool]]
    names: list[str]
    value_to_index: dict[int, int]
    new_classes: list[str]
    label_map: dict[int, int]
    #: parent classes the caller names otherwise (value 1 "heart" for a parent's value 1 "membrane")
    renamed: set[int] = field(default_factory=set)
    #: this fine-tune's training pairs as (image hash, name, image, class values) for the series store
    new_pairs: list[tuple[str, str, Volume, np.ndarray]] = field(default_factory=list)
    #: names of earlier pairs of the series trained on again
    replayed: list[str] = field(default_factory=list)
    #: the parent's guidance record when it is interactive (its classes are then "any structure clicked":
    #: label values stay classes of the simulated user, the head never grows)
    interactive: GuidanceSpec | None = None
    #: the recorded clicks and what became of them
    clicks: ClickUse = field(default_factory=ClickUse)
    #: the simulated user of an interactive fine-tune (set with its plan)
    click_cfg: Any = None

    @property
    def n_classes(self) -> int:
        return len(self.names)

    @property
    def present(self) -> set[int]:
        """The class indices painted somewhere in the corrections."""
        return {c for case, _ in self.cases for c in case.class_voxels}


def read_corrections(
    meta: Any,
    pairs: Iterable[tuple[Any, Any]],
    val_pairs: Iterable[tuple[Any, Any]] | None,
    label_map: str | Mapping[Any, Any] | None,
    ignore_value: int | None,
    class_names: Mapping[int, str] | None,
    cancel: CancelToken | None,
    replay_pairs: Sequence[PairSource] = (),
    clicks: Sequence[Sequence[Click] | None] | None = None,
) -> Corrections:
    """Read every pair; label values the parent lacks become new classes (named by ``class_names``,
    the label file, or ``class_<value>``); a 3D pair for a 2D model gives its labelled slices.
    ``replay_pairs`` (earlier pairs of the series, class values already mapped) train too, unless the
    same scan is among ``pairs`` (its new correction wins); ``clicks`` are the recorded clicks per pair."""
    lmap = parse_label_map(label_map)
    corr = Corrections(
        [], [c.name for c in meta.classes], {c.value: i for i, c in enumerate(meta.classes)}, [], lmap
    )
    corr.interactive = None if meta.interactive is None else guidance_spec(meta)
    train_sources = pairs_from_list(pairs)
    per_pair = check_pair_clicks(clicks, len(train_sources))
    corr.clicks.given = sum(len(c) for c in per_pair if c)
    sources = [(s, "train") for s in train_sources]
    pair_clicks = {id(s): c for s, c in zip(train_sources, per_pair, strict=True)}
    sources += [(s, "val") for s in (pairs_from_list(val_pairs) if val_pairs is not None else [])]
    sources += [(s, "replay") for s in replay_pairs]
    raw: list[tuple[str, Volume, np.ndarray, bool]] = []
    for src, role in sources:
        if cancel is not None:
            cancel.raise_if_cancelled()
        plain = role == "replay"  # stored class values: no label map, no ignore value
        img, lab, values, items = read_correction(
            src, meta.spatial_dims, {} if plain else lmap, None if plain else ignore_value
        )
        h = image_hash(img.array)
        if role == "replay" and any(h == k for k, *_ in corr.new_pairs):
            continue
        if role == "train":
            corr.new_pairs.append((h, src.name, img, values))
        corr.replayed += [src.name] if role == "replay" else []
        raw += [(name, im, values, role == "val") for name, im, values in items]
        given = pair_clicks.get(id(src)) if role == "train" else None
        if given and corr.interactive is not None:
            corr.clicks.by_item.update(item_clicks(given, src.name, values, [n for n, _, _ in items], lmap))
            corr.clicks.pairs += 1
        found = np.unique(np.concatenate([np.unique(v) for _, _, v in items])) if items else []
        for v in (int(v) for v in found if v != IGNORE_INDEX):
            name = (class_names or {}).get(v) or (lab.labels[v].name if v in lab.labels else f"class_{v}")
            add_class(corr, v, name, bool((class_names or {}).get(v)), len(meta.classes))
    if not raw:
        raise TrainingError("no labelled voxels in the pairs; correct some of the mask first")
    check_has_foreground((name, v) for name, _, v, _ in raw)
    cin = meta.in_channels if corr.interactive is None else corr.interactive.image_channels
    corr.cases = [
        (make_case(name, img, values, corr.value_to_index, meta.normalization, cin), is_val)
        for name, img, values, is_val in raw
    ]
    # an interactive model segments whichever structure is clicked: its head never grows
    corr.new_classes = corr.names[len(meta.classes) :] if corr.interactive is None else []
    use_clicks(corr, meta)
    return corr


def use_clicks(corr: Corrections, meta: Any) -> None:
    """Draw the recorded clicks into their training cases (an interactive parent), or say why not."""
    use = corr.clicks
    if corr.interactive is not None:
        train = [c for c, is_val in corr.cases if not is_val]
        attach_recorded(train, use, corr.value_to_index, corr.n_classes, corr.interactive)
        if use.given:
            log.info(
                "%d of %d recorded click(s) train the fine-tune (first round of guidance)",
                use.used,
                use.given,
            )
    elif use.given:
        use.reason = f"{meta.architecture} is an automatic model: it takes no clicks"
        log.info("%d recorded click(s) not used: %s (the corrected labels train it)", use.given, use.reason)


def add_class(corr: Corrections, value: int, name: str, named_by_caller: bool, n_parent: int) -> None:
    """A label value the parent lacks becomes a new class; a parent class the caller names otherwise
    (value 1 "heart" for the parent's value 1 "membrane") takes that name and counts as renamed."""
    if value not in corr.value_to_index:
        corr.value_to_index[value] = len(corr.names)
        corr.names.append(name)
        return
    i = corr.value_to_index[value]
    if named_by_caller and i < n_parent and name.strip().lower() != corr.names[i].strip().lower():
        corr.renamed.add(i)
        corr.names[i] = name


def read_correction(
    src: PairSource, dims: int, lmap: Mapping[int, int], ignore_value: int | None
) -> tuple[Volume, Volume, np.ndarray, list[tuple[str, Volume, np.ndarray]]]:
    """One pair as (image, labels, mapped values, [(name, image, values) to train on]): the pair itself,
    or the labelled z-slices of a 3D pair for a 2D model."""
    img, lab = read_pair(src)
    values = apply_label_map(lab.array, lmap, ignore_value)
    check_label_values(values, src.name)
    if img.ndim != dims:
        if dims == 2 and img.ndim == 3:
            slices = slices_as_2d(img, values)
            return img, lab, values, [(f"{src.name}[z{k}]", im2, v2) for k, (im2, v2) in enumerate(slices)]
        raise TrainingError(f"{src.name}: a {img.ndim}D image cannot fine-tune a {dims}D model")
    if not np.any(values != IGNORE_INDEX):
        raise TrainingError(f"{src.name}: every voxel is marked ignore; correct some of the mask first")
    return img, lab, values, [(src.name, img, values)]


def start_child(parent_model: SegModel, meta: Any, corr: Corrections) -> tuple[SegModel, list[str]]:
    """The model to train: the parent itself, or a copy with a head grown for the new classes
    (returned with the names of the grown parameters, which learn faster)."""
    if not corr.new_classes:
        return parent_model, []
    if meta.out_channels == 1:
        raise TrainingError("a single-logit binary model cannot take new classes; train a multi-class model")
    model, head_params = grow_head(parent_model, meta.architecture, meta.arch_args, corr.n_classes)
    log.info(
        "output grows from %d to %d classes: %s",
        meta.out_channels,
        corr.n_classes,
        ", ".join(corr.new_classes),
    )
    return model, head_params


@dataclass
class ValidationChoice:
    """Which cases train and which score parent and child, what the scores are called, and the split
    to store with the child (None when nothing new was split)."""

    train_cases: list[Case]
    val_cases: list[Case]
    dice_on: str
    stored_split: Split | None = None


def choose_validation(
    corr: Corrections, meta: Any, split: str | Path | None, val_fraction: float
) -> ValidationChoice:
    """Explicit validation pairs (the corrected region when they are the training scans); else the
    parent's (or ``split``'s) held-back cases, extended by hash for new ones; else the pairs themselves."""
    explicit = [c for c, is_val in corr.cases if is_val]
    pool = [c for c, is_val in corr.cases if not is_val]
    if explicit:
        same_scans = {c.hash for c in explicit} <= {c.hash for c in pool}
        return ValidationChoice(pool, explicit, "corrected region" if same_scans else "validation")
    stored = extend_split(known_split(meta, split), pool, val_fraction)
    val_hashes = set(stored.val)
    val_cases = [c for c in pool if c.hash in val_hashes]
    train_cases = [c for c in pool if c.hash not in val_hashes]
    if not val_cases or not train_cases:
        # One or two corrected scans: nothing can be held out; measure on what was corrected.
        return ValidationChoice(pool, pool, "training pairs")
    return ValidationChoice(train_cases, val_cases, "validation", stored)


def known_split(meta: Any, split: str | Path | None) -> Split | None:
    """The split to keep: the one named, else the parent's stored one, with every case the parent
    trained on (its provenance's data) on the training side; None when there is none of these."""
    if split is not None:
        return Split.read(Path(split))
    prov = meta.provenance or {}
    parent_split = prov.get("split") or {}
    val = list(parent_split.get("val", []))
    trained = set(parent_split.get("train", [])) | (set((prov.get("data") or {}).get("cases", {})) - set(val))
    if not val and not trained:
        return None
    return Split(val, sorted(trained))


def extend_split(existing: Split | None, pool: Sequence[Case], val_fraction: float) -> Split:
    """``existing`` with the pool's new cases placed; no known case ever moves.

    Three or more new cases are split among themselves (``make_or_extend_split``); fewer (a series of
    one corrected scan at a time) join the validation side while it holds less than ``val_fraction`` of
    the pool's cases (counted from three; cases of the parent's own data that are not in the pool do not
    count), so the held-back set grows with the series.
    """
    known = set(existing.val) | set(existing.train) if existing else set()
    unknown = [c for c in pool if c.hash not in known]
    fresh, _ = make_or_extend_split([c.hash for c in unknown], [c.name for c in unknown], val_fraction, None)
    val, train = (
        set(existing.val if existing else []) | set(fresh.val),
        set(existing.train if existing else []) | set(fresh.train),
    )
    if existing is not None and 0 < len(unknown) < 3:
        total, held = len(pool), sum(1 for c in pool if c.hash in val)
        need = (max(1, round(val_fraction * total)) if total >= 3 and val_fraction > 0 else 0) - held
        for h in sorted(c.hash for c in unknown)[: max(0, need)]:
            val.add(h)
            train.discard(h)
    names = {**(existing.names if existing else {}), **fresh.names}
    return Split(sorted(val), sorted(train), names, fresh.created)


def finetune_patch(
    meta: Any, opts: FinetuneOptions, device: torch.device, train_cases: Sequence[Case]
) -> tuple[int, ...]:
    """The parent's patch (or the one asked), at most ``CPU_PATCH_3D`` per axis on a CPU in 3D, clipped
    to the data."""
    dims = meta.spatial_dims
    if opts.patch_size:
        patch = tuple(opts.patch_size)
    else:
        patch = tuple(meta.patch_size or ((256, 256) if dims == 2 else (64, 64, 64)))
        if dims == 3 and device.type == "cpu":
            patch = tuple(min(p, CPU_PATCH_3D) for p in patch)
    return fit_patch(patch, train_cases)


def finetune_plan(
    model: SegModel,
    meta: Any,
    choice: ValidationChoice,
    corr: Corrections,
    head_params: list[str],
    opts: FinetuneOptions,
) -> TrainingPlan:
    """A fine-tune as a plan: the parent's patch, fine-tune augmentation and schedule (short warm-up, a
    grown head learning ``head_lr_mult`` times faster), optionally a frozen encoder, no validation in
    the loop (the acceptance test scores the child once), threads tuned to the load on a CPU; an
    interactive parent trains and is scored with clicks (``finetune_clicks``)."""
    dev = pick_device(opts.device)
    dims = meta.spatial_dims
    channels_last = default_channels_last(dims, dev)
    patch = finetune_patch(meta, opts, dev, choice.train_cases)
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=memory_format(dims, True))
    if opts.freeze_encoder:
        freeze_encoder(model, meta.architecture)
    aug = AugmentConfig.from_dict({**FINETUNE_AUGMENT, **(dict(opts.augment) if opts.augment else {})})
    if aug.flip_axes is None:
        aug.flip_axes = symmetric_axes(choice.train_cases)
    schedule = Schedule(opts.lr, 1e-4, WARMUP_STEPS, 0.05, head_params, opts.head_lr_mult)
    plan = TrainingPlan(
        model=model,
        train_cases=choice.train_cases,
        n_classes=corr.n_classes,
        compute=Compute(dev, pick_precision(dev, opts.precision), channels_last),
        batches=Batches(patch, opts.batch_size or (4 if dims == 2 else 2), 0.5, aug, opts.seed),
        schedule=schedule,
        stopping=StoppingRule(max_steps=opts.steps),
        validation=Validation((), 0),
        loss=SupervisedLoss(),
        # Built before the clock-sensitive part: the first optimiser of a process imports torch._dynamo.
        optimizer=make_optimizer(model, schedule),
        stage="fine-tune",
    )
    if corr.interactive is not None:
        corr.click_cfg = add_finetune_clicks(plan, meta, corr.interactive, corr.n_classes)
    if dev.type == "cpu":
        plan.hooks.append(ThreadTuner(patch_forward(plan)))
    return plan


@dataclass
class Trained:
    """What training and judging a child produced."""

    state: LoopState
    verdict: Verdict
    fit: ParentFit


def train_and_judge(
    plan: TrainingPlan,
    acceptance: Acceptance,
    parent_model: SegModel,
    setup: FinetuneSetup,
    t0: float,
    cancel: CancelToken | None,
) -> Generator[Progress, None, Trained]:
    """Tune threads, score the parent, start fresh if it does not fit the corrections, train until the
    deadline that leaves room for scoring the child and saving it (the whole fine-tune, begun at ``t0``,
    ends within the budget), round the child to its file's precision and score it. The process's
    thread count is restored however this ends."""
    tuner = next((h for h in plan.hooks if isinstance(h, ThreadTuner)), None)
    opts, meta, corr = setup.opts, setup.meta, setup.corr
    try:
        if tuner is not None:
            tuner.probe()
        yield from acceptance.score_parent(parent_model, cancel)
        if corr.interactive is not None:  # it segments whatever is clicked: it knows every class
            fit = ParentFit(True, "", ["any clicked structure"], acceptance.before.get("dice"))
        else:
            fit = assess_parent_fit(setup.parent.name, corr.names, len(meta.classes), corr.renamed, corr.present,
                                    acceptance.before["per_class"], parent_is_untrained(meta))  # fmt: skip
        if not fit.fits:
            start_fresh(plan, meta, fit, opts.lr if opts.lr_explicit else LR_FROM_SCRATCH, opts.seed)
        plan.stopping.deadline = t0 + opts.budget_s - acceptance.reserve_s()
        if time.perf_counter() >= plan.stopping.deadline:
            raise TrainingError(
                f"the {opts.budget_s:g} s budget was spent before training could start (loading the data and "
                f"scoring the parent took {time.perf_counter() - t0:.1f} s on this machine now); give a longer budget"
            )
        state = yield from run_plan(plan, cancel)
        if state.stop_reason == "cancelled" or (cancel is not None and cancel.cancelled):
            raise Cancelled("fine-tuning cancelled; nothing was written")
        child = unwrap(plan.model)
        setup.dtype = round_weights(child, setup.dtype)
        verdict = yield from acceptance.score_child(child, state.step, cancel)
        if cancel is not None:
            cancel.raise_if_cancelled()
    finally:
        if tuner is not None:
            tuner.restore()
    return Trained(state, verdict, fit)


def prepare_parent(parent_model: SegModel, child: SegModel, plan: TrainingPlan) -> SegModel:
    """The parent on the plan's device and layout, to be scored (it is the child itself when no head grew)."""
    if parent_model is child:
        return child
    parent_model = parent_model.to(plan.compute.device)
    if plan.compute.channels_last:
        parent_model = parent_model.to(memory_format=memory_format(parent_model.spatial_dims, True))
    return parent_model


def finetune_provenance(plan: TrainingPlan, setup: FinetuneSetup, trained: Trained) -> dict[str, Any]:
    """What the child records: its parent, how it started, both scores and the verdict, its data, how it trained."""
    meta, corr, choice, v = setup.meta, setup.corr, setup.choice, trained.verdict
    prov: dict[str, Any] = {
        "kind": "finetune",
        "parent": setup.parent_hash,
        "parent_name": setup.parent.name,
        "parent_provenance": {
            k: meta.provenance.get(k) for k in ("kind", "parent", "date") if k in meta.provenance
        },
        "start": trained.fit.record(),
        "dice_before": finite_or_none(v.dice_parent),
        "dice_after": finite_or_none(v.dice_child),
        "dice_per_class_before": named_scores(v.per_class_parent, corr.names),
        "dice_per_class_after": named_scores(v.per_class_child, corr.names),
        "dice_on": choice.dice_on,
        "acceptance": v.record(),
        "data": training_data_record([c for c, _ in corr.cases], corr.label_map),
        "new_classes": corr.new_classes,
        "settings": {**finetune_settings(plan, setup.opts, v.steps), "stored_as": str(setup.dtype or "fp32")},
    }
    if corr.clicks.given:
        prov["clicks"] = corr.clicks.record()
    if corr.click_cfg is not None:
        prov["settings"]["interactive"] = dataclasses.asdict(corr.click_cfg)
    if setup.store is not None:
        prov["replay"] = {"folder": str(setup.store.folder), "replayed": corr.replayed}
    if choice.stored_split is not None:
        prov["split"] = {"val": choice.stored_split.val, "train": choice.stored_split.train}
    elif meta.provenance.get("split"):
        prov["split"] = meta.provenance["split"]
    return prov


def finetune_settings(plan: TrainingPlan, opts: FinetuneOptions, steps: int) -> dict[str, Any]:
    aug, dev = plan.batches.augment, plan.compute.device
    return {
        "budget_s": opts.budget_s,
        "steps": steps,
        "lr": plan.schedule.lr,
        "head_lr_mult": opts.head_lr_mult,
        "freeze_encoder": opts.freeze_encoder,
        "batch_size": plan.batches.batch_size,
        "patch_size": list(plan.batches.patch),
        "precision": str(plan.compute.autocast or "fp32"),
        "flip_axes": aug.flip_axes,
        "augment": {k: v for k, v in dataclasses.asdict(aug).items() if k not in ("flip_axes", "extra")},
        "seed": opts.seed,
        "device": str(dev),
        "hardware": describe_hardware(dev),
        "threads": thread_record(plan),
    }


def thread_record(plan: TrainingPlan) -> dict[str, Any]:
    """What the thread tuner started with, kept and measured ({} when it did not run)."""
    for hook in plan.hooks:
        if isinstance(hook, ThreadTuner):
            return hook.record()
    return {}


def save_child(dest: Path, plan: TrainingPlan, setup: FinetuneSetup, trained: Trained) -> Path | None:
    """Write the child (in its parent's precision) and, when new cases were split, its split beside it."""
    from .. import checkpoint as ckpt

    meta, corr = setup.meta, setup.corr
    classes = (
        list(meta.classes)
        if corr.interactive is not None
        else child_classes(meta, corr.names, corr.value_to_index)
    )
    card = child_card(meta, trained.verdict, trained.fit)
    line = click_card_line(corr.clicks, corr.click_cfg)
    if line:
        card["clicks"] = line
    arch_args = trained.fit.fresh_arch_args if trained.fit.start == "fresh" else meta.arch_args
    model = unwrap(plan.model)
    unfreeze(model)
    model = model.to("cpu").to(memory_format=torch.contiguous_format)
    child = child_meta(meta, classes, finetune_provenance(plan, setup, trained), card, arch_args)
    scans = [(img, v) for _, _, img, v in corr.new_pairs if img.ndim == meta.spatial_dims]
    child.domain = child_domain(meta, child, scans, trained.fit.start == "fresh")
    ckpt.save(dest, model, child, dtype=setup.dtype)
    if setup.choice.stored_split is None:
        return None
    split_path = dest.with_name(dest.name[: -len(ckpt.SUFFIX)] + ".split.json")
    setup.choice.stored_split.write(split_path)
    return split_path


def finetune_result(
    dest: Path, plan: TrainingPlan, setup: FinetuneSetup, trained: Trained, split_path: Path | None
) -> FinetuneResult:
    v, corr, choice = trained.verdict, setup.corr, setup.choice
    return FinetuneResult(
        path=dest,
        parent=setup.parent,
        dice_before=v.dice_parent,
        dice_after=v.dice_child,
        per_class_before=named_scores(v.per_class_parent, corr.names),
        per_class_after=named_scores(v.per_class_child, corr.names),
        dice_on=choice.dice_on,
        val_cases=[c.name for c in choice.val_cases],
        train_cases=[c.name for c in choice.train_cases],
        new_classes=corr.new_classes,
        steps=v.steps,
        split_path=split_path,
        stop_reason=trained.state.stop_reason,
        lr=plan.schedule.lr,
        better=v.better,
        not_better_reason=v.reason,
        threads=thread_record(plan),
        start=trained.fit.record(),
        replayed=list(corr.replayed),
        interactive=corr.interactive is not None,
    )


def log_result(r: FinetuneResult, v: Verdict) -> None:
    log.info("fine-tuned %s -> %s in %.1f s (%d steps): Dice %.4f -> %.4f on %s%s", r.parent.name, r.path.name,
             r.seconds, v.steps, v.dice_parent, v.dice_child, v.scored_on,
             "" if v.better else f"; not offered: {v.reason}")  # fmt: skip


def named_scores(per_class: Mapping[int, float], names: Sequence[str]) -> dict[str, float | None]:
    """Per-class Dice keyed by class name, JSON-ready (None for NaN)."""
    return {names[c]: finite_or_none(v) for c, v in per_class.items()}


def eval_view(case: Case, patch: Sequence[int]) -> Case:
    """The part of a case worth evaluating within a budget.

    Partial labels: the bounding box of the labelled voxels (nothing else can count). Full labels on a
    volume much larger than a patch: the foreground's box (a CT of 500 slices is not run twice through
    the network just to score a fine-tune). Small cases are evaluated whole. Either box grows by half a
    patch on each side: the network needs the context it was trained with, and only labelled voxels
    are scored anyway (three corrected slices cut out alone scored a fitting parent Dice 0.000).
    """
    t = case.target
    if case.labelled_voxels is not None:
        mask = t != IGNORE_INDEX
    elif t.numel() > 4 * math.prod(patch):
        mask = t > 0
    else:
        return case
    margin = [p // 2 for p in patch]
    if not bool(mask.any()):
        return case
    sl = []
    for ax in range(t.ndim):
        other = tuple(i for i in range(t.ndim) if i != ax)
        idx = torch.nonzero(mask.any(dim=other) if other else mask).reshape(-1)
        lo = max(0, int(idx.min()) - margin[ax])
        hi = min(t.shape[ax], int(idx.max()) + 1 + margin[ax])
        sl.append(slice(lo, hi))
    view = tuple(sl)
    return Case(case.name, case.hash, case.image[(slice(None), *view)], t[view], case.spacing_zyx)
