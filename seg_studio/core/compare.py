"""``seg-studio compare``: several variants trained and scored on the same data, budget and split.

Every run is an ordinary ``iter_fit`` run (same recipe, same ``split.json``, same step or time
budget, one seed each); the held-back cases are then segmented through the app's own inference
(``core.inference.predict``, so the figures are what a user gets) and scored with ``core.metrics``:
Dice and HD95 per class, parameters, training time and inference time per case. Results go to a
Markdown table, a CSV (one row per variant and seed) and a PNG bar chart of Dice per class drawn with
Pillow (no plotting library needed). A run whose ``result.json`` exists is reused, and a run that
was stopped part-way resumes from its ``resume.pt``, so an interrupted comparison picks up where it
stopped. A comparison meant to run over days also keeps every finished (dataset, variant, seed) in a
results file (``CompareConfig.results``, a JSON to commit): with it a later session, even in a fresh
clone without the run folders, skips what is done and validates on the same held-back cases.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TrainingError
from .progress import CancelToken, Progress

log = logging.getLogger(__name__)

#: Variants that are not trained on their own (an ensemble combines trained checkpoints).
NOT_TRAINABLE = frozenset({"ensemble"})


# --- scoring a checkpoint on held-back cases ---------------------------------------------------------


@dataclass
class EvalResult:
    """Scores of one checkpoint on a list of cases; per-class values are means over cases."""

    dice: dict[str, float]
    hd95_mm: dict[str, float]
    mean_dice: float
    infer_s_per_case: float
    cases: list[dict[str, Any]] = field(default_factory=list)
    device: str = ""

    def to_json(self) -> dict[str, Any]:
        return _clean(asdict(self))


def held_out_pairs(sources: Sequence[Any], split_path: str | Path) -> list[Any]:
    """The ``PairSource``s of ``sources`` whose image hash is in the split's validation list."""
    from .io import read
    from .training.data import Split, image_hash

    split = Split.read(Path(split_path))
    val = set(split.val)
    out = []
    for src in sources:
        img = src.image if not isinstance(src.image, str | Path) else read(src.image)
        if image_hash(img.array) in val:
            out.append(src)
    if not out:
        raise TrainingError(f"{split_path}: none of the given cases is in its validation split")
    return out


def evaluate_checkpoint(
    checkpoint_path: str | Path | Sequence[str | Path],
    pairs: Sequence[Any],
    label_map: str | Mapping[Any, Any] | None = None,
    ignore_value: int | None = None,
    device: str = "auto",
    masks: Mapping[str, np.ndarray] | None = None,
    cancel: CancelToken | None = None,
    tta: bool = False,
) -> EvalResult:
    """Segment every pair's image with the checkpoint (the app's inference path) and score it.

    Several checkpoint paths are scored as one ensemble (the mean of their probabilities), so a
    candidate ensemble is measured exactly as a shipped model is. ``label_map`` maps the truth's
    values to class values, as in training. ``masks`` (case name -> boolean array) restricts scoring
    to a region, e.g. DRIVE's field of view. HD95 uses the truth's spacing (mm). The inference time is
    wall time per case, model already loaded.
    """
    from . import checkpoint, metrics
    from .inference import PredictOptions, predict
    from .models.ensemble import Ensemble
    from .training.data import IGNORE_INDEX, apply_label_map, parse_label_map, read_pair

    if isinstance(checkpoint_path, str | Path):
        model, meta = checkpoint.load(checkpoint_path)
    elif len(checkpoint_path) == 1:
        model, meta = checkpoint.load(checkpoint_path[0])
    else:
        model, meta = Ensemble.from_checkpoints(list(checkpoint_path))
    lmap = parse_label_map(label_map)
    names = {c.value: c.name for c in meta.classes}
    classes = [c.value for c in meta.classes if c.value != 0]
    per_case: list[dict[str, Any]] = []
    seconds: list[float] = []
    used_device = ""
    for src in pairs:
        if cancel is not None:
            cancel.raise_if_cancelled()
        image, labels = read_pair(src)
        truth = apply_label_map(labels.array, lmap, ignore_value)
        t0 = time.perf_counter()
        pred = predict(image, model, meta, PredictOptions(device=device, tta=tta), cancel)
        seconds.append(time.perf_counter() - t0)
        used_device = pred.device
        p = np.asarray(pred.labels.array).astype(np.int64)
        if masks is not None and src.name in masks:
            outside = ~np.asarray(masks[src.name], bool)
            truth = truth.copy()
            truth[outside] = IGNORE_INDEX
        ignore = IGNORE_INDEX if (truth == IGNORE_INDEX).any() else None
        d = metrics.dice(p, truth, classes, ignore)
        h = metrics.hd95(p, truth, image.spacing_zyx, classes, ignore)
        per_case.append(
            {
                "case": src.name,
                "dice": {names[c]: d[c] for c in classes},
                "hd95_mm": {names[c]: h[c] for c in classes},
            }
        )
    dice = {names[c]: metrics.mean_ignoring_nan(r["dice"][names[c]] for r in per_case) for c in classes}
    hd = {names[c]: metrics.mean_ignoring_nan(r["hd95_mm"][names[c]] for r in per_case) for c in classes}
    return EvalResult(
        dice=dice,
        hd95_mm=hd,
        mean_dice=metrics.mean_ignoring_nan(dice.values()),
        infer_s_per_case=float(np.mean(seconds)) if seconds else math.nan,
        cases=per_case,
        device=used_device,
    )


