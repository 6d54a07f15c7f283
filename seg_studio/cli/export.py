"""CLI ``export``: any label map on a DICOM series -> a DICOM SEG (registered in ``cli.COMMANDS``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import ImageWriteError
from .predict import is_seg_path, say


def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("labels", type=Path, help="a label map on the series' grid (.nii.gz, .nrrd, a SEG ...)")
    p.add_argument(
        "--like", type=Path, required=True, metavar="DICOM_DIR", help="the DICOM series it lies on"
    )
    p.add_argument("--out", type=Path, required=True, help="the DICOM SEG to write (result.dcm)")
    p.add_argument("--series", help="DICOM series UID when DICOM_DIR holds several")
    p.add_argument(
        "--model", type=Path, help="the .segmodel that made the labels: class names, colours, algorithm"
    )
    p.add_argument(
        "--algorithm-type",
        choices=("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"),
        help="how the labels were made (default: SEMIAUTOMATIC with --model, as a file may hold corrections; "
        "MANUAL without)",
    )


def run_export(args: argparse.Namespace) -> int:
    from ..core import io
    from ..core.io.dicom_seg import Algorithm, write_seg

    if not is_seg_path(args.out):
        raise ImageWriteError(
            f"--out {args.out.name}: export writes a DICOM SEG (.dcm); for other formats use seg-studio convert"
        )
    labels = io.read(args.labels)
    labels.meta["kind"] = "labels"
    algorithm = None
    kind = args.algorithm_type or ("SEMIAUTOMATIC" if args.model else "MANUAL")
    if args.model:
        from ..core import checkpoint

        meta = checkpoint.read_meta(args.model)
        labels.labels = {**labels.labels, **meta.label_infos()}
        algorithm = Algorithm.from_checkpoint(args.model, meta, kind=kind)
    elif kind != "MANUAL":
        raise ImageWriteError(f"--algorithm-type {kind} needs --model, the checkpoint that made the labels")
    out = write_seg(labels, args.like, args.out, algorithm, series_uid=args.series, protected=[args.labels])
    say(f"wrote {out} (DICOM SEG on {args.like})")
    return 0
