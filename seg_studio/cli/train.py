"""``seg-studio train | finetune | evaluate``: thin wrappers over ``core.training`` and ``core.metrics``.

Progress goes to stderr as a one-line bar on a terminal (a line per validation otherwise), results
to stdout, so ``--json`` output pipes cleanly.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from ..core.atomic import expect_unchanged
from ..core.defaults import FINETUNE_BUDGET_2D_S, FINETUNE_BUDGET_3D_S
from ..core.errors import SegStudioError, TrainingError
from ..core.progress import CancelToken, Progress

# --- progress ----------------------------------------------------------------------------------------


class Bar:
    """A single-line progress bar on a TTY; plain lines for validations/stages otherwise (logs, CI)."""

    def __init__(self, stream: Any = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.quiet = quiet
        self.last_draw = 0.0
        self.last_stage = ""

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        rank = os.environ.get("RANK")
        if rank not in (None, "0"):
            return
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw < 0.2 and p.stage == self.last_stage and p.stage != "validate":
                return
            self.last_draw = now
            width = 28
            filled = int(width * p.fraction)
            eta = f" ETA {_fmt_s(p.eta_s)}" if p.eta_s is not None else ""
            line = f"\r{p.stage:<10} [{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.total} {p.message}{eta}"
            self.stream.write(line[:160].ljust(100))
            if p.stage == "validate" and "Dice" in p.message:
                self.stream.write("\n")
            self.stream.flush()
        elif p.stage != self.last_stage or p.stage in ("validate", "done") or (p.done and p.done % 50 == 0):
            eta = f" (ETA {_fmt_s(p.eta_s)})" if p.eta_s is not None else ""
            self.stream.write(f"{p.stage}: {p.done}/{p.total} {p.message}{eta}\n")
            self.stream.flush()
        self.last_stage = p.stage

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s}s"


def drive(gen: Generator[Progress, None, Any], bar: Bar) -> Any:
    try:
        while True:
            try:
                bar(next(gen))
            except StopIteration as stop:
                return stop.value
    finally:
        bar.close()


# --- train -------------------------------------------------------------------------------------------


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", type=Path, help="a recipe file (JSON or TOML); flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--images", help="folder of images (names match --labels)")
    g.add_argument("--labels", help="folder of label maps")
    g.add_argument("--dataset-json", dest="dataset_json", help="an MSD-style dataset.json")
    g.add_argument(
        "--label-map", dest="label_map", help="map label values, e.g. 255:1 or 250:1,200:2,0:ignore"
    )
    g.add_argument(
        "--ignore-value", dest="ignore_value", type=int, help="label value that means 'not labelled'"
    )
    g.add_argument(
        "--classes", dest="class_names", help="class names, background first: background,heart,..."
    )
    g.add_argument("--normalization", help='JSON, e.g. \'{"mode": "ct_window", "low": -160, "high": 240}\'')
    g = p.add_argument_group("model")
    g.add_argument(
        "--arch", dest="architecture", help="registered variant (see 'seg-studio models'); default unet"
    )
    g.add_argument("--preset", help="the variant's preset, e.g. reference")
    g.add_argument("--arch-args", dest="arch_args", help="JSON of model arguments, e.g. '{\"features\": 16}'")
    g.add_argument("--features", type=int, help="base width (shortcut for --arch-args features)")
    g.add_argument("--init", help="start from this .segmodel's weights")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run folder (best/last .segmodel, split.json, history.json)")
    g.add_argument("--patch", dest="patch_size", help="patch size, e.g. 256,256 or 64,64,64")
    g.add_argument("--batch-size", dest="batch_size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--steps", dest="max_steps", type=int, help="step budget")
    g.add_argument("--budget", dest="time_budget_s", type=float, help="time budget in seconds")
    g.add_argument("--val-every", dest="val_every", type=int)
    g.add_argument("--val-fraction", dest="val_fraction", type=float)
    g.add_argument("--split", help="a split.json to reuse (default: the run folder's)")
    g.add_argument(
        "--patience", dest="early_stop_patience", type=int, help="validations without gain before stopping"
    )
    g.add_argument("--flip", choices=["auto", "all", "none"])
    g.add_argument("--no-augment", dest="no_augment", action="store_true")
    g.add_argument("--deep-supervision", dest="deep_supervision", choices=["auto", "on", "off"])
    g.add_argument("--adversarial", action="store_true", default=None, help="train with a patch critic")
    g.add_argument("--adv-weight", dest="adv_weight", type=float)
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--seed", type=int)
    g.add_argument("--resume", action="store_true", default=None, help="continue the run in --out")
    g.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting of the recipe, VALUE as JSON, e.g. --set weight_decay=0 "
                   "--set 'augment={\"elastic_p\": 0.5}' (repeatable)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def train_config(args: argparse.Namespace) -> Any:
    from ..core.training import FitConfig

    o: dict[str, Any] = {}
    for k in (
        "images",
        "labels",
        "dataset_json",
        "label_map",
        "ignore_value",
        "architecture",
        "preset",
        "init",
        "out",
        "batch_size",
        "lr",
        "max_steps",
        "time_budget_s",
        "val_every",
        "val_fraction",
        "split",
        "early_stop_patience",
        "flip",
        "adv_weight",
        "precision",
        "device",
        "seed",
        "resume",
        "adversarial",
    ):
        v = getattr(args, k, None)
        if v is not None:
            o[k] = v
    if args.class_names:
        o["class_names"] = [s.strip() for s in args.class_names.split(",")]
    if args.normalization:
        o["normalization"] = _json_arg(args.normalization, "--normalization")
    arch_args = _json_arg(args.arch_args, "--arch-args") if args.arch_args else {}
    if args.features is not None:
        arch_args["features"] = args.features
    if arch_args:
        o["arch_args"] = arch_args
    if args.patch_size:
        try:
            o["patch_size"] = [int(v) for v in args.patch_size.replace("x", ",").split(",")]
        except ValueError:
            raise TrainingError(f"bad --patch {args.patch_size!r}: write e.g. 256,256 or 64,64,64") from None
    if args.no_augment:
        o["augment"] = {"enabled": False}
    if args.deep_supervision:
        o["deep_supervision"] = {"auto": None, "on": True, "off": False}[args.deep_supervision]
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TrainingError(f"bad --set {item!r}: write KEY=VALUE, e.g. --set weight_decay=0")
        try:
            o[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            o[key.strip()] = value  # a bare string, e.g. --set flip=none
    if args.recipe:
        return FitConfig.from_recipe(args.recipe, **o)
    return FitConfig.from_dict(o)


def _json_arg(text: str, flag: str) -> dict[str, Any]:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{flag} is not valid JSON ({exc})") from None
    if not isinstance(v, dict):
        raise TrainingError(f"{flag} must be a JSON object")
    return v


def run_train(args: argparse.Namespace) -> int:
    from ..core.atomic import check_output_folder
    from ..core.training import iter_fit

    cfg = train_config(args)
    token = CancelToken()
    out = Path(cfg.out)
    if out.suffix != ".segmodel":  # (a .segmodel --out gets its own message from iter_fit)
        check_output_folder(out, "--out")
    with expect_unchanged(out / "best.segmodel", out / "last.segmodel"):
        res = drive(iter_fit(cfg, token), Bar(quiet=args.quiet))
    if os.environ.get("RANK") not in (None, "0"):
        return 0
    summary = {
        "best": str(res.best_path) if res.best_path else None,
        "last": str(res.last_path) if res.last_path else None,
        "best_val_dice": None if not math.isfinite(res.best_dice) else round(res.best_dice, 4),
        "steps": res.steps,
        "seconds": round(res.seconds, 1),
        "stopped": res.stop_reason,
        "split": str(res.split_path) if res.split_path else None,
        "val_cases": len(res.val_cases),
        "train_cases": len(res.train_cases),
    }
    if args.json:
        _say(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            _say(f"{k:<14} {v}")
    return 0


# --- finetune ----------------------------------------------------------------------------------------


def add_finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="the parent .segmodel (never modified)")
    p.add_argument("--images", required=True, type=Path, help="folder (or one file) of images")
    p.add_argument("--labels", required=True, type=Path, help="folder (or one file) of corrected labels")
    p.add_argument("--out", required=True, type=Path, help="the NEW .segmodel to write")
    p.add_argument("--label-map", dest="label_map", help="e.g. 255:1 or 250:1,200:2,150:3")
    p.add_argument("--ignore-value", dest="ignore_value", type=int, help="label value of untouched voxels")
    p.add_argument(
        "--budget",
        type=float,
        help=f"time budget in seconds, evaluation and saving included (default {FINETUNE_BUDGET_2D_S:g} in 2D, "
        f"{FINETUNE_BUDGET_3D_S:g} in 3D, as in the app)",
    )
    p.add_argument("--steps", type=int, help="at most this many steps")
    p.add_argument("--lr", type=float, default=None, help="default: 3e-3 from an untrained parent, else 1e-3")
    p.add_argument("--freeze-encoder", dest="freeze_encoder", action="store_true")
    p.add_argument(
        "--class-name",
        dest="class_name",
        action="append",
        default=[],
        metavar="VALUE=NAME",
        help="name a class the model lacks, e.g. 4=tumour (repeatable)",
    )
    p.add_argument("--val-images", dest="val_images", type=Path, help="held-out images for Dice before/after")
    p.add_argument("--val-labels", dest="val_labels", type=Path)
    p.add_argument("--split", type=Path, help="a split.json to reuse")
    p.add_argument(
        "--clicks",
        type=Path,
        help="the clicks made on the one --labels file (default: LABELS.clicks.json beside each labels "
        "file, as the app saves them); they train an interactive model, an automatic one ignores them",
    )
    p.add_argument(
        "--replay",
        nargs="?",
        const=True,
        default=False,
        metavar="DIR",
        help="one of a series: also train on the earlier corrected pairs of the series (kept in DIR, default "
        "the folder the parent's provenance names, else <out>.replay/), and keep these pairs there",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")


def _pairs(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    from ..core.training import pairs_from_folders

    if images.is_file() or labels.is_file():
        if not (images.is_file() and labels.is_file()):
            raise TrainingError("give two files or two folders for --images and --labels")
        return [(images, labels)]
    return [(s.image, s.labels) for s in pairs_from_folders(images, labels)]  # type: ignore[misc]


def _recorded_clicks(pairs: list[tuple[Path, Path]], given: Path | None) -> list[Any] | None:
    """The clicks of each pair: ``--clicks`` for one pair, else ``NAME.clicks.json`` beside its labels."""
    from ..core.atomic import split_suffix
    from ..core.interactive import read_clicks

    if given is not None:
        if len(pairs) != 1:
            raise TrainingError(
                "--clicks goes with one --labels file; for folders put NAME.clicks.json beside each labels file"
            )
        return [read_clicks(given)]
    found = []
    for _, lab in pairs:
        beside = lab.with_name(split_suffix(lab)[0] + ".clicks.json") if lab.is_file() else None
        found.append(read_clicks(beside) if beside is not None and beside.is_file() else None)
    return found if any(found) else None


def run_finetune(args: argparse.Namespace) -> int:
    from ..core.training import iter_finetune

    names: dict[int, str] = {}
    for item in args.class_name:
        try:
            v, n = item.split("=", 1)
            names[int(v)] = n.strip()
        except ValueError:
            raise TrainingError(f"bad --class-name {item!r}: write VALUE=NAME, e.g. 4=tumour") from None
    val = None
    if args.val_images or args.val_labels:
        if not (args.val_images and args.val_labels):
            raise TrainingError("give both --val-images and --val-labels")
        val = _pairs(args.val_images, args.val_labels)
    _check_finetune_out(args)  # before a whole training budget is spent
    pairs = _pairs(args.images, args.labels)
    clicks = _recorded_clicks(pairs, args.clicks)
    gen = iter_finetune(
        args.model,
        pairs,
        args.out,
        args.budget,
        steps=args.steps,
        lr=args.lr,
        freeze_encoder=args.freeze_encoder,
        label_map=args.label_map,
        ignore_value=args.ignore_value,
        class_names=names or None,
        val_pairs=val,
        split=args.split,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        replay=args.replay,
        clicks=clicks,
        cancel=CancelToken(),
    )
    with expect_unchanged(args.out):  # a second fine-tune to the same --out must not be lost silently
        res = drive(gen, Bar(quiet=args.quiet))
    warnings = (
        [] if res.better else [f"the fine-tuned model is not better than its parent: {res.not_better_reason}"]
    )
    summary = {
        "out": str(res.path),
        "parent": str(res.parent),
        "dice_before": _r(res.dice_before, 6),  # as the child's provenance records them
        "dice_after": _r(res.dice_after, 6),
        "parent_dice": _r(res.dice_before, 6),
        "child_dice": _r(res.dice_after, 6),
        "better": res.better,
        "dice_on": res.dice_on,
        "val_cases": len(res.val_cases),
        "train_cases": len(res.train_cases),
        "new_classes": res.new_classes,
        "steps": res.steps,
        "seconds": round(res.seconds, 1),
        "per_class_before": res.per_class_before,
        "per_class_after": res.per_class_after,
        "warnings": warnings,
        "start": res.start.get("start"),
        "replayed": res.replayed,
        "clicks": res.clicks,
    }
    if args.json:
        _say(json.dumps(summary, indent=2))
    else:
        _say(f"wrote {res.path} ({res.steps} steps, {res.seconds:.1f} s)")
        _say(
            f"Dice on {res.dice_on} ({len(res.val_cases)} case(s)): parent {_r(res.dice_before)}, child {_r(res.dice_after)}"
        )
        for k in res.per_class_after:
            _say(f"  {k:<20} {res.per_class_before.get(k)} -> {res.per_class_after[k]}")
        if res.start.get("start") == "fresh":
            _say(f"trained fresh, not from the parent: {res.start.get('reason')}")
        if res.clicks.get("given"):
            c = res.clicks
            _say(
                f"recorded clicks: {c['used']} of {c['given']} used"
                + (f" ({c['reason']})" if c.get("reason") else " as the first round of guidance")
            )
        if res.replayed:
            _say(f"replayed {len(res.replayed)} earlier pair(s) of the series: {', '.join(res.replayed)}")
    for w in warnings:
        sys.stderr.write(f"warning: {w}; its card says so; keep using {res.parent.name}\n")
    return 0


def _check_finetune_out(args: argparse.Namespace) -> None:
    from ..core.atomic import check_output

    if args.out.suffix != ".segmodel":
        raise TrainingError(f"the fine-tuned model is a .segmodel file; got --out {args.out.name}")
    protected = [args.model, args.images, args.labels, args.val_images, args.val_labels, args.clicks]
    if args.model.exists() and args.out.exists() and os.path.samefile(args.model, args.out):
        raise TrainingError(
            "the fine-tuned model must go to a new file; the parent checkpoint is never overwritten"
        )
    check_output(args.out, protected, "--out")


def _r(v: float | None, digits: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, digits)


# --- evaluate ----------------------------------------------------------------------------------------


def add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, type=Path, help="predicted label map, or a folder of them")
    p.add_argument("--truth", required=True, type=Path, help="reference label map, or a folder (same names)")
    p.add_argument("--classes", help="label values to score, e.g. 1,2 (default: all non-zero present)")
    p.add_argument("--ignore-value", dest="ignore_value", type=int, help="truth value to leave out")
    p.add_argument("--label-map", dest="label_map", help="map the TRUTH's values first, e.g. 255:1")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON output")
    fmt.add_argument("--csv", action="store_true", help="CSV output (one row per case and class)")


def run_evaluate(args: argparse.Namespace) -> int:
    from ..core.metrics import evaluate_paths, summarise

    classes = None
    if args.classes:
        try:
            classes = [int(c) for c in args.classes.split(",")]
        except ValueError:
            raise SegStudioError(f"bad --classes {args.classes!r}: write label values like 1,2") from None
    cases = evaluate_paths(args.pred, args.truth, classes, args.ignore_value, label_map=args.label_map)
    rows = [r for c in cases for r in c.rows()]
    mean = summarise(cases)
    if args.json:
        _say(json.dumps({"cases": _clean(rows), "mean": _clean(mean)}, indent=2))
        return 0
    if args.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["case"])
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
        return 0
    first = cases[0] if cases else None
    lu = first.length_unit if first else "mm"
    su = first.size_unit if first else "ml"
    sn = "area" if first and first.size_name == "area" else "vol"
    _say(
        f"{'case':<24} {'class':<18} {'Dice':>7} {'IoU':>7} {'HD95 ' + lu:>9} {sn + ' ' + su:>9} {'ref ' + su:>9}"
    )
    for cm in cases:
        for c in cm.dice:
            name = cm.class_names.get(c, f"class {c}")
            _say(
                f"{cm.name[:24]:<24} {str(c) + ' ' + name:<18.18} {_f(cm.dice[c])} {_f(cm.iou[c])} "
                f"{_f(cm.hd95[c], 9, 2)} {_f(cm.size_pred[c], 9, 3)} {_f(cm.size_truth[c], 9, 3)}"
            )
    if len(cases) > 1:
        names = {c: n for case in cases for c, n in case.class_names.items()}
        for c in mean["dice"]:
            label = f"{c} {names.get(c, f'class {c}')}"
            _say(
                f"{'mean':<24} {label:<18.18} {_f(mean['dice'][c])} {_f(mean['iou'][c])} "
                f"{_f(mean[f'hd95_{lu}'][c], 9, 2)}"
            )
    return 0


def _f(v: float, w: int = 7, d: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"{'-':>{w}}"
    if isinstance(v, float) and math.isinf(v):
        return f"{'inf':>{w}}"
    return f"{v:>{w}.{d}f}"


def _clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_clean(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else "inf"
    return o


def _say(text: str = "") -> None:
    """Results go to stdout (progress goes to stderr)."""
    sys.stdout.write(f"{text}\n")
