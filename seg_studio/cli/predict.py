"""CLI commands around checkpoints and inference: ``inspect``, ``import-weights``, ``predict``.

Kept apart from ``cli.main`` (which only registers them in ``COMMANDS``) so the commands that several
people edit do not collide. Heavy imports (torch) happen inside the run functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.defaults import OVERLAP
from ..core.errors import CheckpointError, SegStudioError


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
    from ..core import checkpoint as ckpt

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
    from ..core import checkpoint as ckpt

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


# --- predict ------------------------------------------------------------------------------------------

_FLOAT_EXT = ".nii.gz"  # probabilities, uncertainty and attention maps are float: NIfTI holds them


def add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="a scan file, a DICOM series folder, or a folder of scans")
    p.add_argument("--model", type=Path, required=True, help="a .segmodel checkpoint")
    p.add_argument(
        "--out", type=Path, required=True, help="the mask file (a folder when INPUT is a folder of scans)"
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    p.add_argument(
        "--overlap", type=float, default=OVERLAP, help=f"window overlap in [0, 1) (default {OVERLAP:g})"
    )
    p.add_argument("--batch-size", type=int, default=4, help="windows per batch (halved on out-of-memory)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "openvino", "onnxruntime"),
        help="auto: OpenVINO on the CPU when installed (pip install 'seg-studio[fast]'), else torch; "
        "GPUs always run torch",
    )
    p.add_argument("--tta", action="store_true", help="average over flips (test-time augmentation)")
    p.add_argument(
        "--save-probabilities",
        type=Path,
        metavar="P",
        help="class probabilities, one channel per class: uint8 where 255 means 1 (see --probabilities-dtype)",
    )
    p.add_argument(
        "--probabilities-dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="uint8 (default): round(p * 255), a quarter of float32's memory and file size; "
        "float32: exact values (a 512x512x400 CT with 2 classes then needs ~5 GB)",
    )
    p.add_argument("--save-attention", type=Path, metavar="A", help="attention-gate maps, one file per gate")
    p.add_argument("--save-uncertainty", type=Path, metavar="U", help="spread over flip TTA (turns --tta on)")
    p.add_argument(
        "--review-order",
        type=Path,
        metavar="R",
        help="where to check first: slices (3D) or regions (2D) ranked by the model's uncertainty, "
        "as .json or .csv (a folder of <scan>_review.json with a folder of scans); with --tta the "
        "spread over flips counts too",
    )
    p.add_argument("--largest-component", action="store_true", help="keep each class's largest component")
    p.add_argument("--fill-holes", action="store_true", help="fill enclosed holes of each class")
    p.add_argument("--min-size", type=int, default=0, help="drop islands smaller than this many voxels")
    p.add_argument("--series", help="DICOM series UID when a folder holds several")
    p.add_argument(
        "--phase",
        type=int,
        metavar="N",
        help="a cine DICOM folder (several images per slice position): read phase N (0 = the first image"
        " at each position, by instance number)",
    )
    p.add_argument(
        "--pixel-size",
        type=_floats,
        metavar="MM",
        help="the scan's pixel size in mm (one value, or x,y) for a picture that stores none (PNG, JPEG),"
        " e.g. an HC18 frame's from its CSV; files that store a spacing are refused",
    )
    p.add_argument(
        "--ext", help="mask file type in folder mode, e.g. .nii.gz (default: the scan's own if writable)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print what was written, the notes and the domain warnings as one JSON object on stdout",
    )


class _Bar:
    """A progress bar on a terminal, plain throttled lines otherwise (logs, CI, pipes)."""

    def __init__(self, name: str, stream=None) -> None:  # noqa: ANN001 - a text stream
        import sys

        self.name = name
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_decile = -1

    def update(self, p) -> None:  # noqa: ANN001 - Progress
        if p.stage != "predict" or p.total <= 0:
            if p.message and p.stage == "predict":  # e.g. out-of-memory fallback notes
                self._line(f"{self.name}: {p.message}")
            return
        eta = "" if p.eta_s is None else f" ETA {int(p.eta_s) // 60}:{int(p.eta_s) % 60:02d}"
        if self.tty:
            width = 30
            fill = int(width * p.fraction)
            self.stream.write(f"\r{self.name} [{'#' * fill}{'.' * (width - fill)}] {p.done}/{p.total}{eta} ")
            self.stream.flush()
            return
        decile = int(10 * p.fraction)
        if decile != self.last_decile:
            self.last_decile = decile
            self._line(f"{self.name}: {p.done}/{p.total} windows{eta}")

    def _line(self, text: str) -> None:
        if self.tty:
            text = "\r" + text
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _is_dicom_folder(path: Path) -> bool:
    from ..core.io import list_series

    try:
        return bool(list_series(path))
    except SegStudioError:
        return False


def _gather(folder: Path) -> list[Path]:
    """Scans directly in ``folder``: readable files, and subfolders that hold a DICOM series."""
    from ..core.io import READ_FORMATS
    from ..core.io._formats import has_dicom_preamble, suffix_of

    scans = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and (suffix_of(entry) in READ_FORMATS or has_dicom_preamble(entry)):
            scans.append(entry)
        elif entry.is_dir() and _is_dicom_folder(entry):
            scans.append(entry)
    return scans


def _out_name(scan: Path, ext: str | None) -> str:
    from ..core.atomic import split_suffix
    from ..core.io import WRITE_FORMATS

    if scan.is_dir():
        return scan.name + (ext or ".nii.gz")
    stem, suffix = split_suffix(scan)
    if ext:
        return stem + ext
    return stem + (suffix.lower() if suffix.lower() in WRITE_FORMATS else ".nii.gz")


def _float_name(base: Path, stem: str) -> Path:
    return base / f"{stem}{_FLOAT_EXT}"


def _with_tag(path: Path, tag: str) -> Path:
    from ..core.atomic import split_suffix

    stem, suffix = split_suffix(path)
    return path.with_name(f"{stem}{tag}{suffix or _FLOAT_EXT}")


def warn(text: str) -> None:
    """A domain warning: one ``warning:`` line on stderr (stdout stays for results and JSON)."""
    sys.stderr.write(f"warning: {text}\n")
    sys.stderr.flush()


def _domain_opts(meta, opts):  # noqa: ANN001, ANN202 - PredictOptions
    """The options with probabilities on when the domain can judge the result's uncertainty."""
    import dataclasses

    dom = getattr(meta, "domain", None)
    if dom is not None and dom.mean_uncertainty is not None and not opts.probabilities:
        return dataclasses.replace(opts, probabilities=True), True
    return opts, False


