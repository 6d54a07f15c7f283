"""``seg-studio compare``: train and score several variants on one recipe's data, split and budget."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.errors import TrainingError


def add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe", type=Path, help="a training recipe (JSON/TOML): data, patch, batch, lr... for every run"
    )
    p.add_argument(
        "--variants",
        default="unet,attention_unet",
        help="comma-separated registered variants, or 'all' (every trainable one; see 'seg-studio models')",
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (spread over seeds)")
    p.add_argument("--steps", type=int, help="step budget per run (the fairest budget on a shared machine)")
    p.add_argument("--budget", type=float, help="time budget per run in seconds")
    p.add_argument("--features", type=int, help="base width for every variant (overrides the recipe's)")
    p.add_argument(
        "--variant-args",
        dest="variant_args",
        help='JSON {variant: {arg: value}} on top of the recipe\'s arch_args, e.g. \'{"res_unet": {"features": 32}}\'',
    )
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="folder for runs and reports")
    p.add_argument(
        "--results",
        type=Path,
        help="a results JSON kept across sessions (commit it): finished runs are added to it, a re-run"
        " skips them and reuses its held-back split, so a long comparison can run over days",
    )
    p.add_argument(
        "--dataset", default="", help="the data set's name in --results (default: the recipe file's name)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--title", default="", help="chart title")
    p.add_argument(
        "--report-only",
        dest="report_only",
        action="store_true",
        help="train nothing: rebuild the tables from the runs in --out that finished",
    )
    p.add_argument("--json", action="store_true", help="print the per-run results as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def run_compare(args: argparse.Namespace) -> int:
    from ..core.compare import NOT_TRAINABLE, CompareConfig, iter_compare, markdown_table, write_reports
    from ..core.models import list_models
    from ..core.progress import CancelToken
    from ..core.training import load_recipe
    from .train import Bar, drive

    base = load_recipe(args.recipe)
    if args.features is not None:
        base["arch_args"] = {**dict(base.get("arch_args") or {}), "features": args.features}
    if args.variants.strip() == "all":
        variants = [v for v in list_models() if v not in NOT_TRAINABLE]
    else:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise TrainingError(f"bad --seeds {args.seeds!r}: write e.g. 0,1,2") from None
    variant_args = {}
    if args.variant_args:
        try:
            variant_args = json.loads(args.variant_args)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"--variant-args is not valid JSON ({exc})") from None
    cfg = CompareConfig(
        base=base,
        variants=variants,
        seeds=seeds or [0],
        max_steps=args.steps,
        time_budget_s=args.budget,
        variant_args=variant_args,
        out=str(args.out),
        device=args.device,
        title=args.title,
        results=str(args.results) if args.results else None,
        dataset=args.dataset or args.recipe.stem,
    )
    result = drive(iter_compare(cfg, CancelToken(), train=not args.report_only), Bar(quiet=args.quiet))
    paths = write_reports(result, args.out, args.title)
    if args.json:
        sys.stdout.write(json.dumps(json.loads(paths["json"].read_text()), indent=1) + "\n")
        return 0
    sys.stdout.write(markdown_table(result))
    for k, v in result.failed.items():
        sys.stdout.write(f"failed: {k}: {v}\n")
    sys.stdout.write("\n" + "\n".join(f"wrote {p}" for p in paths.values()) + "\n")
    return 0
