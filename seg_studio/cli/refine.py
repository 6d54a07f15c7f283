"""CLI command ``refine``: apply a clicks file to a scan with an interactive model (click to correct).

``seg-studio refine SCAN --model M --clicks clicks.json --out OUT [--labels START] [--painted MASK]``:
every click is applied in the order given, as a user makes them (one crop prediction per click), and
only the result after all of them is written, in one atomic write. Everything is checked before the
model runs: the clicks file (its voxels against the scan), the starting labels, the output path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def add_refine(p: argparse.ArgumentParser) -> None:
    p.add_argument("scan", type=Path, help="the scan (any readable format or a DICOM folder)")
    p.add_argument("--model", type=Path, required=True, help="an interactive .segmodel (its card says so)")
    p.add_argument(
        "--clicks",
        type=Path,
        required=True,
        help='JSON list of {"class": VALUE, "positive": true|false, "voxel": [i, j(, k)]} in the order '
        "clicked; voxel in the scan's array index order (z, y, x), as seg_studio reads it",
    )
    p.add_argument("--out", type=Path, required=True, help="the corrected label map to write")
    p.add_argument("--labels", type=Path, default=None, help="starting labels (e.g. an automatic prediction)")
    p.add_argument(
        "--painted",
        type=Path,
        default=None,
        help="a mask of voxels the user painted (nonzero): never changed",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")


def _read_inputs(args: argparse.Namespace):  # noqa: ANN202
    """The scan, the clicks (checked against it), the starting labels and the painted mask."""
    from ..core import io
    from ..core.errors import ImageLoadError
    from ..core.interactive import read_clicks

    scan = io.read(args.scan)
    clicks = read_clicks(args.clicks, scan.spatial_shape)
    labels = painted = None
    start = None
    if args.labels is not None:
        start = io.read(args.labels)
        if start.channels != 1 or start.spatial_shape != scan.spatial_shape:
            raise ImageLoadError(
                f"{args.labels.name}: labels of shape {list(start.spatial_shape)} do not fit the scan "
                f"{list(scan.spatial_shape)}; give labels made on this scan"
            )
        labels = start.array
    if args.painted is not None:
        mask = io.read(args.painted)
        if mask.channels != 1 or mask.spatial_shape != scan.spatial_shape:
            raise ImageLoadError(f"{args.painted.name}: the painted mask does not fit the scan's grid")
        painted = mask.array != 0
    return scan, clicks, start, labels, painted


def run_refine(args: argparse.Namespace) -> int:
    from ..core import checkpoint as ckpt
    from ..core import domain, io
    from ..core.atomic import check_outputs
    from ..core.errors import ImageWriteError
    from ..core.interactive import RefineOptions, apply_clicks, guidance_spec
    from ..core.io._formats import suffix_of, supported_write_list
    from ..core.volume import LabelInfo

    if args.out.is_dir():
        raise ImageWriteError(f"--out {args.out} is a folder; give a file name such as mask.nii.gz")
    if suffix_of(args.out) not in io.WRITE_FORMATS:
        raise ImageWriteError(
            f"--out {args.out.name}: cannot save a mask as that; use one of {supported_write_list()}"
        )
    inputs = [args.scan, args.model, args.clicks, args.labels, args.painted]
    check_outputs({"--out": args.out}, protected=inputs)
    meta = ckpt.read_meta(args.model)
    guidance_spec(meta)  # an automatic model is refused before any scan is read
    scan, clicks, start, labels, painted = _read_inputs(args)
    if meta.domain is not None:
        for w in domain.check_scan(meta.domain, scan):
            sys.stderr.write(f"warning: {w.message}\n")
    model, meta = ckpt.load(args.model, device="cpu")
    result, steps = apply_clicks(
        scan, model, meta, clicks, labels, painted, RefineOptions(device=args.device)
    )
    for i, (c, s) in enumerate(zip(clicks, steps, strict=True)):
        sign = "+" if c.positive else "-"
        say(
            f"click {i + 1} (class {c.value} {sign} at {list(c.voxel)}): {s.changed} voxels changed in {s.seconds:.2f} s"
        )
    infos = dict(start.labels) if start is not None else {0: LabelInfo(0, "background", (0, 0, 0))}
    for c in clicks:
        infos.setdefault(c.value, LabelInfo(c.value, f"class_{c.value}", (255, 0, 0)))
    out = scan.with_array(result, channels=1, labels=infos, meta={"kind": "labels", "source_kind": "labels"})
    written = io.write(out, args.out, protected=inputs)
    say(f"wrote {written} ({len(clicks)} click(s))")
    return 0
