"""``seg-studio --self-test``: prove that this installation can do the whole job, end to end.

An installer is only useful if what it installed works on the user's machine, so the self-test runs
the same trips the app takes, on the synthetic sample and the bundled model, and says which one
broke: write the sample scan to a temp folder and read it back (SimpleITK), load the bundled
checkpoint (safetensors + the model registry), predict on the CPU, save the mask atomically and read
it back with its geometry, and - only when a display exists - open the napari window with our panel,
show the mask, render one frame and close it. The frozen bundle runs exactly this code, which is how
``installer/build_bundle.sh`` knows the bundle is complete (a missing data file, hook or shared
library shows up here, not on a radiologist's desk).

Everything but the viewer step is Qt-free; napari is imported only inside that step.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import CheckpointError, SegStudioError

log = logging.getLogger(__name__)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
MODEL_SUFFIX = ".segmodel"


@dataclass
class Check:
    """One step of the self-test: its name, PASS/FAIL/SKIP, one line of detail and its duration."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0


@dataclass
class SelfTestReport:
    """The outcome of ``run_self_test``: ``ok`` only when no step failed and the core steps ran."""

    checks: list[Check] = field(default_factory=list)
    environment: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != FAIL for c in self.checks)

    def lines(self) -> list[str]:
        out = [f"seg-studio self-test: {self.environment}"]
        for c in self.checks:
            out.append(f"  {c.status} {c.name:<9} {c.detail} ({c.seconds:.1f} s)")
        n_fail = sum(c.status == FAIL for c in self.checks)
        n_skip = sum(c.status == SKIP for c in self.checks)
        verdict = "passed" if self.ok else f"FAILED ({n_fail} failed)"
        skipped = f", {n_skip} skipped" if n_skip else ""
        out.append(f"self-test {verdict}: {len(self.checks)} checks{skipped} in {self.seconds:.1f} s")
        return out


class _Failed(Exception):
    """A step failed; the message is the one line shown to the user."""


# --- where the bundled files are ------------------------------------------------------------------


def resource_dirs() -> list[Path]:
    """Candidate ``resources`` folders, most specific first.

    ``SEG_STUDIO_RESOURCES`` overrides; a PyInstaller bundle keeps them in ``_internal/seg_studio``;
    an installed wheel inside the package; a source checkout next to the package (the same places
    ``ui.model_section.bundled_model_dirs`` looks).
    """
    pkg = Path(__file__).resolve().parent
    found: list[Path] = []
    env = os.environ.get("SEG_STUDIO_RESOURCES")
    if env:
        found.append(Path(env))
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        found.append(Path(frozen) / "seg_studio" / "resources")
    found += [pkg / "resources", pkg.parent / "resources"]
    return [d for d in dict.fromkeys(found) if d.is_dir()]


def find_bundled_checkpoint(dims: int, resources: Path | None = None) -> Path:
    """The first ``resources/models/**/*.segmodel`` for a ``dims``-D model (metadata read only)."""
    from .core.checkpoint import read_meta

    dirs = [resources] if resources is not None else resource_dirs()
    seen: list[str] = []
    for d in dirs:
        for path in sorted((d / "models").rglob(f"*{MODEL_SUFFIX}")):
            try:
                meta = read_meta(path)
            except SegStudioError as exc:
                log.warning("skipping %s: %s", path, exc)
                seen.append(f"{path.name} (unreadable)")
                continue
            if meta.spatial_dims == dims and meta.interactive is None:
                return path
            seen.append(f"{path.name} ({meta.spatial_dims}D)")
    where = ", ".join(str(d / "models") for d in dirs) or "no resources folder found"
    have = f"; found only {', '.join(seen)}" if seen else ""
    raise CheckpointError(
        f"no bundled {dims}D model (*{MODEL_SUFFIX}) in {where}{have}; reinstall seg_studio or pass --checkpoint"
    )