# --- the comparison ----------------------------------------------------------------------------------


@dataclass
class CompareConfig:
    """What to compare: a base recipe (data, patch, batch, lr...) shared by every run, the variants,
    the seeds and one budget (steps and/or seconds per run)."""

    base: dict[str, Any]
    variants: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    max_steps: int | None = None
    time_budget_s: float | None = None
    #: per-variant model arguments on top of the base's ``arch_args`` (e.g. a different width)
    variant_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    out: str = "runs/compare"
    device: str = "auto"
    title: str = ""
    #: a results file shared by sessions (``ResultsFile``); None keeps results in the run folders only
    results: str | None = None
    #: the name of the data set in the results file (default: the recipe's images folder)
    dataset: str = ""

    def fit_config(self, variant: str, seed: int) -> dict[str, Any]:
        d = dict(self.base)
        d["architecture"] = variant
        d["arch_args"] = {**dict(self.base.get("arch_args") or {}), **self.variant_args.get(variant, {})}
        d.pop("preset", None)
        d["seed"] = seed
        d["out"] = str(self.run_dir(variant, seed))
        d["split"] = str(Path(self.out) / "split.json")
        d["device"] = self.device
        d["resume"] = False
        if self.max_steps is not None:
            d["max_steps"] = self.max_steps
        if self.time_budget_s is not None:
            d["time_budget_s"] = self.time_budget_s
        if self.max_steps is None and self.time_budget_s is None and "max_steps" not in d:
            raise TrainingError("give compare a budget: steps (--steps) and/or seconds (--budget)")
        # Every variant gets the whole budget: early stopping would hand them different ones.
        d["early_stop_patience"] = None
        return d

    def run_dir(self, variant: str, seed: int) -> Path:
        return Path(self.out) / variant / f"seed{seed}"

    def dataset_name(self) -> str:
        return self.dataset or str(self.base.get("images") or self.base.get("dataset_json") or "data")


@dataclass
class RunResult:
    variant: str
    seed: int
    parameters: int
    steps: int
    train_s: float
    eval: EvalResult
    checkpoint: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["eval"] = self.eval.to_json()
        return _clean(d)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunResult:
        e = dict(d["eval"])
        ev = EvalResult(
            dice={k: _f(v) for k, v in e["dice"].items()},
            hd95_mm={k: _f(v) for k, v in e["hd95_mm"].items()},
            mean_dice=_f(e["mean_dice"]),
            infer_s_per_case=_f(e["infer_s_per_case"]),
            cases=list(e.get("cases", [])),
            device=str(e.get("device", "")),
        )
        return cls(
            str(d["variant"]),
            int(d["seed"]),
            int(d["parameters"]),
            int(d["steps"]),
            float(d["train_s"]),
            ev,
            str(d["checkpoint"]),
        )


