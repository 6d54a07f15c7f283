# ruff: noqa: T201 - the CLI prints; this module is part of it
"""CLI commands around files: ``info``, ``convert`` and ``demo`` (registered in ``cli.COMMANDS``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _fmt_num(v: float) -> str:
    """Four decimals at most (``--json`` has the exact values): 6.499993 mm prints as 6.5."""
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.4f}".rstrip("0").rstrip(".")


def format_summary(s: dict[str, Any]) -> str:
    """The human form of ``core.io.summary``: one fact per line, x,y,z order like the scanners'."""
    nd = s["dims"]
    axes = "x,y,z"[: 2 * nd - 1]
    lines = [f"path:      {s['path']}"]
    lines.append(f"format:    {s['format']} ({s['kind']}{', RGB' if s.get('rgb') else ''})")
    chans = f", {s['channels']} channels" if s["channels"] > 1 else ""
    lines.append(f"size:      {' x '.join(str(n) for n in s['size_xyz'])} ({axes}){chans}")
    if s.get("physical_spacing", True):
        lines.append(f"spacing:   {' x '.join(_fmt_num(v) for v in s['spacing'])} mm")
        lines.append(f"origin:    ({', '.join(_fmt_num(v) for v in s['origin'])}) mm")
    else:  # a picture (PNG, JPEG...) stores no pixel size: sizes are in pixels
        lines.append("spacing:   none stored (sizes in px)")
    d = s["direction"]
    rows = [" ".join(f"{v: .4f}" for v in d[i * nd : (i + 1) * nd]) for i in range(nd)]
    lines.append(f"direction: [{'; '.join(rows)}]")
    lines.append(f"dtype:     {s['dtype']}")
    if s.get("range") is not None:
        lo, hi = s["range"]
        lines.append(f"range:     {_fmt_num(lo)} .. {_fmt_num(hi)}")
    if "label_values" in s:
        names = s.get("labels") or {}
        shown = ", ".join(f"{k}={v}" for k, v in list(names.items())[:8])
        more = f", ... ({len(names)} in all)" if len(names) > 8 else ""
        lines.append(f"labels:    {s['label_values']} distinct values: {shown}{more}")
    for key, title in (
        ("modality", "modality"),
        ("series_description", "series"),
        ("series_uid", "series UID"),
        ("slices", "slices"),
    ):
        if key in s:
            val = s[key] if s[key] != "" else "(empty)"
            lines.append(f"{title + ':':<11}{val}" if len(title) < 10 else f"{title}: {val}")
    if "window_center" in s:
        lines.append(f"window:    center {_fmt_num(s['window_center'])}, width {_fmt_num(s['window_width'])}")
    if s.get("nonuniform_spacing"):
        lines.append("warning:   uneven slice gaps (read with --allow-nonuniform; spacing is an average)")
    return "\n".join(lines)


# --- info ---------------------------------------------------------------------------------------


def add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="a scan file or a DICOM folder")
    p.add_argument("--series", help="DICOM series UID (or a unique part of it) when the folder holds several")
    p.add_argument("--allow-nonuniform", action="store_true", help="read DICOM series with uneven slice gaps")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--phase", type=int, metavar="N", help="a cine DICOM folder: read its phase N (see predict)"
    )


def run_info(args: argparse.Namespace) -> int:
    from ..core import io

    path: Path = args.path
    series_list = None
    if path.is_dir():
        series_list = io.list_series(path)
        if len(series_list) > 1 and args.series is None:
            rows = [s.as_dict() for s in series_list]
            if args.json:
                print(json.dumps({"path": str(path), "series": rows}, indent=2))
            else:
                print(f"{path} holds {len(rows)} DICOM series (pick one with --series UID):")
                for s in series_list:
                    print(f"  {s.label()}")
            return 0
    if path.is_file() and _is_seg(path):
        return _print_seg(path, args.json)
    vol = io.read(path, series=args.series, allow_nonuniform=args.allow_nonuniform, phase=args.phase)
    s = io.summary(vol)
    if series_list is not None:
        s["series_in_folder"] = [x.as_dict() for x in series_list]
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        print(format_summary(s))
    return 0


def _is_seg(path: Path) -> bool:
    from ..core.io._formats import has_dicom_preamble, suffix_of

    if suffix_of(path) not in (".dcm", ".dicom", "") and not has_dicom_preamble(path):
        return False
    from ..core.io.dicom_seg import is_dicom_seg

    return is_dicom_seg(path)


