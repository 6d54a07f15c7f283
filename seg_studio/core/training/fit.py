"""``iter_fit(config)``: train a registered variant from pairs to ``best``/``last`` ``.segmodel`` files.

A run folder holds ``split.json`` (the fixed validation split, by image hash), ``best.segmodel``,
``last.segmodel``, ``history.json`` and ``resume.pt`` (optimiser state, tensors and plain containers
only, read back with ``torch.load(weights_only=True)``). Settings come from a recipe file (JSON or
TOML; ``resources/recipes/``) and/or keyword overrides; the CLI maps its flags onto the same fields.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import tomllib
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled, TrainingError
from ..inference.devices import describe_hardware
from ..interactive.guidance import GuidanceSpec
from ..models import create_model, get_spec
from ..progress import CancelToken, Progress
from .adversarial import AdversarialConfig, AdversarialStep
from .augment import AugmentConfig
from .checks import check_has_foreground, check_label_values
from .clicksim import ClickSimulator, ClickTraining, click_validation, from_automatic, median_spacing
from .data import (
    Case,
    DatasetInfo,
    PairSource,
    Split,
    apply_label_map,
    default_patch,
    fit_patch,
    make_case,
    make_or_extend_split,
    pairs_from_dataset_json,
    pairs_from_folders,
    pairs_from_list,
    parse_label_map,
    read_pair,
    symmetric_axes,
)
from .distributed import (
    DistInfo,
    all_gather_floats,
    barrier,
    parameter_checksum,
    pick_precision,
    setup,
    teardown,
)
from .evaluation import default_channels_last, finite_or_none, memory_format
from .loop import make_optimizer, run_plan
from .losses import SupervisedLoss
from .plan import Batches, Compute, LoopHook, LoopState, Schedule, StoppingRule, TrainingPlan, Validation
from .records import training_data_record

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Every setting of a training run (a recipe file holds any subset of these keys)."""

    # data: folders, an MSD dataset.json, or explicit pairs
    images: str | None = None
    labels: str | None = None
    dataset_json: str | None = None
    pairs: list[Any] | None = None
    label_map: str | dict[str, Any] | None = None
    ignore_value: int | None = None
    class_names: list[str] | None = None
    normalization: dict[str, Any] = field(default_factory=lambda: {"mode": "zscore"})
    # model
    architecture: str = "unet"
    preset: str | None = None
    arch_args: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # start from these weights (same architecture and classes)
    # run
    out: str = "runs/train"
    patch_size: list[int] | None = None
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_steps: int | None = 2000
    time_budget_s: float | None = None
    val_every: int = 100
    val_fraction: float = 0.2
    split: str | None = None  # a split.json to reuse (default: <out>/split.json)
    early_stop_patience: int | None = 10
    fg_prob: float = 0.5
    flip: str = "auto"  # auto (symmetric axes only), all, none
    augment: dict[str, Any] = field(default_factory=dict)
    deep_supervision: bool | None = None
    ds_decay: float = 0.5
    adversarial: bool = False
    adv_weight: float = 0.05
    adv_lr: float = 2e-4
    precision: str = "auto"
    channels_last: bool | None = None
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    #: train an interactive (click) model: a table of ``clicksim.ClickTraining`` settings
    interactive: dict[str, Any] | None = None

    @classmethod
    def from_recipe(cls, path: str | Path, **overrides: Any) -> FitConfig:
        """Read a JSON or TOML recipe; ``overrides`` (e.g. CLI flags given) win over the file."""
        data = load_recipe(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FitConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            import difflib

            hint = difflib.get_close_matches(unknown[0], names, n=1)
            raise TrainingError(
                f"unknown training setting {unknown[0]!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            )
        return cls(**dict(d))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pairs"] = None if self.pairs is None else len(self.pairs)
        return d


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe as a dict: ``.json`` or ``.toml`` (stdlib only); a ``[train]`` table is unwrapped."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TrainingError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise TrainingError(f"{path}: YAML recipes need PyYAML; use JSON or TOML") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise TrainingError(f"{path}: not a valid recipe ({exc})") from None
    if not isinstance(data, dict):
        raise TrainingError(f"{path}: a recipe is a table of settings")
    if isinstance(data.get("train"), dict):
        data = data["train"]
    # Relative data paths in a recipe are relative to the recipe file.
    for key in ("images", "labels", "dataset_json"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            cand = path.parent / data[key]
            if cand.exists():
                data[key] = str(cand)
    return dict(data)


@dataclass
class FitResult:
    best_path: Path | None
    last_path: Path | None
    best_dice: float
    steps: int
    seconds: float
    stop_reason: str
    history: list[dict[str, Any]]
    split_path: Path | None
    val_cases: list[str]
    train_cases: list[str]


# --- data assembly shared with fine-tuning --------------------------------------------------------


def gather_sources(cfg: FitConfig) -> tuple[list[PairSource], DatasetInfo]:
    if cfg.pairs:
        return pairs_from_list(cfg.pairs), DatasetInfo()
    if cfg.dataset_json:
        return pairs_from_dataset_json(Path(cfg.dataset_json))
    if cfg.images and cfg.labels:
        return pairs_from_folders(Path(cfg.images), Path(cfg.labels)), DatasetInfo()
    raise TrainingError(
        "no training data: give --images and --labels folders, --dataset-json, or a recipe with them"
    )


def resolve_split(
    hashes: list[str], names: list[str], split_path: Path, val_fraction: float, write: bool
) -> Split:
    existing = Split.read(split_path) if split_path.exists() else None
    split, changed = make_or_extend_split(hashes, names, val_fraction, existing)
    if changed and write:
        split_path.parent.mkdir(parents=True, exist_ok=True)
        split.write(split_path)
    if existing is not None:
        log.info("reusing the validation split in %s (%d validation cases)", split_path, len(split.val))
    return split


def _arch_args(cfg: FitConfig) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if cfg.preset:
        spec = get_spec(cfg.architecture)
        if cfg.preset not in spec.presets:
            raise TrainingError(
                f"model {cfg.architecture!r} has no preset {cfg.preset!r}; presets: {sorted(spec.presets)}"
            )
        args.update(spec.presets[cfg.preset])
    args.update(cfg.arch_args or {})
    return args


def iter_fit(
    config: FitConfig | Mapping[str, Any], cancel: CancelToken | None = None
) -> Generator[Progress, None, FitResult]:
    """Train; yields a Progress per step (loss, lr) and per validation (Dice per class, ETA)."""
    cfg = config if isinstance(config, FitConfig) else FitConfig.from_dict(config)
    info = setup(cfg.device)
    try:
        result = yield from _fit(cfg, info, cancel)
    finally:
        teardown(info)
    return result


def _fit(cfg: FitConfig, info: DistInfo, cancel: CancelToken | None) -> Generator[Progress, None, FitResult]:
    """Read the data, start (or resume) the model, split, build the plan, run it, report."""
    t_start = time.perf_counter()
    out = run_folder(cfg, info)
    torch.manual_seed(cfg.seed)
    data = yield from read_training_data(cfg, cancel)
    start = start_model(cfg, out, data)
    image_channels = start.model.in_channels - (start.spec.guidance_channels if start.spec else 0)
    cases = [
        make_case(name, img, values, data.value_to_index, start.normalization, image_channels)
        for name, img, values in data.loaded
    ]
    split_path = Path(cfg.split) if cfg.split else out / "split.json"
    split = resolve_split(
        [c.hash for c in cases], [c.name for c in cases], split_path, cfg.val_fraction, info.is_main
    )
    val_set = set(split.val)
    train_cases = [c for c in cases if c.hash not in val_set]
    val_cases = [c for c in cases if c.hash in val_set]
    if not train_cases:
        raise TrainingError("every case is in the validation split; add training cases")
    plan = fit_plan(cfg, start.model, train_cases, val_cases, data.n_classes, info)
    if start.spec is not None:
        add_click_training(plan, cfg, start.spec, data.n_classes)
    restore_resume(plan, start.resume_state)
    prov = fit_provenance(cfg, data, start, cases, split, split_path, plan, info)
    saver = RunFolderSaver(out, start.model, plan, fit_meta_writer(start, data, plan, prov, cfg))
    plan.hooks.append(saver)
    state = yield from run_plan(plan, cancel)
    if info.enabled:
        record_ddp_checksums(info, start.model, saver.last_path)
    if state.stop_reason == "cancelled":
        last = saver.last_path
        raise Cancelled(
            f"training cancelled at step {state.step}"
            + (f"; the last checkpoint saved is {last}" if last.exists() else "; nothing was saved")
        )
    if not val_cases and info.is_main and saver.last_path.exists():
        import shutil

        from ..atomic import atomic_write

        # without validation, the last is the best we know (copied atomically: a kill leaves no half file)
        last = saver.last_path
        atomic_write(saver.best_path, lambda tmp: shutil.copyfile(last, tmp))
    if info.is_main and saver.best_path.exists():
        stamp_domain(cfg, saver.best_path, data, cases, set(split.val), info, start.spec is None)
    best, last = saver.best_path, saver.last_path
    return FitResult(
        best if best.exists() else None,
        last if last.exists() else None,
        state.best,
        state.step,
        time.perf_counter() - t_start,
        state.stop_reason,
        state.history,
        split_path,
        [c.name for c in val_cases],
        [c.name for c in train_cases],
    )


def run_folder(cfg: FitConfig, info: DistInfo) -> Path:
    """The run folder (created on rank 0); a ``.segmodel`` path there is a mistake worth naming."""
    from .. import checkpoint

    out = Path(cfg.out)
    if out.suffix == checkpoint.SUFFIX:
        raise TrainingError(f"--out is a run folder (best/last checkpoints go inside), not a file: {out}")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class FitData:
    """The training pairs as read: (name, image, mapped label values), and the class layout."""

    loaded: list[tuple[str, Any, np.ndarray]]
    label_map: dict[int, int]
    spatial_dims: int
    in_channels: int
    n_classes: int
    names: list[str]

    @property
    def value_to_index(self) -> dict[int, int]:
        return {i: i for i in range(self.n_classes)}


def read_training_data(cfg: FitConfig, cancel: CancelToken | None) -> Generator[Progress, None, FitData]:
    """Read every pair, map its labels, and check they form one kind of data with consecutive classes."""
    sources, ds_info = gather_sources(cfg)
    label_map = parse_label_map(cfg.label_map)
    yield Progress(0, len(sources), "load", f"reading {len(sources)} case(s)")
    loaded: list[tuple[str, Any, np.ndarray]] = []
    for i, src in enumerate(sources):
        if cancel is not None:
            cancel.raise_if_cancelled()
        img, lab = read_pair(src)
        loaded.append((src.name, img, apply_label_map(lab.array, label_map, cfg.ignore_value)))
        if not label_map:
            for v, li in lab.labels.items():
                ds_info.labels.setdefault(int(v), li.name)
        yield Progress(i + 1, len(sources), "load", f"read {src.name}")
    for name, _, values in loaded:
        check_label_values(values, name)
    check_has_foreground((name, v) for name, _, v in loaded)
    dims = {img.ndim for _, img, _ in loaded}
    chans = {img.channels for _, img, _ in loaded}
    if len(dims) != 1 or len(chans) != 1:
        raise TrainingError(
            f"cases mix dimensions {sorted(dims)} or channel counts {sorted(chans)}; train on one kind"
        )
    n_classes = count_classes(loaded, cfg.class_names)
    names = _class_names(n_classes, cfg.class_names, ds_info, loaded)
    return FitData(loaded, label_map, dims.pop(), chans.pop(), n_classes, names)


def count_classes(loaded: list[tuple[str, Any, np.ndarray]], class_names: list[str] | None) -> int:
    """Classes = the largest label value + 1; gaps (e.g. 0/255 masks) need a label map or names."""
    max_value = max(int(v.max()) for _, _, v in loaded)
    present = set()
    for _, _, v in loaded:
        present.update(int(x) for x in np.unique(v) if x >= 0)
    missing = [c for c in range(1, max_value + 1) if c not in present]
    if missing and not class_names:
        odd = sorted(c for c in present if c > len(present) - 1)
        raise TrainingError(
            f"label value(s) {odd[:6]} leave classes {missing[0]}..{missing[-1]} empty; map them to consecutive "
            f"classes with --label-map (e.g. {odd[0]}:{missing[0]}) or name every class with --classes"
        )
    return max(2, max_value + 1, len(class_names or []))


@dataclass
class ModelStart:
    """The model a run starts from: fresh from the registry, ``init`` weights, or the run's last (resume)."""

    model: Any  # SegModel
    architecture: str
    arch_args: dict[str, Any]
    normalization: dict[str, Any]
    init_path: Path | None
    resume_state: dict[str, Any] | None
    #: an interactive model's guidance channels (None: an automatic model)
    spec: GuidanceSpec | None = None


def start_model(cfg: FitConfig, out: Path, data: FitData) -> ModelStart:
    """Build the variant, or load ``init``/the run's ``last.segmodel`` (which then decides architecture
    and classes) with the optimiser state of ``resume.pt``."""
    from .. import checkpoint

    resume_state: dict[str, Any] | None = None
    init_path = Path(cfg.init) if cfg.init else None
    if cfg.resume:
        init_path = out / "last.segmodel"
        if not init_path.exists():
            raise TrainingError(
                f"nothing to resume in {out}: no last.segmodel; drop --resume to start afresh"
            )
        rp = out / "resume.pt"
        if rp.exists():
            resume_state = checkpoint.load_resume_state(rp)
    if cfg.interactive is not None:
        return start_interactive(cfg, data, init_path, resume_state)
    if init_path is None:
        arch_args = _arch_args(cfg)
        model = create_model(
            cfg.architecture, data.spatial_dims, data.in_channels, data.n_classes, **arch_args
        )
        return ModelStart(model, cfg.architecture, arch_args, dict(cfg.normalization), None, None)
    model, meta0 = checkpoint.load(init_path)
    n = data.n_classes
    if meta0.out_channels != max(n, 2) and not (meta0.out_channels == 1 and n == 2):
        raise TrainingError(
            f"{init_path.name} has {meta0.out_channels} classes but the labels have {n}; "
            "use 'seg-studio finetune', which grows the output head"
        )
    return ModelStart(
        model, meta0.architecture, dict(meta0.arch_args), dict(meta0.normalization), init_path, resume_state
    )


def start_interactive(
    cfg: FitConfig, data: FitData, init_path: Path | None, resume_state: dict[str, Any] | None
) -> ModelStart:
    """An interactive model: fresh, from an interactive checkpoint (resume), or from an automatic model
    of the same variant (``clicksim.from_automatic``: its weights, zero guidance weights)."""
    from .. import checkpoint

    spec = ClickTraining.from_dict(cfg.interactive).spec(data.in_channels)
    if init_path is None:
        args = _arch_args(cfg)
        model = create_model(
            cfg.architecture,
            data.spatial_dims,
            data.in_channels,
            2,
            guidance_channels=spec.guidance_channels,
            **args,
        )
        return ModelStart(model, cfg.architecture, args, dict(cfg.normalization), None, None, spec)
    model, meta0 = checkpoint.load(init_path)
    if meta0.interactive is None:
        model = from_automatic(model, meta0.architecture, meta0.arch_args, spec)
    elif GuidanceSpec.from_dict(meta0.interactive, meta0.in_channels, init_path.name) != spec:
        raise TrainingError(f"{init_path.name} draws clicks differently from the recipe's interactive table")
    args, norm = dict(meta0.arch_args), dict(meta0.normalization)
    return ModelStart(model, meta0.architecture, args, norm, init_path, resume_state, spec)


def add_click_training(plan: TrainingPlan, cfg: FitConfig, spec: GuidanceSpec, n_classes: int) -> None:
    """Simulated clicks on every batch, and validation after simulated clicks (``clicksim``)."""
    clicks = ClickTraining.from_dict(cfg.interactive)
    c = plan.compute
    spacing = median_spacing(plan.train_cases)
    plan.hooks.insert(0, ClickSimulator(clicks, spec, n_classes, spacing, c.autocast, cfg.seed))
    patch = plan.batches.patch

    def scorer(model: Any, cases: Any, cancel: CancelToken | None) -> dict[str, Any]:
        return click_validation(
            model, cases, clicks, spec, n_classes, patch, c.device, c.autocast, c.channels_last, cancel
        )

    plan.validation.scorer = scorer
    plan.n_classes = 2


def fit_plan(
    cfg: FitConfig, model: Any, train_cases: list[Case], val_cases: list[Case], n_classes: int, info: DistInfo
) -> TrainingPlan:
    """The recipe as a plan: device and precision, patch, flips, schedule, stopping, critic, DDP."""
    device, dims = info.device, model.spatial_dims
    channels_last = (
        cfg.channels_last if cfg.channels_last is not None else default_channels_last(dims, device)
    )
    patch = tuple(cfg.patch_size) if cfg.patch_size else default_patch(dims)
    if len(patch) != dims:
        raise TrainingError(f"patch size {patch} does not match {dims}D data")
    patch = fit_patch(patch, train_cases)
    aug = AugmentConfig.from_dict(cfg.augment)
    if cfg.flip == "none":
        aug.flip_axes = []
    elif cfg.flip == "auto":
        aug.flip_axes = symmetric_axes(train_cases)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=memory_format(dims, True))
    compute = Compute(device, pick_precision(device, cfg.precision), channels_last, info)
    hooks: list[LoopHook] = []
    if cfg.adversarial:
        adv = AdversarialConfig(weight=cfg.adv_weight, lr=cfg.adv_lr)
        hooks.append(AdversarialStep(dims, model.in_channels, n_classes, adv, device))
    train_model: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    schedule = Schedule(lr=cfg.lr, weight_decay=cfg.weight_decay)
    return TrainingPlan(
        model=train_model,
        train_cases=train_cases,
        n_classes=n_classes,
        compute=compute,
        batches=Batches(patch, cfg.batch_size, cfg.fg_prob, aug, cfg.seed),
        schedule=schedule,
        stopping=StoppingRule(cfg.max_steps, cfg.time_budget_s, None, cfg.early_stop_patience),
        validation=Validation(val_cases, cfg.val_every),
        loss=SupervisedLoss(deep_supervision=cfg.deep_supervision, ds_decay=cfg.ds_decay),
        optimizer=make_optimizer(train_model, schedule),
        hooks=hooks,
    )


def restore_resume(plan: TrainingPlan, resume_state: dict[str, Any] | None) -> None:
    """Put a saved ``resume.pt`` (optimiser state, step, best, history) back into the plan."""
    if resume_state is None:
        return
    from .. import checkpoint

    assert plan.optimizer is not None
    checkpoint.restore_optimizer(plan.optimizer, resume_state["optimizer"], "resume.pt")
    st = resume_state["state"]
    plan.state = LoopState(
        int(st["step"]),
        float(st["best"]),
        int(st["best_step"]),
        int(st["bad_validations"]),
        float(st["elapsed_s"]),
        json.loads(st["history"]),
    )
    log.info("resuming at step %d (best Dice %.4f)", plan.state.step, plan.state.best)


def fit_provenance(
    cfg: FitConfig,
    data: FitData,
    start: ModelStart,
    cases: list[Case],
    split: Split,
    split_path: Path,
    plan: TrainingPlan,
    info: DistInfo,
) -> dict[str, Any]:
    """What every checkpoint of the run records about how it was trained (metrics are added per save)."""
    from .. import checkpoint

    source = cfg.dataset_json or cfg.images or "pairs"
    return {
        "kind": "train",
        "parent": checkpoint.file_hash(start.init_path) if start.init_path is not None else None,
        "data": training_data_record(cases, data.label_map, source),
        "split": {"val": split.val, "train": split.train, "file": str(split_path.name)},
        "settings": {
            **cfg.to_json(),
            "patch_size": list(plan.batches.patch),
            "precision": str(plan.compute.autocast or "fp32"),
            "hardware": describe_hardware(plan.compute.device),
            "flip_axes": plan.batches.augment.flip_axes,
            "world_size": info.world_size,
        },
    }


def fit_meta_writer(
    start: ModelStart, data: FitData, plan: TrainingPlan, prov: dict[str, Any], cfg: FitConfig
) -> Callable[[dict[str, Any], LoopState], Any]:
    """A function (validation metrics, loop state) -> the ModelMeta of a checkpoint saved then."""
    from .. import checkpoint

    spec = start.spec
    clicks = ClickTraining.from_dict(cfg.interactive) if spec is not None else None
    classes = checkpoint.default_classes(data.n_classes, data.names)
    channels = [f"ch{i}" for i in range(data.in_channels)]
    if spec is not None and clicks is not None:
        classes = checkpoint.default_classes(2, ["background", clicks.name])
        channels = spec.channel_names()
    n_val, n_train = len(plan.validation.cases), len(plan.train_cases)

    def meta_for(metrics: dict[str, Any], st: LoopState) -> Any:
        per_class = metrics.get("per_class", {})
        record = dict(prov)
        record["metrics"] = {
            "val_dice": finite_or_none(metrics.get("dice")),
            "val_dice_per_class": {data.names[c]: finite_or_none(v) for c, v in per_class.items()},
            "step": st.step,
            "best_val_dice": finite_or_none(st.best),
            "best_step": st.best_step,
            "val_cases": n_val,
            "train_cases": n_train,
        }
        if clicks is not None:
            record["metrics"]["val_clicks"] = clicks.val_clicks
            record["metrics"]["val_dice_first_click"] = finite_or_none(metrics.get("dice_first_click"))
        return checkpoint.new_meta(
            start.model,
            start.architecture,
            start.arch_args,
            classes=classes,
            normalization=start.normalization,
            channel_names=channels,
            patch_size=plan.batches.patch,
            provenance=record,
            interactive=None if spec is None else spec.to_dict(),
        )

    return meta_for


class RunFolderSaver(LoopHook):
    """Writes the run folder after each validation: ``best`` when it improved, ``last``, ``resume.pt``
    and ``history.json`` (rank 0 only; the loop calls it there)."""

    def __init__(
        self, out: Path, model: Any, plan: TrainingPlan, meta_for: Callable[[dict[str, Any], LoopState], Any]
    ) -> None:
        self.out, self.model, self.plan, self.meta_for = out, model, plan, meta_for
        self.best_path, self.last_path = out / "best.segmodel", out / "last.segmodel"

    def on_validated(self, state: LoopState, metrics: dict[str, Any], improved: bool) -> None:
        from .. import checkpoint

        if improved or not self.best_path.exists() and not self.plan.validation.cases:
            checkpoint.save(self.best_path, self.model, self.meta_for(metrics, state))
        checkpoint.save(self.last_path, self.model, self.meta_for(metrics, state))
        assert self.plan.optimizer is not None
        _save_resume(self.out / "resume.pt", self.plan.optimizer, state)
        _write_history(self.out / "history.json", state)


def stamp_domain(
    cfg: FitConfig,
    best_path: Path,
    data: FitData,
    cases: list[Case],
    val_set: set[str],
    info: DistInfo,
    automatic: bool = True,
) -> None:
    """What the model was trained on, into ``best.segmodel`` (``core/domain.py``): the training cases'
    geometry and intensities, and what an automatic model produces on the validation cases (an
    interactive one needs clicks to produce anything, so only its training data is recorded)."""
    from ..domain import stamp_checkpoint

    pairs = list(zip(data.loaded, cases, strict=True))
    train_imgs = [(img, v) for (_, img, v), c in pairs if c.hash not in val_set]
    val_imgs = [img for (_, img, _), c in pairs if c.hash in val_set and automatic]
    stamp_checkpoint(
        best_path,
        train_imgs,
        val_imgs,
        expected_input=f"scans like its training cases ({cfg.images or cfg.dataset_json or 'given pairs'})",
        device=str(info.device),
    )


def record_ddp_checksums(info: DistInfo, model: Any, last_path: Path) -> None:
    """Every rank's parameter checksum into ``last``'s provenance: proof DDP kept the ranks in step."""
    from .. import checkpoint

    sums = all_gather_floats(info, [parameter_checksum(model)])
    if info.is_main:
        meta = checkpoint.read_meta(last_path)
        meta.provenance["ddp"] = {"world_size": info.world_size, "param_checksums": [s[0] for s in sums]}
        checkpoint.save(last_path, model, meta)
    barrier(info)


def _clean(obj: Any) -> Any:
    """JSON without NaN/inf (null instead), keys as strings."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return finite_or_none(obj)
    return obj


def _class_names(
    n: int, given: list[str] | None, ds: DatasetInfo, loaded: list[tuple[str, Any, np.ndarray]]
) -> list[str]:
    if given:
        if len(given) != n:
            raise TrainingError(
                f"{len(given)} class names given but the labels have {n} classes (background included)"
            )
        return list(given)
    out = []
    for i in range(n):
        if i in ds.labels:
            out.append(ds.labels[i])
        else:
            out.append("background" if i == 0 else f"class_{i}")
    return out


def _save_resume(path: Path, opt: torch.optim.Optimizer, st: LoopState) -> None:
    from ..atomic import atomic_write

    state = {
        "optimizer": opt.state_dict(),
        "state": {
            "step": st.step,
            "best": st.best,
            "best_step": st.best_step,
            "bad_validations": st.bad_validations,
            "elapsed_s": st.elapsed_s,
            "history": json.dumps(st.history),
        },
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _write_history(path: Path, st: LoopState) -> None:
    from ..atomic import atomic_write

    text = json.dumps(_clean(st.history), indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))