def _predict_one(
    scan: Path, out: Path, model, meta, opts, extras: dict[str, Path | None], args
) -> tuple[list[Path], list[str], list[str]]:  # noqa: ANN001
    """Read, check against the model's domain, predict, check the result, then write everything
    (nothing is written unless the prediction finished). Returns (written, notes, warnings)."""
    from ..core import domain, io
    from ..core.inference import iter_predict

    vol = io.read(scan, series=args.series, phase=args.phase)
    if args.pixel_size:
        io.set_pixel_size(vol, args.pixel_size)
    prefix = f"{scan.name}: " if args.input.is_dir() and scan != args.input else ""
    warnings = [w.message for w in domain.scan_warnings(meta, vol) if w.severity != "refuse"]
    for text in warnings:  # before the run: a long prediction on the wrong scan is announced at once
        warn(prefix + text)
    opts, drop_probabilities = _domain_opts(meta, opts)
    bar = _Bar(scan.name)
    gen = iter_predict(vol, model, meta, opts)
    try:
        while True:
            bar.update(next(gen))
    except StopIteration as stop:
        pred = stop.value
    finally:
        bar.close()
    after = [w.message for w in domain.check_result(meta.domain, pred)]
    for text in after:
        warn(prefix + text)
    review = _review_items(pred, bool(extras.get("review")))
    if drop_probabilities:
        pred.probabilities = None
    from ..core.atomic import transaction

    protected = [scan]
    written: list[Path] = []
    with transaction():  # every output of this scan, or none (a failed one removes the others)
        if is_seg_path(out):  # result.dcm: a DICOM SEG on the series it was predicted from
            from ..core.io.dicom_seg import Algorithm, write_seg

            alg = Algorithm.from_checkpoint(args.model, meta)
            written.append(
                write_seg(pred.labels, scan, out, alg, series_uid=args.series, protected=protected)
            )
        else:
            written.append(io.write(pred.labels, out, protected=protected))
        if extras.get("probabilities") and pred.probabilities is not None:
            written.append(io.write(pred.probabilities, extras["probabilities"], protected=protected))
        if extras.get("uncertainty") and pred.uncertainty is not None:
            written.append(io.write(pred.uncertainty, extras["uncertainty"], protected=protected))
        if review is not None:
            from ..core.review import write_review_order

            written.append(write_review_order(review, extras["review"], str(scan), protected=protected))
        if extras.get("attention"):
            for i, att in enumerate(pred.attention):
                written.append(
                    io.write(att, _with_tag(extras["attention"], f"_gate{i}"), protected=protected)
                )
    if not args.json:
        for note in pred.notes:
            say(f"{scan.name}: note: {note}")
    return written, list(pred.notes), warnings + after


