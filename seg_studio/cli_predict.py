"""CLI commands around checkpoints and inference: ``inspect``, ``import-weights``, ``predict``.

Kept apart from ``cli.py`` (which only registers them in ``COMMANDS``) so the commands that several
people edit do not collide. Heavy imports (torch) happen inside the run functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .core.errors import CheckpointError, SegStudioError


def say(text: str) -> None:
    """The CLI's output channel (the library itself only logs)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 96,96,96, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,1,2.5, got {text!r}") from None


def _json_obj(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"features\": 16}}', got {text!r}")
    return value


# --- inspect ----------------------------------------------------------------------------------------


def add_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="a .segmodel file")
    p.add_argument("--json", action="store_true", help="print the raw metadata record as JSON")


def run_inspect(args: argparse.Namespace) -> int:
    from .core import checkpoint as ckpt

    meta = ckpt.read_meta(args.checkpoint)
    if args.json:
        say(json.dumps(meta.to_dict(), indent=2, sort_keys=True))
    else:
        say(ckpt.model_card(meta, args.checkpoint))
    return 0


# --- import-weights ------------------------------------------------------------------------------------


def add_import_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "weights",
        type=Path,
        help="a plain state dict: .pt/.pth (read with weights_only=True) or .safetensors",
    )
    p.add_argument("--arch", required=True, help="registered architecture name (see 'seg-studio models')")
    p.add_argument("--dims", type=int, choices=(2, 3), required=True, help="spatial dimensions of the model")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument(
        "--classes",
        required=True,
        help="class names in logit order, comma-separated (background first), or just their number",
    )
    p.add_argument(
        "--arch-args",
        type=_json_obj,
        default={},
        help="architecture arguments as JSON, e.g. '{\"features\": 16}'",
    )
    p.add_argument("--preset", help="architecture preset (e.g. reference)")
    p.add_argument(
        "--normalization",
        type=_json_obj,
        default={"mode": "zscore"},
        help='e.g. \'{"mode": "ct_window", "low": -160, "high": 240}\'',
    )
    p.add_argument("--spacing", type=_floats, help="target spacing x,y(,z) in mm (default: the scan's own)")
    p.add_argument("--patch-size", type=_ints, help="window size in array order z,y,x or y,x")
    p.add_argument("--channel-names", help="input channel names, comma-separated")
    p.add_argument("--out", type=Path, required=True, help="the .segmodel file to write")


def run_import_weights(args: argparse.Namespace) -> int:
    from .core import checkpoint as ckpt

    if args.classes.strip().isdigit():
        n = int(args.classes)
        names = None
    else:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        n = len(names)
    if n < 1:
        raise CheckpointError("--classes: give at least one class")
    out_channels = n
    arch_args = dict(args.arch_args)
    if args.preset:
        arch_args["preset"] = args.preset
    model, meta = ckpt.import_weights(
        args.weights,
        args.arch,
        args.dims,
        args.in_channels,
        out_channels,
        arch_args,
        classes=names if names and len(names) >= 2 else None,
        channel_names=args.channel_names.split(",") if args.channel_names else None,
        normalization=args.normalization,
        spacing=args.spacing,
        patch_size=args.patch_size,
    )
    out = ckpt.save(args.out, model, meta)
    say(f"wrote {out}")
    return 0


__all__ = ["SegStudioError", "add_import_weights", "add_inspect", "run_import_weights", "run_inspect"]
