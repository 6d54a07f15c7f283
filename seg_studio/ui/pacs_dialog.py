"""*PACS...*: browse a PACS's series, open one in the viewer, send the corrected mask back as a DICOM SEG.

Every network call runs in a worker (``Job``): a slow or dead PACS never freezes the window, and
its one-line error lands in the status line. Pulled series go to the local cache by UID
(``core.pacs``), so opening the same series twice does not download it again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger(__name__)

COLUMNS = ("Patient", "Date", "Modality", "Description", "Images", "Series UID")


def _once(fn: Callable[[], Any]) -> Generator[Any, None, Any]:
    """A one-step generator for ``Job`` (which drives core generators)."""
    if False:  # pragma: no cover - makes this a generator
        yield None
    return fn()


class PacsDialog(QDialog):
    """Find series, open one, send the mask of the current scan as a DICOM SEG."""

    #: emitted with the folder of a series that was opened
    opened = Signal(object)
    #: emitted with the number of instances stored
    sent = Signal(int)

    def __init__(
        self, viewer: Any, prepare_seg: Callable[[Path], Callable[[], Path]], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("PACS")
        self.viewer = viewer
        #: snapshots the mask on the main thread; the returned call writes the SEG (in the worker)
        self._prepare_seg = prepare_seg
        self.rows: list[Any] = []
        self.job: Any = None

        self.protocol = QComboBox()
        self.protocol.addItems(["DICOMweb", "DIMSE"])
        self.url = QLineEdit(os.environ.get("SEG_STUDIO_PACS_URL", "http://127.0.0.1:8042/dicom-web"))
        self.host = QLineEdit("127.0.0.1")
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(4242)
        self.aet = QLineEdit("ORTHANC")
        self.user = QLineEdit()
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        form = QFormLayout()
        form.addRow("Protocol", self.protocol)
        form.addRow("DICOMweb URL", self.url)
        form.addRow("Host / port", _row(self.host, self.port))
        form.addRow("PACS AE title", self.aet)
        form.addRow("User / password", _row(self.user, self.password))

        self.find_button = QPushButton("Find series")
        self.open_button = QPushButton("Open selected")
        self.send_button = QPushButton("Send labels as DICOM SEG")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.find_button)
        lay.addWidget(self.table, 1)
        lay.addLayout(_hbox(self.open_button, self.send_button))
        lay.addWidget(self.status)
        self.resize(760, 460)

        self.protocol.currentIndexChanged.connect(lambda _: self._protocol_changed())
        self.find_button.clicked.connect(lambda: self.find())
        self.open_button.clicked.connect(lambda: self.open_selected())
        self.send_button.clicked.connect(lambda: self.send_labels())
        self.table.itemDoubleClicked.connect(lambda _: self.open_selected())
        self._protocol_changed()

    # --- settings ----------------------------------------------------------------------------------
    def _protocol_changed(self) -> None:
        web = self.protocol.currentText() == "DICOMweb"
        self.url.setEnabled(web)
        for w in (self.host, self.port, self.aet):
            w.setEnabled(not web)

    def config(self) -> Any:
        from ..core.pacs import PacsConfig

        if self.protocol.currentText() == "DICOMweb":
            return PacsConfig(
                url=self.url.text().strip(),
                username=self.user.text().strip() or None,
                password=self.password.text() or None,
            )
        return PacsConfig(
            host=self.host.text().strip(), port=int(self.port.value()), aet=self.aet.text().strip()
        )

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    # --- actions (buttons call these) ----------------------------------------------------------------
    def find(self) -> bool:
        """List the PACS's series (in a worker); fills the table."""
        from ..core import pacs

        cfg = self.config()
        return self._run(
            lambda: pacs.connect(cfg).find_series(), self._show_rows, f"searching {cfg.describe()}..."
        )

    def select_row(self, index: int) -> None:
        self.table.selectRow(index)

    def selected(self) -> Any:
        rows = self.table.selectionModel().selectedRows()
        return self.rows[rows[0].row()] if rows else None

    def open_selected(self) -> bool:
        """Pull the selected series into the cache (in a worker) and open it in the viewer."""
        from ..core import pacs

        row = self.selected()
        if row is None:
            self.status.setText("select a series first")
            return False
        cfg = self.config()
        return self._run(
            lambda: pacs.get_series(pacs.connect(cfg), row.study_uid, row.series_uid),
            self._open_folder,
            f"pulling {row.description or row.series_uid}...",
        )

    def send_labels(self) -> bool:
        """Save the mask of the current scan as a DICOM SEG and push it to the PACS."""
        from ..core import pacs

        outgoing = pacs.cache_root() / "outgoing"
        try:
            outgoing.mkdir(parents=True, exist_ok=True)
            path = outgoing / f"seg_{os.getpid()}_{id(self):x}.dcm"
            write = self._prepare_seg(path)
        except Exception as exc:  # noqa: BLE001 - the UI edge: one line
            from .workers import user_message

            self.status.setText(str(exc) if isinstance(exc, ValueError) else user_message(exc))
            return False
        cfg = self.config()

        def push() -> int:
            try:
                return pacs.send_files(pacs.connect(cfg), [write()])
            finally:
                path.unlink(missing_ok=True)

        return self._run(push, self._sent, f"writing the DICOM SEG and sending it to {cfg.describe()}...")

    # --- plumbing ------------------------------------------------------------------------------------
    def _run(self, fn: Callable[[], Any], done: Callable[[Any], None], message: str) -> bool:
        from .workers import Job

        if self.busy:
            self.status.setText("busy: wait for the PACS to answer")
            return False
        self.status.setText(message)
        for b in (self.find_button, self.open_button, self.send_button):
            b.setEnabled(False)
        self.job = Job(
            lambda token: _once(fn),
            on_done=done,
            on_error=lambda msg, exc: self.status.setText(msg),
            on_finished=self._idle,
            name="pacs",
        )
        return True

    def _idle(self) -> None:
        for b in (self.find_button, self.open_button, self.send_button):
            b.setEnabled(True)

    def _show_rows(self, rows: list[Any]) -> None:
        self.rows = list(rows)
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            cells = (r.patient_name, r.study_date, r.modality, r.description, r.instances, r.series_uid)
            for j, v in enumerate(cells):
                item = QTableWidgetItem("" if v is None else str(v))
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.table.setItem(i, j, item)
        self.status.setText(f"{len(self.rows)} series")

    def _open_folder(self, folder: Path) -> None:
        from napari.layers import Layer

        from .reader import read_layers

        for data, kwargs, kind in read_layers(folder):
            self.viewer.add_layer(Layer.create(data, kwargs, kind))
        self.status.setText(f"opened {folder.name} (cached in {folder.parent})")
        self.opened.emit(folder)

    def _sent(self, n: int) -> None:
        self.status.setText(f"stored {n} DICOM SEG instance(s) on the PACS")
        self.sent.emit(n)


def _row(*widgets: QWidget) -> QWidget:
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        lay.addWidget(x)
    return w


def _hbox(*widgets: QWidget) -> QHBoxLayout:
    lay = QHBoxLayout()
    for x in widgets:
        lay.addWidget(x)
    return lay
