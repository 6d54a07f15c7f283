"""One-click fine-tuning: a checkpoint + corrected labels -> a NEW checkpoint that names its parent.

Called from the GUI's worker thread with in-memory Volumes (labels may hold IGNORE_INDEX, or another
``ignore_value``, where the user did not correct anything) and from ``seg-studio finetune`` with
folders. Guarantees:

- the parent file is never written (``out`` may not be the parent), and cancelling writes nothing:
  the only write is ``checkpoint.save`` at the very end, which is atomic;
- the whole call, validation and saving included, ends within ``budget_s`` (default 50 s for 2D and
  100 s for 3D, inside the product promise of 60 s / 120 s on a 2-core CPU): the training deadline
  is the budget minus the measured cost of one evaluation and a save;
- a label value the parent does not know becomes a new class: the output head grows (old rows kept,
  new rows freshly initialised and trained at a higher learning rate) and the class takes the name
  the user gave it;
- Dice before and after is measured on the same held-out cases: the parent's stored validation
  split when the pairs include its cases, else a split of the new cases fixed by image hash (written
  beside ``out`` and into its provenance, so the next fine-tune reuses it), else - with one or two
  pairs, as from the GUI - on the corrected pairs themselves, which the result says.
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

from ..errors import Cancelled, TrainingError
from ..inference.devices import describe_hardware
from ..models import SegModel, create_model
from ..progress import CancelToken, Progress
from ..volume import Volume
from .augment import AugmentConfig
from .checks import check_has_foreground, check_label_values
from .data import (
    IGNORE_INDEX,
    Case,
    Split,
    apply_label_map,
    fit_patch,
    make_case,
    make_or_extend_split,
    pairs_from_list,
    parse_label_map,
    read_pair,
    slices_as_2d,
    symmetric_axes,
)
from .distributed import pick_device, pick_precision
from .loop import (
    LoopSettings,
    LoopState,
    default_channels_last,
    make_optimizer,
    memory_format,
    train_loop,
    validate,
)

log = logging.getLogger(__name__)

#: Default total budgets (seconds), evaluation and saving included.
DEFAULT_BUDGET_2D = 50.0
DEFAULT_BUDGET_3D = 100.0
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


def default_budget(spatial_dims: int) -> float:
    return DEFAULT_BUDGET_3D if spatial_dims == 3 else DEFAULT_BUDGET_2D


def _child_card(meta: Any) -> dict[str, Any]:
    """The parent's card for its child, minus what is no longer true: a fine-tuned child is trained."""
    card = {k: v for k, v in (meta.card or {}).items() if k != "untrained"}
    if (meta.card or {}).get("untrained"):
        card["title"] = f"{meta.architecture} trained by fine-tuning from random weights"
    return card


def parent_is_untrained(meta: Any) -> bool:
    """True for a parent with random weights: the GUI's untrained variant (card ``untrained``), or a
    checkpoint whose provenance records no training, fine-tune or import."""
    if (meta.card or {}).get("untrained"):
        return True
    prov = meta.provenance or {}
    return not any(k in prov for k in ("kind", "parent", "imported_from", "metrics", "data"))


def default_lr(meta: Any) -> float:
    return LR_FROM_SCRATCH if parent_is_untrained(meta) else LR_TRAINED


