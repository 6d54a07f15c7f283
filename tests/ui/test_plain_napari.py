"""Plain napari with the plugin installed and fresh settings: a scan opens with our reader.

What ``napari scan.nii.gz`` does is ``QtViewer._qt_open([path], stack=False)``; with two readers and no
preference napari shows its reader dialog. Ours is preselected there, OK reads the scan, and the read
records the preference, so the next scan (or a DICOM folder beside the first) opens without asking.
A file that cannot be read is one notification and no exception (an exception there ended napari).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("napari")

from qtpy.QtCore import QTimer  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402


@pytest.fixture
def fresh_settings(tmp_path, monkeypatch):
    """napari's settings as on a new install (a file of this test's own)."""
    import napari.settings
    from napari.settings import NapariSettings

    monkeypatch.setattr(napari.settings, "_SETTINGS", NapariSettings(config_path=tmp_path / "napari.yaml"))
    monkeypatch.setenv("SEG_STUDIO_HOME", str(tmp_path / "home"))
    return napari.settings.get_settings()


class DialogWatcher:
    """Answers napari's reader dialog like a user pressing OK, and notes what it offered."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.timer = QTimer()
        self.timer.timeout.connect(self._poll)
        self.timer.start(50)

    def _poll(self) -> None:
        from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog

        for w in QApplication.topLevelWidgets():
            if isinstance(w, QtReaderDialog) and w.isVisible():
                self.seen.append(
                    {
                        "choices": [b.text() for b in w.reader_btn_group.buttons()],
                        "checked": w._get_plugin_choice(),
                    }
                )
                w.accept()

    def stop(self) -> None:
        self.timer.stop()


def _open_like_the_cli(viewer, path: Path) -> list:
    before = list(viewer.layers)
    viewer.window._qt_viewer._qt_open([str(path)], stack=False)
    return [ly for ly in viewer.layers if ly not in before]


def test_a_nifti_opens_with_our_reader_and_napari_asks_once(
    make_napari_viewer, fresh_settings, data_dir, tmp_path
):
    viewer = make_napari_viewer()
    watcher = DialogWatcher()
    try:
        first = data_dir / "msd_task04_hippocampus" / "images" / "hippocampus_003.nii.gz"
        (layer,) = _open_like_the_cli(viewer, first)
        assert len(watcher.seen) == 1  # fresh settings: napari asks once...
        assert watcher.seen[0]["checked"] == "Seg Studio"  # ...with us preselected (not napari builtins)
        assert "napari builtins" in watcher.seen[0]["choices"]
        assert layer.metadata["seg_studio"]["source"] == str(first)
        assert fresh_settings.plugins.extension2reader["*.nii.gz"] == "seg-studio"
        # from now on: no dialog, for NIfTI, MetaImage and NRRD alike
        second = data_dir / "msd_task04_hippocampus" / "images" / "hippocampus_014.nii.gz"
        (layer2,) = _open_like_the_cli(viewer, second)
        assert len(watcher.seen) == 1 and layer2.metadata["seg_studio"]["source"] == str(second)
        for suffix in ("*.mha", "*.mhd", "*.nrrd", "*.nii"):
            assert fresh_settings.plugins.extension2reader[suffix] == "seg-studio"
        from seg_studio.core import io

        for suffix in (".mha", ".nrrd"):
            other = io.write(io.read(second), tmp_path / f"copy{suffix}")
            (layer3,) = _open_like_the_cli(viewer, other)
            assert len(watcher.seen) == 1 and layer3.metadata["seg_studio"]["source"] == str(other)
    finally:
        watcher.stop()


def test_a_dicom_folder_opens_with_our_reader_and_its_siblings_without_asking(
    make_napari_viewer, fresh_settings, data_dir
):
    viewer = make_napari_viewer()
    watcher = DialogWatcher()
    root = data_dir / "tcia_brain_tumor_progression_dicom" / "images"
    try:
        (layer,) = _open_like_the_cli(viewer, root / "PGBM-003_19950329")
        assert len(watcher.seen) == 1 and watcher.seen[0]["checked"] == "Seg Studio"
        assert layer.metadata["seg_studio"]["meta"]["modality"] == "MR"
        (layer2,) = _open_like_the_cli(viewer, root / "PGBM-006_19961210")  # the folder beside it
        assert len(watcher.seen) == 1 and "seg_studio" in layer2.metadata
    finally:
        watcher.stop()


