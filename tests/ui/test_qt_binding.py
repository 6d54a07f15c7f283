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


def test_emit_keeps_true_alive(qtbot) -> None:
    """PySide6 6.12.0's ``SignalInstance.emit()`` returns True without a reference: every emit from
    Python takes one from ``True`` and thousands of progress signals abort the app ("bool_dealloc").
    seg_studio calls ``signal.emit`` plainly and relies on the pinned binding; this catches a bad one."""
    from qtpy.QtCore import QObject, Signal

    class Probe(QObject):
        ping = Signal(int)

    probe = Probe()
    got: list[int] = []
    probe.ping.connect(got.append)
    probe.ping.emit(0)
    gc.collect()
    before = sys.getrefcount(True)
    for i in range(500):
        probe.ping.emit(i)
    gc.collect()
    assert len(got) == 501
    # Sound: unchanged. Broken (6.12.0): exactly -500.
    assert sys.getrefcount(True) - before > -50