def has_display() -> bool:
    """A window can be opened: X11/Wayland on Linux, always on macOS and Windows."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def describe_environment() -> str:
    from . import __version__

    try:
        import torch

        torch_v = f"torch {torch.__version__}"
    except Exception as exc:  # noqa: BLE001 - reported by the model step; here only a label
        torch_v = f"torch unavailable ({type(exc).__name__})"
    kind = "frozen bundle" if getattr(sys, "frozen", False) else f"Python {platform.python_version()}"
    return f"seg-studio {__version__}, {kind}, {torch_v}, {platform.system()} {platform.machine()}"


# --- the steps ------------------------------------------------------------------------------------


def _predict_cpu(image: Any, model: Any, meta: Any) -> tuple[Any, str]:
    """Labels for ``image`` on the CPU through the same inference code the app uses."""
    from .core.inference import PredictOptions, predict

    pred = predict(image, model, meta, PredictOptions(device="cpu", tta=False))
    return pred.labels, f"core.inference on {pred.device}"


def _dice_by_class(pred: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    out = {}
    for v in np.unique(truth):
        if v == 0:
            continue
        a, b = pred == v, truth == v
        denom = a.sum() + b.sum()
        out[int(v)] = float(2 * (a & b).sum() / denom) if denom else 1.0
    return out


def _shape(vol: Any) -> str:
    return "x".join(str(n) for n in vol.spatial_shape)


def _temp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def _step(report: SelfTestReport, name: str, fn: Callable[[], str | None]) -> bool:
    """Run one step; a failure becomes a FAIL line (with the exception's one line), never a crash."""
    t0 = time.perf_counter()
    try:
        detail = fn() or ""
        status = SKIP if detail.startswith("skipped") else PASS
    except (_Failed, SegStudioError) as exc:
        status, detail = FAIL, str(exc)
    except Exception as exc:  # noqa: BLE001 - the point is to report any breakage as one line
        log.debug("self-test step %s failed", name, exc_info=True)
        status, detail = FAIL, f"{type(exc).__name__}: {exc}"
    report.checks.append(Check(name, status, detail, time.perf_counter() - t0))
    return status != FAIL


@dataclass
class _State:
    """What the steps hand each other."""

    work: Path
    image: Any = None
    truth: Any = None
    scan_path: Path | None = None
    model: Any = None
    meta: Any = None
    model_path: Path | None = None
    labels: Any = None
    mask_path: Path | None = None


def _step_sample(s: _State, dims: int) -> str:
    from .core import io
    from .core.samples import make_sample_2d, make_sample_3d

    image, truth = (make_sample_2d if dims == 2 else make_sample_3d)()
    # Fixed folder names: the reader guesses "labels" from words such as "seg" or "gt" in a file's
    # name and its two parent folders, and a random temp-folder name could hold one.
    folder = s.work / "scans" / "input"
    folder.mkdir(parents=True, exist_ok=True)
    s.scan_path = io.write(image, folder / f"sample_{dims}d.nii.gz")
    back = io.read(s.scan_path)
    if not back.same_geometry(image) or not np.allclose(back.array, image.array, atol=1e-4):
        raise _Failed(f"the {dims}D sample did not survive a NIfTI round trip (geometry or pixels changed)")
    s.image, s.truth = back, truth
    sp = " x ".join(f"{v:g}" for v in back.spacing)
    return f"{dims}D sample {_shape(back)} written as NIfTI and read back, spacing {sp} mm"


def _step_model(s: _State, dims: int, checkpoint: Path | None, resources: Path | None) -> str:
    from .core import checkpoint as ckpt
    from .core.models import count_parameters

    path = Path(checkpoint) if checkpoint is not None else find_bundled_checkpoint(dims, resources)
    s.model, s.meta = ckpt.load(path, device="cpu")
    s.model_path = path
    if s.meta.spatial_dims != dims:
        raise _Failed(f"{path.name} is a {s.meta.spatial_dims}D model; the self-test needs a {dims}D one")
    if s.meta.in_channels != s.image.channels:
        raise _Failed(
            f"{path.name} expects {s.meta.in_channels} channel(s); the sample has {s.image.channels}"
        )
    n = count_parameters(s.model)
    return f"{s.meta.architecture} {dims}D ({n:,} parameters) loaded from {path}"


def _step_predict(s: _State, min_dice: float | None) -> str:
    labels, how = _predict_cpu(s.image, s.model, s.meta)
    if labels.spatial_shape != s.image.spatial_shape:
        raise _Failed(f"mask is {_shape(labels)} but the scan is {_shape(s.image)}")
    allowed = {c.value for c in s.meta.classes}
    found = {int(v) for v in np.unique(labels.array)}
    if not found <= allowed:
        raise _Failed(f"mask holds values {sorted(found - allowed)} that are not classes of the model")
    dice = _dice_by_class(labels.array, s.truth.array)
    mean = float(np.mean(list(dice.values()))) if dice else 0.0
    if min_dice is not None and mean < min_dice:
        raise _Failed(
            f"mean Dice vs the sample's ground truth {mean:.3f} < {min_dice}: the model output is wrong"
        )
    names = {c.value: c.name for c in s.meta.classes}
    s.labels = labels.with_array(labels.array, channels=1)
    s.labels.meta = {**labels.meta, "kind": "labels"}
    fg = [names.get(v, str(v)) for v in sorted(found) if v != 0]
    return f"{how}; classes found: {', '.join(fg) or 'none'}; mean Dice vs sample truth {mean:.3f}"


def _step_save(s: _State) -> str:
    from .core import io
    from .core.errors import ImageWriteError
    from .core.volume import LabelInfo

    s.labels.labels = {c.value: LabelInfo(c.value, c.name, tuple(c.color)) for c in s.meta.classes}
    scan_bytes = s.scan_path.read_bytes()
    try:
        io.write(s.labels, s.scan_path, protected=[s.scan_path])
    except ImageWriteError:
        pass
    else:
        raise _Failed("saving the mask over the input scan was not refused")
    if s.scan_path.read_bytes() != scan_bytes:
        raise _Failed("a refused save changed the input scan")
    s.mask_path = io.write(s.labels, s.work / "mask.nii.gz", protected=[s.scan_path])
    left = _temp_leftovers(s.work) + _temp_leftovers(s.scan_path.parent)
    if left:
        raise _Failed(f"temporary files left behind: {', '.join(left)}")
    size = s.mask_path.stat().st_size
    return f"mask saved atomically to {s.mask_path.name} ({size} bytes), no temp file left, scan protected"


def _step_read_back(s: _State) -> str:
    from .core import io

    back = io.read(s.mask_path)
    if not back.same_geometry(s.image):
        raise _Failed(f"mask geometry differs from the scan: {back.geometry()} vs {s.image.geometry()}")
    if not np.issubdtype(back.array.dtype, np.integer):
        raise _Failed(f"mask was stored as {back.array.dtype}, not an integer type")
    if not np.array_equal(back.array, s.labels.array):
        raise _Failed("mask read back differs from the mask written")
    return f"mask {_shape(back)} ({back.array.dtype}) matches the scan's spacing, origin and direction"


def _wait_until(ready: Callable[[], bool], app: Any, timeout_s: float) -> bool:
    """Process Qt events until ``ready()`` (True) or ``timeout_s`` passes (False)."""
    end = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > end:
            return False
        app.processEvents()
        time.sleep(0.02)
    return True


def _step_viewer(s: _State, viewer: bool | None, timeout_s: float = 300.0) -> str:
    if viewer is False:
        return "skipped (--no-viewer)"
    if not has_display():
        return "skipped (no display; on a headless Linux machine run it under xvfb-run)"
    if s.scan_path is None:
        raise _Failed("no scan to show: the sample step failed")
    old_home = os.environ.get("SEG_STUDIO_HOME")
    os.environ["SEG_STUDIO_HOME"] = str(s.work / "home")  # autosaves of this run stay in the temp folder
    try:
        import napari
        from npe2 import PluginManager
        from qtpy.QtCore import QThreadPool
        from qtpy.QtWidgets import QApplication

        from .ui.app import build_window

        pm = PluginManager.instance()
        pm.discover()  # what napari does at start-up; finds plugins through their entry-point metadata
        # "napari" is napari's builtin plugin (its own readers/writers): a bundle without its
        # entry-point metadata opens no plain .tif/.npy files; "seg-studio" is ours.
        missing = []
        for plugin in ("seg-studio", "napari"):
            try:
                pm.get_manifest(plugin)
            except KeyError:
                missing.append(plugin)
        if missing:
            raise _Failed(
                f"napari does not see the plugin(s) {', '.join(missing)} (npe2 entry points missing)"
            )
        win, panel = build_window(s.scan_path, show=True)
        app = QApplication.instance()
        try:
            if not any(ly.__class__.__name__ == "Image" for ly in win.layers):
                raise _Failed("the scan did not open through seg_studio's napari reader")
            if s.labels is not None:
                win.add_labels(s.labels.array, scale=s.image.spacing_zyx, name="self-test mask", opacity=0.6)
            # The panel lists variants and checkpoints from a worker thread (torch imported there).
            if not _wait_until(lambda: panel.models.variant.count() > 1, app, timeout_s):
                raise _Failed(f"the panel's model list was not ready after {timeout_s:.0f} s")
            win.window.resize(1200, 800)  # room for the canvas beside the panel
            app.processEvents()
            shot = win.screenshot(canvas_only=True, flash=False)
            if shot.size == 0 or float(np.asarray(shot)[..., :3].std()) == 0.0:
                raise _Failed("the canvas rendered a flat image (no working OpenGL?)")
            h, w = shot.shape[:2]
            from PIL import Image

            Image.fromarray(np.asarray(shot)).save(s.work / "viewer.png")  # kept with --keep DIR
        finally:
            panel.shutdown()
            win.close()
            QThreadPool.globalInstance().waitForDone(10_000)
            app.processEvents()
    finally:
        if old_home is None:
            os.environ.pop("SEG_STUDIO_HOME", None)
        else:
            os.environ["SEG_STUDIO_HOME"] = old_home
    return f"napari {napari.__version__}: window with the seg_studio panel showed scan and mask ({w}x{h} px), closed"


def _step_finetune(s: _State, steps: int = 2) -> str:
    """A few optimizer steps of the one-click fine-tune on the sample: the training code path
    (autograd, optimizer, checkpoint provenance) needs modules that prediction never imports."""
    from .core import checkpoint as ckpt
    from .core.progress import run_to_end
    from .core.training import iter_finetune

    parent_hash = ckpt.file_hash(s.model_path)
    out = s.work / "finetuned.segmodel"
    result = run_to_end(
        iter_finetune(s.model_path, [(s.image, s.truth)], out, budget_s=120, steps=steps, device="cpu")
    )
    if ckpt.file_hash(s.model_path) != parent_hash:
        raise _Failed(f"fine-tuning changed the parent checkpoint {s.model_path.name}")
    _, meta = ckpt.load(result.path, device="cpu")
    if result.steps < 1 or meta.architecture != s.meta.architecture:
        raise _Failed(
            f"fine-tune wrote {result.path.name} after {result.steps} steps; expected a trained copy"
        )
    return f"{result.steps} fine-tune steps on the sample wrote {result.path.name}; the parent is unchanged"


# --- entry points ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _work_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="seg-studio-selftest-") as d:
        yield Path(d)


def run_self_test(
    checkpoint: str | os.PathLike[str] | None = None,
    resources: str | os.PathLike[str] | None = None,
    dims: int = 2,
    viewer: bool | None = None,
    min_dice: float | None = None,
    workdir: str | os.PathLike[str] | None = None,
    finetune: bool = True,
) -> SelfTestReport:
    """Run every step on the ``dims``-D sample; never raises for a broken installation.

    ``checkpoint`` overrides the bundled model (else the first ``dims``-D one in ``resources/models``);
    ``viewer``: None = when a display exists, False = never; ``min_dice`` also fails a model whose
    mask is too far from the sample's ground truth; ``workdir`` keeps the files (else a temp folder);
    ``finetune=False`` skips the few fine-tune steps.
    """
    t0 = time.perf_counter()
    report = SelfTestReport(environment=describe_environment())
    res = Path(resources) if resources is not None else None
    ck = Path(checkpoint) if checkpoint is not None else None
    with _work_dir(Path(workdir) if workdir is not None else None) as work:
        s = _State(work=work)
        core_steps: list[tuple[str, Callable[[], str | None]]] = [
            ("sample", lambda: _step_sample(s, dims)),
            ("model", lambda: _step_model(s, dims, ck, res)),
            ("predict", lambda: _step_predict(s, min_dice)),
            ("save", lambda: _step_save(s)),
            ("read-back", lambda: _step_read_back(s)),
            ("finetune", lambda: _step_finetune(s) if finetune else "skipped (--no-finetune)"),
        ]
        for name, fn in core_steps:
            if not _step(report, name, fn):
                report.checks.append(Check("rest", SKIP, "later steps skipped after a failure"))
                break
        else:
            _step(report, "viewer", lambda: _step_viewer(s, viewer))
    report.seconds = time.perf_counter() - t0
    return report


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, help="a .segmodel to test instead of the bundled model")
    p.add_argument(
        "--resources", type=Path, help="a resources folder holding models/ (default: the bundled one)"
    )
    p.add_argument("--dims", type=int, choices=(2, 3), default=2, help="test on the 2D or the 3D sample")
    p.add_argument("--no-viewer", action="store_true", help="skip the napari window even if a display exists")
    p.add_argument("--no-finetune", action="store_true", help="skip the few fine-tune steps")
    p.add_argument(
        "--min-dice", type=float, help="also fail when the mean Dice vs the sample's truth is lower"
    )
    p.add_argument("--keep", type=Path, metavar="DIR", help="write the test files to DIR and keep them")


def run(args: argparse.Namespace) -> int:
    """CLI side: print the report; exit code 0 only when every step that ran passed."""
    report = run_self_test(
        checkpoint=args.checkpoint,
        resources=args.resources,
        dims=args.dims,
        viewer=False if args.no_viewer else None,
        min_dice=args.min_dice,
        workdir=args.keep,
        finetune=not args.no_finetune,
    )
    for line in report.lines():
        print(line)  # noqa: T201 - the CLI's output
    return 0 if report.ok else 1
