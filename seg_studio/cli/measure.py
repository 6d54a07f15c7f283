"""CLI ``measure``: per-class volume, extent and intensity statistics (registered in ``cli.COMMANDS``)."""

from __future__ import annotations

import argparse
import csv
import io as _io
import json
from pathlib import Path

from .predict import _floats, say


def add_measure(p: argparse.ArgumentParser) -> None:
    p.add_argument("labels", type=Path, help="a label map (file, DICOM SEG, or labels on a DICOM folder)")
    p.add_argument("--image", type=Path, help="the scan, for intensity statistics (HU for CT)")
    p.add_argument("--series", help="DICOM series UID of --image when its folder holds several")
    p.add_argument(
        "--phase", type=int, metavar="N", help="cine DICOM --image: its phase N (as predict --phase)"
    )
    p.add_argument(
        "--pixel-size",
        type=_floats,
        metavar="MM",
        help="pixel size in mm (one value, or x,y) for labels and image that store none (PNG): sizes and"
        " the head circumference are then in mm",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="one CSV row per class")
    fmt.add_argument("--json", action="store_true", help="machine-readable output")


def run_measure(args: argparse.Namespace) -> int:
    from ..core import io
    from ..core.measure import format_table, measure, rows_for_csv

    image = io.read(args.image, series=args.series, phase=args.phase) if args.image else None
    labels = _read_labels(args.labels, image)
    if args.pixel_size:  # for the files that store none (a PNG mask or scan); refused when neither lacks it
        lacking = [v for v in (labels, image) if v is not None and not io.has_physical_spacing(v)]
        for vol in lacking or [labels]:
            io.set_pixel_size(vol, args.pixel_size)
    report = measure(labels, image)
    if args.json:
        say(json.dumps(report.as_dict(), indent=2))
    elif args.csv:
        rows = rows_for_csv(report)
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["value"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        say(buf.getvalue().rstrip("\n"))
    else:
        say(format_table(report))
    return 0


def _read_labels(path: Path, image):  # noqa: ANN001, ANN202 - Volume in, Volume out
    """The labels, on the image's grid when the labels are a DICOM SEG of that image's series."""
    from ..core import io
    from ..core.io.dicom_seg import is_dicom_seg, read_seg

    if image is not None and path.is_file() and is_dicom_seg(path) and image.meta.get("sop_instance_uids"):
        return read_seg(path, like=image)
    labels = io.read(path)
    labels.meta["kind"] = "labels"
    return labels