def _print_seg(path: Path, as_json: bool) -> int:
    """``info`` on a DICOM SEG: its segments (with the algorithm) and the series it references."""
    from ..core.io.dicom_seg import seg_summary

    s = seg_summary(path)
    if as_json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"path:      {s['path']}")
    print(f"format:    DICOM SEG, {s['frames']} frames of {s['size_xy'][0]} x {s['size_xy'][1]}")
    print(f"series:    {s['series_description'] or '(no description)'} ({s['series_uid']})")
    refs = ", ".join(s["referenced_series_uids"]) or "(none)"
    print(f"made on:   series {refs} ({s['referenced_instances']} instances), study {s['study_uid']}")
    for seg in s["segments"]:
        alg = seg["algorithm"]
        made = seg["algorithm_type"].lower()
        if alg:
            sha = f", sha256 {alg['sha256'][:16]}" if alg.get("sha256") else ""
            made += f" by {alg['name']} {alg['version']}{sha}"
        print(f"segment {seg['number']}: {seg['label']} (label {seg['value']}, {made})")
    return 0


# --- convert ------------------------------------------------------------------------------------


def add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="a scan file or a DICOM folder")
    p.add_argument(
        "output", type=Path, help="file to write (.nii.gz, .nii, .mha, .mhd, .nrrd, .tif, .png, .bmp)"
    )
    p.add_argument("--series", help="DICOM series UID when the folder holds several")
    p.add_argument("--allow-nonuniform", action="store_true", help="read DICOM series with uneven slice gaps")
    p.add_argument(
        "--phase", type=int, metavar="N", help="a cine DICOM folder: read its phase N (see predict)"
    )
    p.add_argument(
        "--labels",
        action="store_true",
        help="treat the input as a label map (smallest integer type); guessed from the name otherwise",
    )


def run_convert(args: argparse.Namespace) -> int:
    from ..core import io

    vol = io.read(args.input, series=args.series, allow_nonuniform=args.allow_nonuniform, phase=args.phase)
    if args.labels:
        vol.meta["kind"] = "labels"
    out = io.write(vol, args.output, protected=[args.input])
    print(f"wrote {out} ({vol.meta.get('kind')}, {' x '.join(str(n) for n in reversed(vol.spatial_shape))})")
    return 0


# --- demo ---------------------------------------------------------------------------------------


def add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the sample (default: 'sample' in seg_studio's user folder, printed; never the current folder)",
    )


def default_demo_folder() -> Path:
    """Where ``demo`` writes without ``--out``: the user's seg_studio folder, not wherever the shell is."""
    from ..core.autosave import app_data_dir

    return app_data_dir() / "sample"


def make_demo_sample(out: Path) -> dict[str, Path]:
    """Write the synthetic 2D and 3D samples (scan + labels) as NIfTI; returns their paths by role."""
    from ..core import io
    from ..core.samples import make_sample_2d, make_sample_3d

    paths: dict[str, Path] = {}
    for dims, make in ((3, make_sample_3d), (2, make_sample_2d)):
        image, labels = make()
        folder = out / f"{dims}d"
        paths[f"image_{dims}d"] = io.write(image, folder / f"sample_{dims}d.nii.gz")
        # the class names go to sample_Nd_labels.labels.json beside it (NIfTI has no room for them)
        paths[f"labels_{dims}d"] = io.write(labels, folder / f"sample_{dims}d_labels.nii.gz")
    return paths


def run_demo(args: argparse.Namespace) -> int:
    """The headless job of ``installer/run.sh``: make the sample, describe it, segment it, score it.

    The 2D sample goes through the bundled model exactly as ``seg-studio predict`` would take it
    (checkpoint metadata decides normalisation and windows); the mask is written beside the scan in
    its geometry and scored against the sample's own labels, so a broken install shows up as a low
    Dice rather than passing silently.
    """
    from ..core import checkpoint, io, metrics
    from ..core.inference import PredictOptions, predict
    from ..selftest import find_bundled_checkpoint

    out = (args.out or default_demo_folder()).expanduser().resolve()
    paths = make_demo_sample(out)
    print(f"seg_studio sample written to {out}/")
    for role, path in paths.items():
        print(f"\n[{role}]")
        print(format_summary(io.summary(io.read(path))))

    ckpt = find_bundled_checkpoint(2)
    model, meta = checkpoint.load(ckpt)
    scan = io.read(paths["image_2d"])
    pred = predict(scan, model, meta, PredictOptions(device="cpu"))
    mask = io.write(pred.labels, paths["image_2d"].with_name("sample_2d_predicted.nii.gz"))
    case = metrics.evaluate(io.read(mask), io.read(paths["labels_2d"]), name="sample_2d")
    print(f"\n[predict] model {ckpt.name} ({meta.architecture}, {meta.spatial_dims}D) on {pred.device}")
    print(f"mask:      {mask} ({pred.seconds:.2f} s)")
    for value, d in sorted(case.dice.items()):
        name = case.class_names.get(value, str(value))
        print(f"dice:      {name:<12} {d:.4f}")
    return 0
