"""The core stays importable without a GUI stack, and the reading path without torch."""

from __future__ import annotations

import subprocess
import sys

GUI = ("qtpy", "PySide6", "PyQt5", "PyQt6", "napari", "magicgui", "vispy")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_core_imports_no_gui() -> None:
    mods = _loaded_after(
        "import seg_studio.core, seg_studio.core.io, seg_studio.core.atomic, seg_studio.core.samples, "
        "seg_studio.core.volume, seg_studio.core.models"
    )
    assert "seg_studio" in mods
    assert not mods & set(GUI), mods & set(GUI)


def test_io_and_reader_do_not_import_torch() -> None:
    """napari starts fast with the plugin: reading a scan never pulls in torch (1.7 s, 0.65 GB)."""
    mods = _loaded_after(
        "import seg_studio.core.io, seg_studio.core.samples, seg_studio.ui.reader, seg_studio.ui.writer, "
        "seg_studio.ui.sample_data, seg_studio.cli_io"
    )
    assert "SimpleITK" in mods
    assert "torch" not in mods
    assert not mods & set(GUI)