def _review_items(pred, wanted: bool):  # noqa: ANN001, ANN202 - Prediction -> list[ReviewItem] | None
    """The review order of a prediction (its probabilities, and the TTA spread when it has one)."""
    if not wanted:
        return None
    from ..core.review import review_order

    return review_order(pred.probabilities, pred.uncertainty)


def is_seg_path(path: Path) -> bool:
    """``--out result.dcm`` asks for a DICOM SEG."""
    return path.suffix.lower() in (".dcm", ".dicom")


_FLOAT_FORMATS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".tif", ".tiff")


def _check_outputs(args: argparse.Namespace, folder_mode: bool) -> None:
    """Every output path (type, folder, writability, not an input, not twice) before any work."""
    from ..core.atomic import check_output_folder, check_outputs
    from ..core.errors import ImageWriteError, InferenceError
    from ..core.io import WRITE_FORMATS
    from ..core.io._formats import suffix_of, supported_write_list

    floats = {
        "--save-probabilities": args.save_probabilities,
        "--save-uncertainty": args.save_uncertainty,
        "--save-attention": args.save_attention,
    }
    if folder_mode:
        if args.out.exists() and not args.out.is_dir():
            raise InferenceError(f"--out {args.out} is a file; with a folder of scans give an output folder")
        if args.ext and suffix_of("x" + args.ext) not in WRITE_FORMATS:
            raise ImageWriteError(
                f"--ext {args.ext}: cannot save masks as that; use one of {supported_write_list()}"
            )
        for flag, folder in {"--out": args.out, "--review-order": args.review_order, **floats}.items():
            if folder is not None:
                check_output_folder(folder, flag)
        return
    if args.out.is_dir():
        raise InferenceError(f"--out {args.out} is a folder; give a file name such as mask.nii.gz")
    if suffix_of(args.out) not in WRITE_FORMATS and not is_seg_path(args.out):
        raise ImageWriteError(
            f"--out {args.out.name}: cannot save a mask as {suffix_of(args.out) or '(no extension)'}; "
            f"use one of {supported_write_list()}"
        )
    for flag, p in floats.items():
        if p is not None and suffix_of(p) not in _FLOAT_FORMATS:
            raise ImageWriteError(
                f"{flag} {p.name}: float maps need one of {', '.join(_FLOAT_FORMATS)} "
                f"(not {suffix_of(p) or 'no extension'})"
            )
    if args.review_order is not None:
        from ..core.review import check_review_path

        check_review_path(args.review_order)
    check_outputs(
        {"--out": args.out, "--review-order": args.review_order, **floats}, protected=[args.input, args.model]
    )


