"""The desktop app: a napari window titled seg_studio with our panel docked.

``run_app(scan)`` opens ``scan`` through our reader (or the bundled 2D sample when none is given),
selects a bundled checkpoint that fits it when ``resources/models`` has one, and runs the Qt event
loop. ``build_window`` does everything but the loop, for the screenshot script and the benchmark.
"""

from __future__ import annotations

import logging
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


def open_sample(viewer: Any, dims: int = 2) -> list[Any]:
    """The synthetic sample scan (made by code; its ground truth is not opened as the mask)."""
    from ..core.samples import make_sample_2d, make_sample_3d
    from .reader import volume_layer_data

    image, _ = (make_sample_2d if dims == 2 else make_sample_3d)()
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


def build_window(scan: Path | None = None, show: bool = True) -> tuple[Any, Any]:
    """A napari viewer with the seg_studio panel docked and a scan (or the sample) open."""
    import napari

    from .native_guard import guard_triton
    from .panel import SegStudioPanel

    guard_triton()
    prefer_reader()
    viewer = napari.Viewer(title=TITLE, show=show)
    panel = SegStudioPanel(viewer)
    viewer.window.add_dock_widget(panel, name=TITLE, area="right")
    if show:
        viewer.window.resize(1400, 900)  # room for the canvas beside the panel
    # the panel picks the checkpoint whose domain fits the scan best (``ModelSection.suit_scan``)
    if scan is not None:
        open_scan(viewer, scan)
    else:
        open_sample(viewer, 2)
    return viewer, panel


def run_app(scan: Path | None = None) -> int:
    """Open the app and run until the window closes; returns the Qt exit code."""
    import napari

    build_window(scan)  # the panel itself writes its last autosave when the application quits
    napari.run()
    return 0