@dataclass
class CompareResult:
    config: CompareConfig
    runs: list[RunResult]
    val_cases: list[str]
    failed: dict[str, str] = field(default_factory=dict)

    def classes(self) -> list[str]:
        names: list[str] = []
        for r in self.runs:
            for k in r.eval.dice:
                if k not in names:
                    names.append(k)
        return names

    def summary(self) -> list[dict[str, Any]]:
        """One row per variant: mean (and, over several seeds, sample standard deviation) of each figure."""
        rows = []
        for v in dict.fromkeys(r.variant for r in self.runs):
            rs = [r for r in self.runs if r.variant == v]
            row: dict[str, Any] = {"variant": v, "seeds": len(rs), "parameters": rs[0].parameters}
            for c in self.classes():
                row[f"dice_{c}"] = _stats([r.eval.dice.get(c, math.nan) for r in rs])
                row[f"hd95_{c}"] = _stats([r.eval.hd95_mm.get(c, math.nan) for r in rs])
            row["mean_dice"] = _stats([r.eval.mean_dice for r in rs])
            row["steps"] = _stats([float(r.steps) for r in rs])
            row["train_s"] = _stats([r.train_s for r in rs])
            row["infer_s"] = _stats([r.eval.infer_s_per_case for r in rs])
            rows.append(row)
        rows.sort(key=lambda r: -(r["mean_dice"][0] if math.isfinite(r["mean_dice"][0]) else -1))
        return rows


def _f(v: Any) -> float:
    if v is None:
        return math.nan
    if v == "inf":
        return math.inf
    return float(v)


def _stats(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std) of the finite values; std is NaN for one value; mean is inf if any is."""
    if any(math.isinf(v) for v in values):
        return (math.inf, math.nan)
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return (math.nan, math.nan)
    return (float(statistics.fmean(vals)), float(statistics.stdev(vals)) if len(vals) > 1 else math.nan)


class ResultsFile:
    """Every finished run of a long comparison in one JSON file, kept across sessions (commit it):
    ``{"version": 1, "datasets": {name: {"split": {...}, "runs": {"variant/seedN": {"fit", "result"}}}}}``
    (a run of other settings for the same variant and seed is kept as ``variant/seedN@<settings hash>``).

    A run is reused only when it was trained with the same settings (paths and device aside: a later
    session may keep its runs elsewhere); the split is kept too, so every run of a data set, in any
    session, is validated on the same held-back cases. Each write is atomic (read, update, replace).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": 1, "datasets": {}}
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data.get("datasets"), dict):
                raise ValueError("no 'datasets' table")
            return data
        except (OSError, ValueError, AttributeError) as exc:
            raise TrainingError(f"{self.path}: not a readable comparison results file ({exc})") from None

    def _update(self, dataset: str, change: Any) -> None:
        from .atomic import atomic_write

        data = self.read()
        change(data["datasets"].setdefault(dataset, {"split": None, "runs": {}}))
        text = json.dumps(data, indent=1, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda tmp: tmp.write_text(text))

    def run(self, dataset: str, variant: str, seed: int, fit: Mapping[str, Any]) -> RunResult | None:
        """The finished run of these settings, or None."""
        runs = self.read()["datasets"].get(dataset, {}).get("runs", {})
        want = _clean(_portable(fit))
        for key, entry in runs.items():
            if key.split("@")[0] == f"{variant}/seed{seed}" and entry.get("fit") == want:
                try:
                    return RunResult.from_json(entry["result"])
                except (KeyError, TypeError, ValueError):
                    return None
        return None

    def add_run(self, dataset: str, fit: Mapping[str, Any], rr: RunResult) -> None:
        """Add a finished run; one of other settings (another budget, say) is kept beside it, never lost."""
        import hashlib

        entry = {"fit": _clean(_portable(fit)), "result": rr.to_json()}
        key = f"{rr.variant}/seed{rr.seed}"

        def put(d: dict[str, Any]) -> None:
            old = d["runs"].get(key)
            if old is not None and old.get("fit") != entry["fit"]:
                digest = hashlib.sha256(json.dumps(entry["fit"], sort_keys=True).encode()).hexdigest()[:8]
                d["runs"][f"{key}@{digest}"] = entry
            else:
                d["runs"][key] = entry

        self._update(dataset, put)

    def split(self, dataset: str) -> dict[str, Any] | None:
        return self.read()["datasets"].get(dataset, {}).get("split")

    def set_split(self, dataset: str, split: Mapping[str, Any]) -> None:
        self._update(dataset, lambda d: d.__setitem__("split", dict(split)))