def grow_head(
    model: SegModel, architecture: str, arch_args: Mapping[str, Any], new_out: int
) -> tuple[SegModel, list[str]]:
    """The same network with ``new_out`` output classes; every weight is kept, the extra output rows of
    the head(s) are fresh. Works for any registered variant: tensors that differ only in the class axis
    are copied row by row. Returns the model and the names of the grown parameters."""
    grown = create_model(architecture, model.spatial_dims, model.in_channels, new_out, **dict(arch_args))
    old_sd, new_sd = model.state_dict(), grown.state_dict()
    if old_sd.keys() != new_sd.keys():
        raise TrainingError(
            f"cannot grow the output of {architecture!r}: its layers change with the class count"
        )
    changed = []
    old_out = model.out_channels
    with torch.no_grad():
        for k, new in new_sd.items():
            old = old_sd[k]
            if old.shape == new.shape:
                new.copy_(old)
                continue
            diff = [i for i, (a, b) in enumerate(zip(old.shape, new.shape, strict=True)) if a != b]
            if (
                len(old.shape) != len(new.shape)
                or len(diff) != 1
                or (old.shape[diff[0]], new.shape[diff[0]]) != (old_out, new_out)
            ):
                raise TrainingError(
                    f"cannot grow the output of {architecture!r}: {k} changes shape unexpectedly"
                )
            new.narrow(diff[0], 0, old_out).copy_(old)
            if k.endswith("bias"):
                # New classes start unlikely (below background), so the first predictions do not change.
                new.narrow(diff[0], old_out, new_out - old_out).fill_(float(old.narrow(0, 0, 1).item()) - 2.0)
            changed.append(k.rsplit(".", 1)[0])
    grown.load_state_dict(new_sd)
    names = [n for n, _ in grown.named_parameters() if n.rsplit(".", 1)[0] in changed]
    return grown, names