def test_a_bad_file_is_one_notification_and_napari_goes_on(
    make_napari_viewer, fresh_settings, tmp_path, data_dir
):
    from napari.utils.notifications import notification_manager

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a NIfTI")
    viewer = make_napari_viewer()
    watcher = DialogWatcher()
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        assert _open_like_the_cli(viewer, bad) == []  # first time: through the dialog (we are chosen)
        assert len(watcher.seen) == 1
        src = data_dir / "msd_task04_hippocampus" / "images" / "hippocampus_003.nii.gz"
        shutil.copy(src, tmp_path / "good.nii.gz")
        assert len(_open_like_the_cli(viewer, tmp_path / "good.nii.gz")) == 1
        assert len(watcher.seen) == 2  # a failed read records no preference; the good one does
        assert _open_like_the_cli(viewer, bad) == []  # preferred now: no dialog, no exception
        assert len(watcher.seen) == 2
        errors = [n for n in seen if "broken.nii.gz" in str(n.message)]
        assert len(errors) == 2 and all("\n" not in str(n.message) for n in errors)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
        watcher.stop()


def test_after_the_set_up_command_napari_never_asks(make_napari_viewer, fresh_settings, data_dir, capsys):
    """The README's set-up runs ``seg-studio napari-reader``: from then on even the first scan opens
    without the dialog, and a reader the user chose for a format is kept."""
    from seg_studio.cli import main

    fresh_settings.plugins.extension2reader = {"*.nrrd": "napari"}
    assert main(["napari-reader"]) == 0
    out = capsys.readouterr().out
    assert "*.nii.gz" in out and "kept your choice for *.nrrd: napari" in out
    assert fresh_settings.plugins.extension2reader["*.nrrd"] == "napari"
    viewer = make_napari_viewer()
    watcher = DialogWatcher()
    try:
        first = data_dir / "msd_task04_hippocampus" / "images" / "hippocampus_003.nii.gz"
        (layer,) = _open_like_the_cli(viewer, first)
        assert watcher.seen == [] and layer.metadata["seg_studio"]["source"] == str(first)
        series = data_dir / "tcia_brain_tumor_progression_dicom" / "images" / "PGBM-003_19950329"
        (layer,) = _open_like_the_cli(viewer, series)  # a DICOM folder, the first one ever: no dialog
        assert watcher.seen == [] and layer.metadata["seg_studio"]["meta"]["modality"] == "MR"
    finally:
        watcher.stop()
    assert main(["napari-reader", "--overwrite"]) == 0
    assert fresh_settings.plugins.extension2reader["*.nrrd"] == "seg-studio"


def _png_folder(folder: Path) -> Path:
    import numpy as np
    import SimpleITK as sitk

    folder.mkdir()
    for i in range(2):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((16, 20), 40 * i, np.uint8)), str(folder / f"{i}.png"))
    return folder


def test_a_folder_without_dicom_still_opens_with_napari_own_reader(
    make_napari_viewer, fresh_settings, tmp_path
):
    """Preferring seg_studio for folders must not take other folders from napari: a stack of PNGs
    opens as napari's own reader opens it (one layer of two planes), without a dialog."""
    from seg_studio.cli import main

    assert main(["napari-reader"]) == 0
    assert fresh_settings.plugins.extension2reader["*/"] == "seg-studio"
    viewer = make_napari_viewer()
    watcher = DialogWatcher()
    try:
        (layer,) = _open_like_the_cli(viewer, _png_folder(tmp_path / "pngs"))
        assert watcher.seen == [] and "seg_studio" not in layer.metadata
        assert layer.data.shape == (2, 16, 20)
    finally:
        watcher.stop()


def test_folders_stay_unclaimed_when_another_plugin_reads_folders(fresh_settings, tmp_path, capsys):
    """With a second folder reader installed (a real npe2 plugin, registered for this test) there is
    no single other reader to hand a non-DICOM folder to, so the set-up leaves napari's question."""
    import npe2
    from npe2.manifest import PluginManifest

    from seg_studio.cli import main

    manifest = PluginManifest(
        name="folder-reader-for-test",
        contributions={
            "commands": [
                {"id": "folder-reader-for-test.read", "title": "read", "python_name": "os.path:isdir"}
            ],
            "readers": [
                {
                    "command": "folder-reader-for-test.read",
                    "accepts_directories": True,
                    "filename_patterns": [],
                }
            ],
        },
    )
    pm = npe2.PluginManager.instance()
    with pm.events.plugins_registered.blocked():  # napari's menus need not know it
        pm.register(manifest)
    try:
        assert main(["napari-reader"]) == 0
    finally:
        pm.unregister("folder-reader-for-test")
    assert "*/" not in fresh_settings.plugins.extension2reader
    assert fresh_settings.plugins.extension2reader["*.nii.gz"] == "seg-studio"
    assert "napari asks which reader opens a folder" in capsys.readouterr().out