def _dist_env() -> tuple[int, int, int]:
    import os

    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def run_predict(args: argparse.Namespace) -> int:
    import time

    from ..core import checkpoint as ckpt
    from ..core.errors import InferenceError
    from ..core.inference import PredictOptions, pick_device

    rank, world, local_rank = _dist_env()
    device = pick_device(args.device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = __import__("torch").device(
            "cuda", local_rank % max(1, __import__("torch").cuda.device_count())
        )
    if not args.input.exists():
        raise InferenceError(f"{args.input} does not exist; check the path")
    if not (args.input.is_file() or args.input.is_dir()):
        raise InferenceError(f"{args.input} is not a regular file or folder (a pipe or a device?)")
    folder_mode = args.input.is_dir() and not _is_dicom_folder(args.input)
    _check_outputs(args, folder_mode)  # before the model is loaded or a voxel is predicted
    post = {}
    if args.min_size:
        post["min_size"] = args.min_size
    if args.largest_component:
        post["largest_component"] = True
    if args.fill_holes:
        post["fill_holes"] = True
    opts = PredictOptions(
        device=str(device),
        overlap=args.overlap,
        batch_size=args.batch_size,
        tta=args.tta or args.save_uncertainty is not None,
        precision=args.precision,
        probabilities=args.save_probabilities is not None or args.review_order is not None,
        probability_dtype=args.probabilities_dtype,
        backend=args.backend,
        attention=args.save_attention is not None,
        uncertainty=args.save_uncertainty is not None or (args.tta and args.review_order is not None),
        postprocess=post or None,
    )
    model, meta = ckpt.load(args.model, device="cpu")

    if not folder_mode:
        if rank != 0:
            return 0
        if is_seg_path(args.out) and not (
            args.input.is_dir() or args.input.suffix.lower() in (".dcm", ".dicom", "")
        ):
            raise InferenceError(
                f"--out {args.out.name}: a DICOM SEG needs a DICOM series as input; use .nii.gz"
            )
        extras = {
            "probabilities": args.save_probabilities,
            "uncertainty": args.save_uncertainty,
            "attention": args.save_attention,
            "review": args.review_order,
        }
        t = time.perf_counter()
        written, notes, warnings = _predict_one(args.input, args.out, model, meta, opts, extras, args)
        seconds = time.perf_counter() - t
        if args.json:
            record = {"input": str(args.input), "written": [str(w) for w in written], "notes": notes}
            say(
                json.dumps(
                    {**record, "seconds": round(seconds, 2), "device": str(device), "warnings": warnings}
                )
            )
            return 0
        for w in written:
            say(f"wrote {w}")
        say(f"done in {seconds:.1f} s on {device}")
        return 0

    scans = _gather(args.input)
    if not scans:
        raise InferenceError(f"no scans found in {args.input} (readable files or DICOM series subfolders)")
    if args.out.exists() and not args.out.is_dir():
        raise InferenceError(f"--out {args.out} is a file; with a folder of scans give an output folder")
    names: dict[str, int] = {}
    jobs = []
    for scan in scans:  # names are fixed before sharding, so every rank agrees on them
        name = _out_name(scan, args.ext)
        if name in names:
            names[name] += 1
            from ..core.atomic import split_suffix

            stem, suffix = split_suffix(name)
            name = f"{stem}_{names[name]}{suffix}"
        names.setdefault(name, 0)
        jobs.append((scan, name))
    mine = jobs[rank::world]
    results: list[tuple[str, str, str, list[str]]] = []  # (scan, status, detail, domain warnings)
    t0 = time.perf_counter()
    for scan, name in mine:
        from ..core.atomic import split_suffix

        stem = split_suffix(name)[0]
        extras = {
            "probabilities": _float_name(args.save_probabilities, stem) if args.save_probabilities else None,
            "uncertainty": _float_name(args.save_uncertainty, stem) if args.save_uncertainty else None,
            "attention": _float_name(args.save_attention, stem) if args.save_attention else None,
            "review": args.review_order / f"{stem}_review.json" if args.review_order else None,
        }
        try:
            written, _, warnings = _predict_one(scan, args.out / name, model, meta, opts, extras, args)
        except SegStudioError as exc:
            if not args.json:
                say(f"skipped {scan.name}: {exc}")
            results.append((str(scan), "failed", str(exc), []))
            continue
        if not args.json:
            say(f"wrote {written[0]}")
        results.append((str(scan), "ok", str(written[0]), warnings))
    if world > 1:
        results = _gather_results(results, rank, world)
        if rank != 0:
            return 0 if all(r[1] == "ok" for r in results) else 1
    failed = [r for r in results if r[1] != "ok"]
    if args.json:
        scans_json = [
            {
                "input": r[0],
                "status": r[1],
                ("written" if r[1] == "ok" else "error"): r[2],
                "warnings": r[3],
            }
            for r in results
        ]
        say(
            json.dumps(
                {"scans": scans_json, "failed": len(failed), "seconds": round(time.perf_counter() - t0, 2)}
            )
        )
        return 1 if failed else 0
    say(
        f"{len(results) - len(failed)} of {len(results)} scans done in {time.perf_counter() - t0:.1f} s"
        + (f" ({world} processes)" if world > 1 else "")
        + (f"; failed: {', '.join(Path(r[0]).name for r in failed)}" if failed else "")
    )
    return 1 if failed else 0


def _gather_results(results: list, rank: int, world: int) -> list:
    """Collect every rank's results (gloo: works for CPU and GPU runs alike)."""
    import torch.distributed as dist

    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo")
    try:
        everything: list = [None] * world
        dist.all_gather_object(everything, results)
    finally:
        if own_group:
            dist.destroy_process_group()
    return [r for part in everything for r in part]
