"""Command line: ``seg-studio <command> ...``.

Every command calls the same core functions as the GUI. Errors of the ``SegStudioError`` family are
printed as one line on stderr with exit code 2; nothing else is caught, so real bugs keep their
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .. import selftest
from ..core.errors import SegStudioError
from . import compare, export, measure, pacs, predict, refine, scans, train

Runner = Callable[[argparse.Namespace], int]
log = logging.getLogger("seg_studio")


# --- commands -----------------------------------------------------------------------------------


def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run_models(args: argparse.Namespace) -> int:
    from ..core.models import count_parameters, create_model, get_spec, list_models

    rows = []
    for name in list_models():
        spec = get_spec(name)
        params = {}
        if spec.trainable_from_scratch:
            for d in spec.dims:
                params[f"{d}d"] = count_parameters(
                    create_model(name, spatial_dims=d, in_channels=1, out_channels=2)
                )
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "dims": list(spec.dims),
                "parameters": params,
                "presets": sorted(spec.presets),
                "paper": spec.paper,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<20} {'dims':<6} {'params 2D':>11} {'params 3D':>11}  description")
    for r in rows:
        p2, p3 = r["parameters"].get("2d"), r["parameters"].get("3d")
        dims = "/".join(f"{d}D" for d in r["dims"])
        print(f"{r['name']:<20} {dims:<6} {p2 or '-':>11} {p3 or '-':>11}  {r['description']}")
    return 0


def _add_gui(p: argparse.ArgumentParser) -> None:
    p.add_argument("scan", nargs="?", type=Path, help="a scan to open (default: the bundled sample)")


def _run_gui(args: argparse.Namespace) -> int:
    from ..ui.app import run_app

    return run_app(args.scan)


def _add_napari_reader(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite", action="store_true", help="replace a reader the user chose for these formats"
    )


def _run_napari_reader(args: argparse.Namespace) -> int:
    """napari asks which plugin should read a .nii.gz until a preference exists (its own reader
    claims the pattern too); the README's set-up runs this once so plain ``napari scan.nii.gz``
    never asks. A choice the user made is kept unless ``--overwrite``."""
    try:
        from napari.settings import get_settings

        from ..ui.reader import FOLDER_PATTERN, PLUGIN_NAME, PREFERRED_PATTERNS, prefer_seg_studio_reader
    except ImportError as exc:
        raise SegStudioError(f"napari is not installed ({exc}); install seg-studio[napari]") from exc
    prefer_seg_studio_reader(overwrite=args.overwrite)
    prefs = get_settings().plugins.extension2reader
    ours = [p for p in PREFERRED_PATTERNS if prefs.get(p) == PLUGIN_NAME]
    print(f"napari opens {' '.join(ours) or 'none of the medical formats'} with seg-studio's reader")
    for p in PREFERRED_PATTERNS:
        if p not in ours:
            print(f"kept your choice for {p}: {prefs[p]} (--overwrite replaces it)")
    folders = prefs.get(FOLDER_PATTERN)
    if folders == PLUGIN_NAME:
        print("napari opens DICOM folders with seg-studio's reader (other folders as before)")
    elif folders:
        print(f"kept your choice for folders: {folders} (--overwrite replaces it)")
    else:
        print("napari asks which reader opens a folder: another plugin besides napari's own reads folders")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Runner]] = {
    "models": ("list the U-Net variants", _add_models, _run_models),
    "self-test": (
        "check this installation end to end on the bundled sample and model (same as --self-test)",
        selftest.add_args,
        selftest.run,
    ),
    "gui": ("open the napari app", _add_gui, _run_gui),
    "napari-reader": (
        "make plain napari open NIfTI/MHA/NRRD with seg-studio's reader without asking",
        _add_napari_reader,
        _run_napari_reader,
    ),
    "info": (
        "print a scan's size, spacing, origin, direction, type and range (or a DICOM folder's series)",
        scans.add_info,
        scans.run_info,
    ),
    "convert": (
        "convert a scan or DICOM series to another format (e.g. DICOM -> NIfTI)",
        scans.add_convert,
        scans.run_convert,
    ),
    "demo": (
        "write the synthetic samples, describe them and segment the 2D one with the bundled model (the headless job)",
        scans.add_demo,
        scans.run_demo,
    ),
    "predict": (
        "segment a scan, a DICOM folder or a folder of scans with a .segmodel",
        predict.add_predict,
        predict.run_predict,
    ),
    "refine": (
        "apply a clicks file to a scan with an interactive model (click to correct; refine SCAN --model M --clicks C --out OUT)",
        refine.add_refine,
        refine.run_refine,
    ),
    "inspect": (
        "print a checkpoint's metadata (its model card)",
        predict.add_inspect,
        predict.run_inspect,
    ),
    "train": (
        "train a variant on image/label pairs (recipe file and/or flags)",
        train.add_train,
        train.run_train,
    ),
    "finetune": (
        "fine-tune a checkpoint on corrected labels into a NEW checkpoint",
        train.add_finetune,
        train.run_finetune,
    ),
    "evaluate": (
        "Dice, IoU and HD95 (mm) per class: files or folders",
        train.add_evaluate,
        train.run_evaluate,
    ),
    "compare": (
        "train and score several variants on the same data, split and budget (tables + chart)",
        compare.add_compare,
        compare.run_compare,
    ),
    "export": (
        "write a label map on a DICOM series as a DICOM SEG (export LABELS --like DICOM_DIR --out result.dcm)",
        export.add_export,
        export.run_export,
    ),
    "measure": (
        "per class: volume, voxels, bounding box and extent (mm), largest component, intensity statistics",
        measure.add_measure,
        measure.run_measure,
    ),
    "pacs": (
        "a PACS over DICOMweb (--url) or DIMSE (--aet/--host/--port): find studies/series, get a series, send a SEG",
        pacs.add_pacs,
        pacs.run_pacs,
    ),
    "import-weights": (
        "turn a plain PyTorch state dict into a .segmodel (never unpickles code)",
        predict.add_import_weights,
        predict.run_import_weights,
    ),
}


# --- entry point --------------------------------------------------------------------------------


class _VersionAction(argparse.Action):
    """``--version``: what a bug report needs, not just our own version number."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from ..core.about import version_report

        print(version_report())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seg-studio", description="Segment 2D/3D medical images with the U-Net family."
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the versions of seg-studio, torch, napari, Qt and the compute device, and exit",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--allow-external-data",
        action="store_true",
        help="read .mhd/.nrrd headers whose pixel data file lies outside the header's folder",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(_run=run)
    return parser


