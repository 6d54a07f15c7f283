"""The About tab: the versions a bug report needs (seg_studio, Python, torch, napari, Qt, device).

The same lines as ``seg-studio --version``. Versions come from package metadata at once; the device
line waits until the model section has probed the devices in its worker, so torch is already
imported and naming the device costs the GUI thread nothing noticeable.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QLabel, QPushButton, QVBoxLayout, QWidget

from ..core.about import compute_device, version_lines


class AboutSection(QWidget):
    """Selectable version lines and a button that copies them to the clipboard."""

    def __init__(self) -> None:
        super().__init__()
        self.label = QLabel()
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setWordWrap(True)
        self.copy_button = QPushButton("Copy for a bug report")
        self.copy_button.clicked.connect(self.copy)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.label)
        lay.addWidget(self.copy_button)
        self._lines = [*version_lines(device=False), "device: (probing...)"]
        self._show()

    def devices_probed(self) -> None:
        """Fill in the compute device once torch is loaded (called when the model section has probed)."""
        self._lines[-1] = f"device: {compute_device()}"
        self._show()

    def text(self) -> str:
        """The version report as plain text."""
        return "\n".join(self._lines)

    def copy(self) -> None:
        QApplication.clipboard().setText(self.text())

    def _show(self) -> None:
        self.label.setText(self.text())
