"""The desktop app: a napari window titled seg_studio with our panel docked.

``run_app(scan)`` opens ``scan`` through our reader (or the bundled 2D sample when none is given),
selects a bundled checkpoint that fits it when ``resources/models`` has one, and runs the Qt event
loop. ``build_window`` does everything but the loop, for the screenshot script and the benchmark.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TITLE = "seg_studio"


def open_scan(viewer: Any, scan: Path) -> list[Any]:
    """Open a scan with seg_studio's reader; a bad file becomes a notification, never a crash."""
    from napari.utils.notifications import show_error

    from ..core.errors import SegStudioError

    try:
        return list(viewer.open(str(scan), plugin="seg-studio"))
    except SegStudioError as exc:
        show_error(str(exc))
    except Exception as exc:  # noqa: BLE001 - napari wraps reader errors; show the one line
        cause = exc.__cause__ or exc.__context__
        from .workers import user_message

        show_error(user_message(cause if isinstance(cause, SegStudioError) else exc))
    return []


def _make_sample(dims: int) -> Any:
    from ..core.samples import make_sample_2d, make_sample_3d

    return (make_sample_2d if dims == 2 else make_sample_3d)()[0]


def open_sample(viewer: Any, dims: int = 2, image: Any = None) -> list[Any]:
    """The synthetic sample scan (made by code; its ground truth is not opened as the mask)."""
    from .reader import volume_layer_data

    if image is None:
        image = _make_sample(dims)
    data, kwargs, kind = volume_layer_data(image, name=f"sample {dims}D")
    return [viewer.add_image(data, **kwargs)] if kind == "image" else []


def prefer_reader() -> None:
    """Let File > Open (and later plain ``napari scan.nii.gz``) use our reader without a choice dialog.

    Records seg_studio for the medical formats only, keeping any reader the user chose; a settings
    file that cannot be written must not stop the app, so that is logged and skipped.
    """
    from .reader import prefer_seg_studio_reader

    try:
        changed = prefer_seg_studio_reader()
    except Exception:  # noqa: BLE001 - a preference is a convenience, the app must start
        log.warning("could not record seg_studio as the preferred reader", exc_info=True)
        return
    if changed:
        log.info("seg_studio is now the preferred reader for %s", ", ".join(changed))


#: when (``time.time()``) the last ``build_window`` reached each step, for the launch benchmark
MILESTONES: dict[str, float] = {}


def _import_before_qt() -> None:
    """Import the Qt-free half of what the window needs before Qt: once PySide6 is loaded, shiboken's
    import hook reads the source of every module imported after it (``inspect.getsource``, for its
    ``__feature__`` switch). Measured: napari's models, layers and settings took 0.4-0.9 s longer
    after ``import PySide6.QtWidgets`` than before it, at load 9 on 2 cores. None of these import Qt
    (vispy picks its Qt backend when the canvas is made)."""
    import app_model  # noqa: F401
    import napari.components  # noqa: F401
    import napari.layers  # noqa: F401
    import napari.settings  # noqa: F401
    import npe2  # noqa: F401
    import vispy.gloo  # noqa: F401
    import vispy.scene  # noqa: F401


class _Prefetch(threading.Thread):
    """Builds pint's unit registry (and the sample, when no scan is given) while the window is made.

    pint parses its definitions file on first use: 0.4 s quiet, 1-2 s at load 8, inside napari's
    first ``add_image``; the sample needs scipy.ndimage (0.3 s to import). Doing both here overlaps
    them with the work that waits on the X server and GL; ``install_units`` makes the registry the
    application registry unless napari already used one.
    """

    def __init__(self, sample_dims: int | None) -> None:
        super().__init__(name="seg_studio prefetch", daemon=True)
        self.registry: Any = None
        self.sample: Any = None
        self._sample_dims = sample_dims
        self.start()

    def run(self) -> None:
        try:
            import pint

            registry = pint.UnitRegistry(on_redefinition="raise")  # as pint's lazy default
            registry.pixel  # noqa: B018 - forces the parse
            self.registry = registry
            if self._sample_dims is not None:
                self.sample = _make_sample(self._sample_dims)
        except Exception:  # noqa: BLE001 - an optimisation only: the main thread does it itself
            log.debug("prefetching for the window failed", exc_info=True)

    def install_units(self) -> None:
        """Wait for the thread; make its registry pint's application registry if none was used yet."""
        self.join()
        if self.registry is None:
            return
        try:
            import pint
            from pint.registry import LazyRegistry

            current = getattr(pint.get_application_registry(), "_registry", None)
            if isinstance(current, LazyRegistry):  # napari has not made a unit yet
                pint.set_application_registry(self.registry)
        except (ImportError, AttributeError):  # another pint: napari builds its own, as before
            log.debug("pint's application registry was left as it was", exc_info=True)


def _draw_now(viewer: Any, timeout_s: float = 2.0) -> None:
    """Let the window map and paint before the scan is read and torch imported: the user sees the app
    (panel, empty canvas) at once, and the scan appears in it a moment later."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    win = viewer.window._qt_window
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        app.processEvents()
        handle = win.windowHandle()
        if win.isVisible() and handle is not None and handle.isExposed():
            break
        time.sleep(0.005)
    app.processEvents()


def build_window(scan: Path | None = None, show: bool = True) -> tuple[Any, Any]:
    """A napari viewer with the seg_studio panel docked and a scan (or the sample) open.

    The window is drawn before the scan is opened, and the model list (which imports torch in a
    worker) starts after it: both would otherwise hold the GIL while the first frame waits.
    """
    MILESTONES.clear()
    MILESTONES["start"] = time.time()
    _import_before_qt()
    ahead = _Prefetch(sample_dims=2 if scan is None else None)
    import napari

    from .native_guard import guard_triton
    from .panel import SegStudioPanel

    guard_triton()
    prefer_reader()
    MILESTONES["imported"] = time.time()
    viewer = napari.Viewer(title=TITLE, show=show)
    MILESTONES["viewer_made"] = time.time()
    panel = SegStudioPanel(viewer, probe=False)
    viewer.window.add_dock_widget(panel, name=TITLE, area="right")
    MILESTONES["panel_docked"] = time.time()
    if show:
        viewer.window.resize(1400, 900)  # room for the canvas beside the panel
        _draw_now(viewer)
        MILESTONES["window_drawn"] = time.time()
    ahead.install_units()
    # the panel picks the checkpoint whose domain fits the scan best (``ModelSection.suit_scan``)
    if scan is not None:
        open_scan(viewer, scan)
    else:
        open_sample(viewer, 2, image=ahead.sample)
    MILESTONES["scan_opened"] = time.time()
    panel.models.start_probe()
    return viewer, panel


def run_app(scan: Path | None = None) -> int:
    """Open the app and run until the window closes; returns the Qt exit code."""
    import napari

    build_window(scan)  # the panel itself writes its last autosave when the application quits
    napari.run()
    return 0
