"""The core stays importable without a GUI stack, and the reading path without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import seg_studio

GUI = {"qtpy", "PySide6", "PySide2", "PyQt5", "PyQt6", "napari", "magicgui", "vispy", "superqt"}
CORE = Path(seg_studio.__file__).parent / "core"


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_no_core_module_imports_a_gui_package() -> None:
    """Static, so it covers every module under core/, including ones nothing imports yet."""
    offenders = []
    for py in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{py.relative_to(CORE)}:{node.lineno} {n}" for n in names if n.split(".")[0] in GUI
            ]
    assert len(list(CORE.rglob("*.py"))) > 5
    assert offenders == []


def test_importing_core_and_the_reader_loads_no_gui_and_no_torch() -> None:
    """A fresh interpreter: seg_studio.core and the whole reading path (io, samples, the napari
    reader/writer adapters, the CLI's file commands) load neither Qt/napari/magicgui nor torch, so
    napari starts fast with the plugin installed."""
    mods = _loaded_after(
        "import seg_studio.core, seg_studio.core.io, seg_studio.core.atomic, seg_studio.core.samples, "
        "seg_studio.ui.reader, seg_studio.ui.writer, seg_studio.ui.sample_data, seg_studio.cli.scans\n"
        "from seg_studio.core import io\n"
        "io.summary(io.read(io.write(seg_studio.core.samples.make_sample_2d()[0], "
        "__import__('tempfile').mkdtemp() + '/s.nii.gz')))"
    )
    assert {"SimpleITK", "seg_studio"} <= mods
    assert "torch" not in mods
    assert not mods & GUI, mods & GUI


def test_no_function_in_core_is_over_80_lines() -> None:
    """The house rule: core/ reads as short named steps (fit, fine-tune and predict included)."""
    long = []
    for py in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(py.read_text())):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.end_lineno - node.lineno + 1 > 80
            ):
                long.append(
                    f"{py.relative_to(CORE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                )
    assert long == []