def _gui_shortcut(argv: list[str], command_line: bool = True) -> list[str]:
    """``seg-studio`` and ``seg-studio SCAN`` mean ``seg-studio gui [SCAN]`` when a display exists.

    No arguments opens the app only from the real command line (``main()`` called by code with an
    empty list still prints the help).
    """
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in (
        "darwin",
        "win32",
    )
    if not argv:
        return ["gui"] if has_display and command_line else argv
    first = argv[0]
    if first not in COMMANDS and not first.startswith("-") and len(argv) == 1 and Path(first).exists():
        return ["gui", first]
    return argv


#: Exit code when the reader of stdout went away (128 + SIGPIPE, what ``yes | head`` gives ``yes``).
EXIT_STDOUT_CLOSED = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a closed stdout (``seg-studio info X | head``) ends it quietly, whatever it was."""
    try:
        try:
            code = _main(argv)
        finally:  # also after --help's SystemExit
            sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe prints a traceback
        return code
    except BrokenPipeError:
        return _stdout_closed()


def _stdout_closed() -> int:
    """Point stdout at the null device so that nothing more (not even the final flush) fails."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (a test's capture)
        pass
    return EXIT_STDOUT_CLOSED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    if "--self-test" in raw:  # the installer's spelling of ``seg-studio self-test``
        raw[raw.index("--self-test")] = "self-test"
    args = parser.parse_args(_gui_shortcut(raw, argv is None))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from ..core.text import printable

    try:
        with _sigterm_as_exception(), _external_data(args.allow_external_data), _safe_output():
            return int(args._run(args) or 0)
    except SegStudioError as exc:
        print(f"seg-studio {args.command}: error: {printable(exc)}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        from ..core.limits import memory_error_line

        print(
            f"seg-studio {args.command}: error: {memory_error_line(exc, f'running {args.command}')}",
            file=sys.stderr,
        )
        return 2
    except RuntimeError as exc:  # torch's CPU allocator says so in a RuntimeError
        text = str(exc).lower()
        if not any(w in text for w in ("can't allocate memory", "not enough memory", "out of memory")):
            raise
        from ..core.limits import memory_error_line

        print(
            f"seg-studio {args.command}: error: {memory_error_line(exc, f'running {args.command}')}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"seg-studio {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Terminated:
        print(f"seg-studio {args.command}: terminated; nothing was written", file=sys.stderr)
        return 143


@contextlib.contextmanager
def _safe_output() -> Iterator[None]:
    """Names from files (class names, DICOM tags, label names) reach the terminal inert: every
    command's output passes through ``SafeStream``."""
    from ..core.text import SafeStream

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(sys.stdout), SafeStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


@contextlib.contextmanager
def _external_data(allowed: bool) -> Iterator[None]:
    """``--allow-external-data`` for this command only (``core.io`` reads the variable)."""
    key = "SEG_STUDIO_ALLOW_EXTERNAL_DATA"
    before = os.environ.get(key)
    if allowed:
        os.environ[key] = "1"
    try:
        yield
    finally:
        if allowed:
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before


class Terminated(BaseException):
    """SIGTERM, raised as an exception so every save in progress removes its temp file."""


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not the main thread (code calling main() from a worker)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
