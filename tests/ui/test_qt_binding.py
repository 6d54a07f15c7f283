"""The Qt binding must not corrupt reference counts.

PySide6 6.12.0 on Python 3.11 drops a reference to ``None`` on every ``processEvents`` (and to
True/False elsewhere); None is not immortal before 3.12, so a long session ends in
"Fatal Python error: none_dealloc". The pin in pyproject.toml avoids it; this test catches a binding
upgrade that brings it back.
"""

from __future__ import annotations

import gc
import sys


def test_event_loop_keeps_none_alive(qtbot) -> None:
    from qtpy.QtWidgets import QApplication, QLabel

    label = QLabel("seg_studio")
    qtbot.addWidget(label)
    label.show()
    app = QApplication.instance()
    for _ in range(10):
        app.processEvents()
    gc.collect()
    before = sys.getrefcount(None)
    for _ in range(500):
        app.processEvents()
    gc.collect()
    # A sound binding leaves the count unchanged; the broken one loses exactly one per call.
    assert sys.getrefcount(None) - before > -50