def sync_split(results: ResultsFile, dataset: str, split_path: Path) -> None:
    """One split per data set for all sessions: write the results file's split where the run folder has
    none, record the run folder's where the results file has none, refuse when they differ."""
    stored, here = results.split(dataset), split_path.exists()
    if stored is None:
        if here:
            results.set_split(dataset, json.loads(split_path.read_text()))
        return
    if not here:
        split_path.parent.mkdir(parents=True, exist_ok=True)
        split_path.write_text(json.dumps(stored, indent=1, sort_keys=True))
        return
    local = json.loads(split_path.read_text())
    if sorted(local.get("val", [])) != sorted(stored.get("val", [])):
        raise TrainingError(
            f"{split_path} holds back other cases than {results.path} records for {dataset!r}; "
            "use another --out, or delete that split.json to reuse the recorded one"
        )


def _check_variants(variants: Sequence[str]) -> None:
    """Refuse, before any training, a variant the registry does not know or that cannot train alone."""
    from .models import list_models

    known = set(list_models())
    for v in variants:
        if v not in known:
            import difflib

            hint = difflib.get_close_matches(v, sorted(known), n=1)
            raise TrainingError(
                f"unknown variant {v!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "; see 'seg-studio models'")
            )
        if v in NOT_TRAINABLE:
            raise TrainingError(f"{v!r} combines trained checkpoints; it cannot be trained on its own here")


