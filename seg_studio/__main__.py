"""``python -m seg_studio``: the CLI (``python -m seg_studio gui`` opens the app)."""

from __future__ import annotations

import sys
from pathlib import Path


def launch_app(scan: Path | None = None) -> int:
    """Open napari with the seg_studio panel docked; returns the Qt exit code."""
    from .ui.app import run_app

    return run_app(scan)


if __name__ == "__main__":
    from .cli import main

    sys.exit(main())