def encoder_parameter_names(model: SegModel) -> list[str]:
    """Parameters of the contracting path: a variant may say (``encoder_modules()``), else by name."""
    if hasattr(model, "encoder_modules"):
        mods = list(model.encoder_modules())  # type: ignore[operator]
        ids = {id(p) for m in mods for p in m.parameters()}
        return [n for n, p in model.named_parameters() if id(p) in ids]
    prefixes = (
        "encoder",
        "enc",
        "down",
        "inc",
        "conv0_0",
        "conv1_0",
        "conv2_0",
        "conv3_0",
        "conv4_0",
        "bottleneck",
    )
    return [n for n, _ in model.named_parameters() if n.split(".")[0].startswith(prefixes)]


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
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, FinetuneResult]:
    """Fine-tune ``checkpoint`` on ``pairs`` of (image, labels) Volumes or paths; write ``out``.

    ``class_names`` names label values the parent lacks (value -> name); ``ignore_value`` marks voxels
    to leave out (IGNORE_INDEX = -1 always is). ``steps`` caps the steps (the budget still applies).
    """
    from .. import checkpoint as ckpt

    t0 = time.perf_counter()
    parent, out = Path(checkpoint), Path(out)
    if out.suffix != ckpt.SUFFIX:
        raise TrainingError(f"the fine-tuned model is a {ckpt.SUFFIX} file; got {out.name}")
    if not parent.exists():
        raise TrainingError(f"{parent}: no such checkpoint")
    if out.resolve() == parent.resolve():
        raise TrainingError(
            "the fine-tuned model must go to a new file; the parent checkpoint is never overwritten"
        )
    if not out.parent.is_dir():
        raise TrainingError(f"{out.parent}: no such folder for the fine-tuned model")
    yield Progress(0, 1, "prepare", f"loading {parent.name}")
    parent_hash = ckpt.file_hash(parent)
    parent_model, meta = ckpt.load(parent, device="cpu")
    dims = meta.spatial_dims
    budget = float(budget_s) if budget_s is not None else default_budget(dims)
    if budget <= 0:
        raise TrainingError(f"the time budget must be positive, got {budget}")
    lmap = parse_label_map(label_map)
    if lr is None:
        lr = default_lr(meta)
    elif lr <= 0:
        raise TrainingError(f"the learning rate must be positive, got {lr}")

    # --- labels -> class indices, new classes appended ---
    value_to_index = {c.value: i for i, c in enumerate(meta.classes)}
    names = [c.name for c in meta.classes]
    srcs = pairs_from_list(pairs)
    vsrcs = pairs_from_list(val_pairs) if val_pairs is not None else []
    raw: list[tuple[str, Volume, np.ndarray, bool]] = []
    for src, is_val in [(s, False) for s in srcs] + [(s, True) for s in vsrcs]:
        if cancel is not None:
            cancel.raise_if_cancelled()
        img, lab = read_pair(src)
        values = apply_label_map(lab.array, lmap, ignore_value)
        check_label_values(values, src.name)
        if img.ndim != dims:
            if dims == 2 and img.ndim == 3:
                for k, (im2, v2) in enumerate(slices_as_2d(img, values)):
                    raw.append((f"{src.name}[z{k}]", im2, v2, is_val))
                continue
            raise TrainingError(f"{src.name}: a {img.ndim}D image cannot fine-tune a {dims}D model")
        if not np.any(values != IGNORE_INDEX):
            raise TrainingError(f"{src.name}: every voxel is marked ignore; correct some of the mask first")
        raw.append((src.name, img, values, is_val))
        for v in np.unique(values):
            v = int(v)
            if v != IGNORE_INDEX and v not in value_to_index:
                nm = (class_names or {}).get(v) or (lab.labels[v].name if v in lab.labels else f"class_{v}")
                value_to_index[v] = len(names)
                names.append(nm)
    if not raw:
        raise TrainingError("no labelled voxels in the pairs; correct some of the mask first")
    check_has_foreground((name, v) for name, _, v, _ in raw)
    new_classes = names[len(meta.classes) :]
    n_classes = len(names)

    model: SegModel = parent_model
    head_params: list[str] = []
    if new_classes:
        if meta.out_channels == 1:
            raise TrainingError(
                "a single-logit binary model cannot take new classes; train a multi-class model"
            )
        model, head_params = grow_head(parent_model, meta.architecture, meta.arch_args, n_classes)
        log.info(
            "output grows from %d to %d classes: %s", meta.out_channels, n_classes, ", ".join(new_classes)
        )

    cases: list[tuple[Case, bool]] = []
    for name, img, values, is_val in raw:
        cases.append(
            (make_case(name, img, values, value_to_index, meta.normalization, meta.in_channels), is_val)
        )

    # --- which cases measure Dice ---
    split_path: Path | None = None
    parent_split = meta.provenance.get("split") or {}
    existing: Split | None = None
    if split is not None:
        existing = Split.read(Path(split))
    elif parent_split.get("val") or parent_split.get("train"):
        existing = Split(list(parent_split.get("val", [])), list(parent_split.get("train", [])))
    explicit_val = [c for c, v in cases if v]
    pool = [c for c, v in cases if not v]
    stored_split: Split | None = None
    if explicit_val:
        train_cases, val_cases, dice_on = pool, explicit_val, "validation"
    else:
        known = set(existing.val) | set(existing.train) if existing else set()
        unknown = [c for c in pool if c.hash not in known]
        fresh, _ = make_or_extend_split(
            [c.hash for c in unknown], [c.name for c in unknown], val_fraction, None
        )
        val_hashes = set(existing.val if existing else []) | set(fresh.val)
        stored_split = Split(
            sorted(val_hashes),
            sorted((set(existing.train) if existing else set()) | set(fresh.train)),
            {**(existing.names if existing else {}), **fresh.names},
            fresh.created,
        )
        val_cases = [c for c in pool if c.hash in val_hashes]
        train_cases = [c for c in pool if c.hash not in val_hashes]
        dice_on = "validation"
        if not val_cases or not train_cases:
            # One or two corrected scans: nothing can be held out; measure on what was corrected.
            train_cases, val_cases, dice_on = pool, pool, "training pairs"
            stored_split = None
    if not train_cases:
        raise TrainingError("no training cases: every pair is a validation case")

    dev = pick_device(device)
    dtype = pick_precision(dev, precision)
    channels_last = default_channels_last(dims, dev)
    patch = (
        tuple(patch_size)
        if patch_size
        else tuple(meta.patch_size or ((256, 256) if dims == 2 else (64, 64, 64)))
    )
    if dims == 3 and dev.type == "cpu" and patch_size is None:
        # A CPU does a 64^3 step in about a second; 96^3 would leave a budget of only a few dozen steps.
        patch = tuple(min(p, 64) for p in patch)
    patch = fit_patch(patch, train_cases)
    eval_cases = [eval_view(c, patch) for c in val_cases]
    model = model.to(dev)
    parent_model = parent_model.to(dev)
    if channels_last:
        model = model.to(memory_format=memory_format(dims, True))
        parent_model = parent_model.to(memory_format=memory_format(dims, True))

    if freeze_encoder:
        frozen = set(encoder_parameter_names(model))
        if not frozen:
            log.warning("%s does not name its encoder; training every layer", meta.architecture)
        for n, p in model.named_parameters():
            p.requires_grad_(n not in frozen)
    aug = AugmentConfig.from_dict({**FINETUNE_AUGMENT, **(dict(augment) if augment else {})})
    if aug.flip_axes is None:
        aug.flip_axes = symmetric_axes(train_cases)
    settings = LoopSettings(
        patch=patch,
        batch_size=batch_size or (4 if dims == 2 else 2),
        lr=lr,
        weight_decay=1e-4,
        max_steps=steps,
        time_budget_s=None,
        warmup_steps=10,
        min_lr_fraction=0.05,
        val_every=0,
        fg_prob=0.5,
        augment=aug,
        autocast=dtype,
        channels_last=channels_last,
        seed=seed,
        head_params=head_params,
        head_lr_mult=head_lr_mult,
    )
    # Built before the clock-sensitive part: the first optimiser of a process imports torch._dynamo.
    opt = make_optimizer(model, settings)

    # --- Dice before (the parent; a class it lacks scores 0 where present) ---
    t_eval = time.perf_counter()
    yield Progress(0, 1, "evaluate", f"measuring the parent on {len(val_cases)} case(s)")
    before = validate(parent_model, eval_cases, n_classes, patch, dev, dtype, channels_last, cancel)
    eval_s = time.perf_counter() - t_eval
    if parent_model is not model:
        del parent_model

    # --- train until the deadline that leaves room for the last evaluation and the save ---
    save_reserve = 1.0 + 1.5 * eval_s
    deadline = t0 + budget - save_reserve
    settings.time_budget_s = max(0.5, deadline - time.perf_counter())
    state: LoopState = yield from train_loop(
        model,
        train_cases,
        [],
        n_classes,
        settings,
        dev,
        None,
        cancel,
        None,
        None,
        opt,
        deadline,
        stage="fine-tune",
    )
    if state.stop_reason == "cancelled" or (cancel is not None and cancel.cancelled):
        raise Cancelled("fine-tuning cancelled; nothing was written")

    # --- Dice after, save ---
    yield Progress(
        state.step, state.step, "evaluate", f"measuring the fine-tuned model on {len(val_cases)} case(s)"
    )
    after = validate(model, eval_cases, n_classes, patch, dev, dtype, channels_last, cancel)
    if cancel is not None:
        cancel.raise_if_cancelled()
    for p in model.parameters():
        p.requires_grad_(True)
    model = model.to("cpu").to(memory_format=torch.contiguous_format)
    old_colors = {i: c.color for i, c in enumerate(meta.classes)}
    classes = [
        ckpt.ClassInfo(
            meta.classes[i].value if i < len(meta.classes) else _value_of(value_to_index, i),
            names[i],
            old_colors.get(i) or ckpt.default_classes(n_classes)[i].color,
        )
        for i in range(n_classes)
    ]
    pc_before = {names[c]: _num(v) for c, v in before["per_class"].items()}
    pc_after = {names[c]: _num(v) for c, v in after["per_class"].items()}
    prov = {
        "kind": "finetune",
        "parent": parent_hash,
        "parent_name": parent.name,
        "parent_provenance": {
            k: meta.provenance.get(k) for k in ("kind", "parent", "date") if k in meta.provenance
        },
        "dice_before": _num(before["dice"]),
        "dice_after": _num(after["dice"]),
        "dice_per_class_before": pc_before,
        "dice_per_class_after": pc_after,
        "dice_on": dice_on,
        "data": {
            "cases": {c.hash: c.name for c, _ in cases},
            "label_map": {str(k): v for k, v in lmap.items()},
        },
        "new_classes": new_classes,
        "settings": {
            "budget_s": budget,
            "steps": state.step,
            "lr": lr,
            "head_lr_mult": head_lr_mult,
            "freeze_encoder": freeze_encoder,
            "batch_size": settings.batch_size,
            "patch_size": list(patch),
            "precision": str(dtype or "fp32"),
            "flip_axes": aug.flip_axes,
            "augment": {k: v for k, v in dataclasses.asdict(aug).items() if k not in ("flip_axes", "extra")},
            "seed": seed,
            "device": str(dev),
            "hardware": describe_hardware(dev),
        },
    }
    if stored_split is not None:
        prov["split"] = {"val": stored_split.val, "train": stored_split.train}
    elif meta.provenance.get("split"):
        prov["split"] = meta.provenance["split"]
    new = ckpt.ModelMeta(
        architecture=meta.architecture,
        arch_args=dict(meta.arch_args),
        spatial_dims=dims,
        in_channels=meta.in_channels,
        out_channels=n_classes,
        channel_names=list(meta.channel_names),
        classes=classes,
        normalization=dict(meta.normalization),
        spacing=meta.spacing,
        patch_size=tuple(meta.patch_size),
        provenance=prov,
        card=_child_card(meta),
    )
    if stored_split is not None:
        split_path = out.with_name(out.name[: -len(ckpt.SUFFIX)] + ".split.json")
    ckpt.save(out, model, new)
    if split_path is not None and stored_split is not None:
        stored_split.write(split_path)
    seconds = time.perf_counter() - t0
    log.info(
        "fine-tuned %s -> %s in %.1f s (%d steps): Dice %.4f -> %.4f on %s",
        parent.name,
        out.name,
        seconds,
        state.step,
        before["dice"],
        after["dice"],
        dice_on,
    )
    yield Progress(
        1,
        1,
        "done",
        f"saved {out.name}",
        0.0,
        {
            "dice_before": before["dice"],
            "dice_after": after["dice"],
            "dice": after["dice"],
            "step": state.step,
        },
    )
    return FinetuneResult(
        path=out,
        parent=parent,
        dice_before=float(before["dice"]),
        dice_after=float(after["dice"]),
        per_class_before=pc_before,
        per_class_after=pc_after,
        dice_on=dice_on,
        val_cases=[c.name for c in val_cases],
        train_cases=[c.name for c in train_cases],
        new_classes=new_classes,
        steps=state.step,
        seconds=seconds,
        split_path=split_path,
        stop_reason=state.stop_reason,
        lr=lr,
    )


def eval_view(case: Case, patch: Sequence[int]) -> Case:
    """The part of a case worth evaluating within a budget.

    Partial labels: the bounding box of the labelled voxels (nothing else can count). Full labels on a
    volume much larger than a patch: the foreground's box grown by half a patch on each side, so a
    CT of 500 slices is not run twice through the network just to score a fine-tune. Small cases are
    evaluated whole.
    """
    t = case.target
    if case.labelled_voxels is not None:
        mask = t != IGNORE_INDEX
        margin = [0] * t.ndim
    elif t.numel() > 4 * math.prod(patch):
        mask = t > 0
        margin = [p // 2 for p in patch]
    else:
        return case
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


def _value_of(value_to_index: Mapping[int, int], index: int) -> int:
    for v, i in value_to_index.items():
        if i == index:
            return v
    return index


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if not math.isfinite(f) else round(f, 6)
