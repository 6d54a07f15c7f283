"""What a user pastes into a bug report: the versions of seg_studio and what it runs on.

Versions come from the installed distributions' metadata, so nothing heavy (napari, Qt) is imported
just to name it; torch is imported only to name the compute device.
"""

from __future__ import annotations

import platform
from importlib import metadata

#: Qt bindings napari can run on, in the order qtpy prefers them.
QT_BINDINGS = ("PySide6-Essentials", "PySide6", "PyQt6", "PyQt5", "PySide2")


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def qt_binding() -> str | None:
    """``"PySide6-Essentials 6.11.3"`` for the first Qt binding installed, else None."""
    for dist in QT_BINDINGS:
        version = installed_version(dist)
        if version:
            return f"{dist} {version}"
    return None


def compute_device() -> str:
    """The device ``--device auto`` would use, with its name (CUDA GPU, MPS or the CPU's model)."""
    from .inference.devices import describe_hardware, pick_device

    return describe_hardware(pick_device("auto"))


def version_lines(device: bool = True) -> list[str]:
    """One ``name: version`` line per component; missing optional parts say ``not installed``."""
    from .. import __version__

    missing = "not installed"
    lines = [
        f"seg-studio: {__version__}",
        f"python: {platform.python_version()} ({platform.system()} {platform.machine()})",
        f"torch: {installed_version('torch') or missing}",
        f"napari: {installed_version('napari') or missing}",
        f"qt: {qt_binding() or missing}",
    ]
    if device:
        lines.append(f"device: {compute_device()}")
    return lines


def version_report(device: bool = True) -> str:
    """:func:`version_lines` as one block of text."""
    return "\n".join(version_lines(device))