def _finished_run(res_path: Path, fit_dict: Mapping[str, Any]) -> RunResult | None:
    """The result a run left in ``res_path`` when it was trained with these settings, else None."""
    if not res_path.exists():
        return None
    try:
        saved = json.loads(res_path.read_text())
        if _comparable(saved.get("fit") or {}) == _clean(_comparable(fit_dict)):
            return RunResult.from_json(saved["result"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def iter_compare(
    cfg: CompareConfig, cancel: CancelToken | None = None, train: bool = True
) -> Generator[Progress, None, CompareResult]:
    """Train and score every (variant, seed); yields the training progress of each run in turn.

    ``train=False`` only collects runs that already finished (their ``result.json``, or the results
    file's entry), listing the others as not run: the tables of an interrupted or partly finished
    comparison.
    """
    _check_variants(cfg.variants)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = ResultsFile(cfg.results) if cfg.results else None
    dataset = cfg.dataset_name()
    if results is not None:
        sync_split(results, dataset, out / "split.json")
    runs: list[RunResult] = []
    failed: dict[str, str] = {}
    jobs = [(v, s) for s in cfg.seeds for v in cfg.variants]
    val_pairs: list[Any] = []
    for i, (variant, seed) in enumerate(jobs):
        if cancel is not None:
            cancel.raise_if_cancelled()
        label = f"{variant} seed {seed} ({i + 1}/{len(jobs)})"
        res_path = cfg.run_dir(variant, seed) / "result.json"
        fit_dict = cfg.fit_config(variant, seed)
        reused = _finished_run(res_path, fit_dict)
        where = res_path
        if reused is None and results is not None:
            reused, where = results.run(dataset, variant, seed, fit_dict), results.path
        if reused is not None:
            runs.append(reused)
            yield Progress(i + 1, len(jobs), "compare", f"{label}: reused {where}")
            continue
        if not train:
            failed[f"{variant}/seed{seed}"] = "not run (no finished result with these settings)"
            continue
        rr = yield from _train_and_score(cfg, variant, seed, fit_dict, val_pairs, (i, len(jobs)), cancel)
        if isinstance(rr, str):
            failed[f"{variant}/seed{seed}"] = rr
            continue
        runs.append(rr)
        text = json.dumps({"fit": _clean(_comparable(fit_dict)), "result": rr.to_json()}, indent=1)
        from .atomic import atomic_write

        atomic_write(res_path, lambda tmp, t=text: tmp.write_text(t))
        if results is not None:
            sync_split(results, dataset, out / "split.json")
            results.add_run(dataset, fit_dict, rr)
        yield Progress(i + 1, len(jobs), "compare", f"{label}: mean Dice {rr.eval.mean_dice:.4f}")
    if not val_pairs and runs:
        val_names = sorted({c["case"] for r in runs for c in r.eval.cases})
    else:
        val_names = [p.name for p in val_pairs]
    return CompareResult(cfg, runs, val_names, failed)


def _train_and_score(
    cfg: CompareConfig,
    variant: str,
    seed: int,
    fit_dict: dict[str, Any],
    val_pairs: list[Any],
    job: tuple[int, int],
    cancel: CancelToken | None,
) -> Generator[Progress, None, RunResult | str]:
    """One run: trained (resumed when a stopped run of the same settings is in its folder) and scored
    on the held-back cases (``val_pairs``, filled on first use); a string says why it failed."""
    from . import checkpoint
    from .atomic import atomic_write
    from .models import count_parameters
    from .training import iter_fit
    from .training.fit import FitConfig, gather_sources

    i, n = job
    label = f"{variant} seed {seed} ({i + 1}/{n})"
    run_dir = cfg.run_dir(variant, seed)
    before = _resume_point(run_dir, fit_dict)
    fit_cfg = FitConfig.from_dict({**fit_dict, "resume": before is not None})
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = json.dumps(_clean(_comparable(fit_dict)), indent=1)
    atomic_write(run_dir / "compare_fit.json", lambda tmp: tmp.write_text(marker))
    yield Progress(i, n, "compare", f"{'resuming' if before is not None else 'training'} {label}")
    try:
        gen = iter_fit(fit_cfg, cancel)
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                fit = stop.value
                break
            yield Progress(p.done, p.total, p.stage, f"{label}: {p.message}", p.eta_s, p.metrics)
    except (TrainingError, RuntimeError) as exc:
        # One variant that cannot train here (out of memory, a loss that diverged) is reported in
        # the tables as failed; the others still run. Cancellation and other errors propagate.
        log.warning("%s failed: %s", label, exc)
        return str(exc).splitlines()[0][:300]
    best = fit.best_path or fit.last_path
    if best is None:
        return "no checkpoint was written"
    if not val_pairs:
        sources, _ = gather_sources(fit_cfg)
        val_pairs.extend(held_out_pairs(sources, fit.split_path or Path(cfg.out) / "split.json"))
    yield Progress(i, n, "evaluate", f"{label}: scoring {len(val_pairs)} held-back case(s)")
    ev = evaluate_checkpoint(
        best, val_pairs, fit_cfg.label_map, fit_cfg.ignore_value, cfg.device, cancel=cancel
    )
    model, _ = checkpoint.load(best)
    train_s = fit.seconds + (before or 0.0)  # a resumed run: the time before the stop counts too
    return RunResult(variant, seed, count_parameters(model), fit.steps, train_s, ev, str(best))


def _comparable(d: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's result (``device`` does not, nor whether it was resumed)."""
    return {k: v for k, v in d.items() if k not in ("device", "resume")}


def _portable(d: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as a results file compares them: without where this session keeps its runs."""
    return {k: v for k, v in _comparable(d).items() if k not in ("out", "split")}


def _resume_point(run_dir: Path, fit_dict: Mapping[str, Any]) -> float | None:
    """Seconds already trained when ``run_dir`` holds a stopped run of these settings (resume it), else
    None (start afresh). ``compare_fit.json`` records the settings each run was started with."""
    marker = run_dir / "compare_fit.json"
    if not ((run_dir / "resume.pt").exists() and (run_dir / "last.segmodel").exists() and marker.exists()):
        return None
    try:
        if _comparable(json.loads(marker.read_text())) != _clean(_comparable(fit_dict)):
            return None
        history = json.loads((run_dir / "history.json").read_text())
        return float(history[-1].get("seconds") or 0.0) if history else 0.0
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# --- reports -----------------------------------------------------------------------------------------


def _fmt(stat: tuple[float, float], digits: int, scale: float = 1.0) -> str:
    m, s = stat
    if math.isnan(m):
        return "-"
    if math.isinf(m):
        return "inf"
    text = f"{m * scale:.{digits}f}"
    if not math.isnan(s):
        text += f" ± {s * scale:.{digits}f}"
    return text


def markdown_table(result: CompareResult) -> str:
    """The summary as a Markdown table (Dice and HD95 per class, mean Dice, size and times)."""
    classes = result.classes()
    head = ["variant", "params (M)"]
    head += [f"Dice {c}" for c in classes] + ["mean Dice"] + [f"HD95 {c} (mm)" for c in classes]
    head += ["steps", "train (s)", "infer (s/case)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in result.summary():
        cells = [f"`{row['variant']}`", f"{row['parameters'] / 1e6:.2f}"]
        cells += [_fmt(row[f"dice_{c}"], 4) for c in classes]
        cells.append(f"**{_fmt(row['mean_dice'], 4)}**")
        cells += [_fmt(row[f"hd95_{c}"], 2) for c in classes]
        cells += [_fmt(row["steps"], 0), _fmt(row["train_s"], 0), _fmt(row["infer_s"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(result: CompareResult) -> str:
    """One row per (variant, seed) with every figure, for spreadsheets and re-plotting."""
    classes = result.classes()
    fields = ["variant", "seed", "parameters", "steps", "train_s", "infer_s_per_case", "mean_dice"]
    fields += [f"dice_{c}" for c in classes] + [f"hd95_mm_{c}" for c in classes] + ["device", "checkpoint"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in result.runs:
        row: dict[str, Any] = {
            "variant": r.variant,
            "seed": r.seed,
            "parameters": r.parameters,
            "steps": r.steps,
            "train_s": round(r.train_s, 2),
            "infer_s_per_case": round(r.eval.infer_s_per_case, 4),
            "mean_dice": round(r.eval.mean_dice, 5),
            "device": r.eval.device,
            "checkpoint": r.checkpoint,
        }
        for c in classes:
            row[f"dice_{c}"] = round(r.eval.dice.get(c, math.nan), 5)
            row[f"hd95_mm_{c}"] = round(r.eval.hd95_mm.get(c, math.nan), 3)
        w.writerow(row)
    return buf.getvalue()


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def draw_chart(result: CompareResult, title: str = "") -> Any:
    """A Pillow image: one group of bars per variant (Dice per class, mean ± std over seeds as
    whiskers), the parameter count and training time under each group."""
    from PIL import Image, ImageDraw, ImageFont

    rows = result.summary()
    classes = result.classes()
    font = _font(ImageFont, 14)
    small = _font(ImageFont, 12)
    n_bar = max(1, len(classes))
    group_w = max(70, 18 * n_bar + 30)
    left, right, top, bottom = 60, 20, 60, 120
    plot_h = 320
    width = left + right + group_w * max(1, len(rows))
    width = max(width, 480)
    height = top + plot_h + bottom
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    d.text(
        (left, 12),
        title or result.config.title or "Dice per class on the held-back cases",
        fill="black",
        font=font,
    )
    # legend
    x = left
    for k, c in enumerate(classes):
        col = _COLOURS[k % len(_COLOURS)]
        d.rectangle([x, 36, x + 12, 48], fill=col)
        d.text((x + 16, 35), c, fill="black", font=small)
        x += 24 + int(d.textlength(c, font=small))
    # axes: Dice from lo to 1
    finite = [r[f"dice_{c}"][0] for r in rows for c in classes if math.isfinite(r[f"dice_{c}"][0])]
    lo = 0.0 if not finite else max(0.0, math.floor(min(finite) * 10 - 1) / 10)

    def y_of(v: float) -> float:
        return top + plot_h * (1 - (min(max(v, lo), 1.0) - lo) / (1.0 - lo))

    for t in np.linspace(lo, 1.0, 6):
        y = y_of(float(t))
        d.line([left, y, width - right, y], fill=(225, 225, 225))
        d.text((8, y - 7), f"{t:.2f}", fill="black", font=small)
    d.line([left, top, left, top + plot_h], fill="black")
    d.line([left, top + plot_h, width - right, top + plot_h], fill="black")
    for g, r in enumerate(rows):
        x0 = left + g * group_w + 15
        for k, c in enumerate(classes):
            m, s = r[f"dice_{c}"]
            if not math.isfinite(m):
                continue
            col = _COLOURS[k % len(_COLOURS)]
            xa, xb = x0 + k * 18, x0 + k * 18 + 14
            d.rectangle([xa, y_of(m), xb, top + plot_h], fill=col)
            if math.isfinite(s):
                xc = (xa + xb) / 2
                d.line([xc, y_of(m - s), xc, y_of(m + s)], fill="black", width=1)
                d.line([xc - 3, y_of(m + s), xc + 3, y_of(m + s)], fill="black")
                d.line([xc - 3, y_of(m - s), xc + 3, y_of(m - s)], fill="black")
        name = r["variant"]
        ty = top + plot_h + 6
        for part in _wrap(name, 11):
            d.text((x0, ty), part, fill="black", font=small)
            ty += 14
        d.text((x0, ty + 2), f"{r['parameters'] / 1e6:.2f} M", fill=(90, 90, 90), font=small)
        d.text((x0, ty + 16), f"{r['train_s'][0]:.0f} s", fill=(90, 90, 90), font=small)
    return im


def _wrap(text: str, n: int) -> list[str]:
    parts = text.split("_")
    lines, cur = [], ""
    for p in parts:
        cand = p if not cur else f"{cur}_{p}"
        if len(cand) > n and cur:
            lines.append(cur + "_")
            cur = p
        else:
            cur = cand
    lines.append(cur)
    return lines


def _font(image_font: Any, size: int) -> Any:
    try:
        return image_font.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return image_font.load_default()


def write_reports(result: CompareResult, out: str | Path | None = None, title: str = "") -> dict[str, Path]:
    """``compare.md``, ``compare.csv``, ``compare.png`` and ``compare.json`` in ``out`` (atomic each)."""
    from .atomic import atomic_write

    folder = Path(out or result.config.out)
    folder.mkdir(parents=True, exist_ok=True)
    md = markdown_table(result)
    budget = []
    if result.config.max_steps is not None:
        budget.append(f"{result.config.max_steps} steps")
    if result.config.time_budget_s is not None:
        budget.append(f"{result.config.time_budget_s:g} s")
    note = (
        f"Budget per run: {' or '.join(budget) or 'the recipe'}; seeds {result.config.seeds}; "
        f"{len(result.val_cases)} held-back case(s), the same for every run.\n"
    )
    if result.failed:
        note += "\nFailed runs: " + "; ".join(f"{k}: {v}" for k, v in result.failed.items()) + "\n"
    paths = {
        "md": folder / "compare.md",
        "csv": folder / "compare.csv",
        "png": folder / "compare.png",
        "json": folder / "compare.json",
    }
    atomic_write(paths["md"], lambda t: t.write_text(md + "\n" + note))
    atomic_write(paths["csv"], lambda t: t.write_text(csv_text(result)))
    im = draw_chart(result, title)
    atomic_write(paths["png"], lambda t: im.save(t, format="PNG"))
    data = {
        "title": title or result.config.title,
        "config": _clean(asdict(result.config)),
        "val_cases": result.val_cases,
        "runs": [r.to_json() for r in result.runs],
        "failed": result.failed,
    }
    atomic_write(paths["json"], lambda t: t.write_text(json.dumps(data, indent=1)))
    return paths


def _clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else "inf"
    if isinstance(o, Path):
        return str(o)
    return o


__all__ = [
    "CompareConfig",
    "CompareResult",
    "EvalResult",
    "ResultsFile",
    "RunResult",
    "evaluate_checkpoint",
    "held_out_pairs",
    "iter_compare",
    "markdown_table",
    "write_reports",
]
