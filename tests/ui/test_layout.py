"""The panel's layout on a 1400x900 screen: main actions in view without scrolling, a canvas that is
not squeezed when the panel docks, axis names on the slider, names that are not cut."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("napari")

from qtpy.QtCore import QPoint, QRect  # noqa: E402

SCREEN = (1400, 900)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEG_STUDIO_HOME", str(tmp_path / "home"))


def _docked(make_napari_viewer, qtbot, size=SCREEN):  # noqa: ANN001, ANN202
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*size)
    qtbot.wait(50)
    dock, panel = viewer.window.add_plugin_dock_widget("seg-studio", "seg_studio")
    qtbot.waitUntil(lambda: bool(panel.models.variants()), timeout=60_000)
    qtbot.waitUntil(panel.warmed_up, timeout=60_000)
    return viewer, panel


def _in_view(widget, window) -> bool:  # noqa: ANN001
    """The whole widget is visible inside the window, and inside every scroll area above it."""
    if not widget.isVisible():
        return False
    top_left = widget.mapTo(window, QPoint(0, 0))
    rect = QRect(top_left, widget.size())
    if not QRect(QPoint(0, 0), window.size()).contains(rect):
        return False
    parent = widget.parentWidget()
    while parent is not None and parent is not window:
        if type(parent).__name__ == "QWidget" and parent.objectName() == "qt_scrollarea_viewport":
            port = QRect(parent.mapTo(window, QPoint(0, 0)), parent.size())
            if not port.contains(rect):
                return False
        parent = parent.parentWidget()
    return True


def test_main_actions_are_in_view_without_scrolling(make_napari_viewer, qtbot, data_dir: Path) -> None:
    viewer, panel = _docked(make_napari_viewer, qtbot)
    window = viewer.window._qt_window
    assert (window.width(), window.height()) == SCREEN
    viewer.open(
        data_dir / "msd_task04_hippocampus" / "images" / "hippocampus_003.nii.gz", plugin="seg-studio"
    )
    qtbot.wait(100)
    assert _in_view(panel.run.predict_button, window)  # above the tabs: always
    for section, button in (
        (panel.correct, panel.correct.save_button),
        (panel.finetune_section, panel.finetune_section.finetune_button),
        (panel.models, panel.models.open_button),
    ):
        panel.show_section(section)
        qtbot.wait(50)
        assert _in_view(button, window), button.text()
        assert _in_view(panel.run.predict_button, window)
    panel.show_section(panel.finetune_section)
    panel.finetune_section.rerun_button.setVisible(True)  # what a finished fine-tune shows
    qtbot.wait(50)
    assert _in_view(panel.finetune_section.rerun_button, window)
    # no tab is wider than the panel (a clipped row would hide its right-hand buttons)
    for i in range(panel.tabs.count()):
        page = panel.tabs.widget(i)
        body = page.widget()
        assert body.minimumSizeHint().width() <= page.viewport().width() + 1, panel.tabs.tabText(i)


def test_docking_leaves_the_canvas_most_of_the_window(make_napari_viewer, qtbot) -> None:
    viewer, panel = _docked(make_napari_viewer, qtbot)
    qtbot.wait(100)
    canvas = viewer.window._qt_viewer.canvas.native
    # napari's own layer list/controls take ~330 px; the panel took 473 px before (canvas 581 px)
    assert panel.width() <= 420
    assert canvas.width() >= 0.45 * SCREEN[0]
    # the panel never forces napari's window to grow: it asks for little height
    assert panel.minimumSizeHint().height() < 400


def test_docking_in_napari_s_fresh_window_makes_room_for_the_canvas(make_napari_viewer, qtbot) -> None:
    """napari opens at 1089x630 on a 1400x900 screen with fresh settings: docking the panel there left
    the canvas a strip (270 px); the window now grows by the panel, as far as the screen allows."""
    viewer, panel = _docked(make_napari_viewer, qtbot, size=(1089, 630))
    window = viewer.window._qt_window
    screen = window.screen().availableGeometry()
    assert (screen.width(), screen.height()) == SCREEN  # pytest-xvfb's screen (pyproject.toml)
    qtbot.waitUntil(lambda: window.width() == SCREEN[0], timeout=5_000)
    qtbot.wait(100)
    assert viewer.window._qt_viewer.canvas.native.width() >= 600
    assert QRect(QPoint(0, 0), QPoint(SCREEN[0] - 1, SCREEN[1] - 1)).contains(window.frameGeometry())
    window.showMaximized()  # a maximised window is left as it is
    qtbot.wait(50)
    assert not panel.make_room()


def test_add_section_is_one_call(make_napari_viewer, qtbot) -> None:
    from qtpy.QtWidgets import QGroupBox

    viewer, panel = _docked(make_napari_viewer, qtbot)
    extra = QGroupBox("Extra")
    n = panel.tabs.count()
    panel.add_section("Extra", extra)
    assert panel.tabs.count() == n + 1 and panel.section_tab(extra) == "Extra"
    more = QGroupBox("More")
    panel.add_section("Extra", more)  # the same tab: below the first
    assert panel.tabs.count() == n + 1 and panel.section_tab(more) == "Extra"
    assert more.mapTo(panel, QPoint(0, 0)).y() > extra.mapTo(panel, QPoint(0, 0)).y() or not more.isVisible()
    assert panel.section_tab(panel.correct) == "Correct"
    assert [panel.section_tab(s) for s in (panel.models, panel.view, panel.finetune_section)] == [
        "Model",
        "View",
        "Fine-tune",
    ]
    assert panel.section_tab(panel.measure_section) == "Measure"


def test_layer_names_fit_the_layer_list_and_the_slider_names_its_axis(
    make_napari_viewer, qtbot, data_dir: Path, tmp_path: Path
) -> None:
    """A TCIA series' layers were cut in the middle ("PGBM-003_199... T1post mask") and the slider read
    "-3": names of the layers the panel makes now fit napari's layer list, and the axes are z, y, x."""
    from qtpy.QtGui import QFont, QFontMetrics
    from test_panel import run_predict, sample_classes, tiny_checkpoint

    from seg_studio.core.samples import make_sample_3d

    viewer, panel = _docked(make_napari_viewer, qtbot)
    folder = data_dir / "tcia_brain_tumor_progression_dicom" / "images" / "PGBM-003_19950329"
    viewer.open(folder, plugin="seg-studio")
    assert viewer.dims.axis_labels == ("z", "y", "x")
    qt_dims = viewer.window._qt_viewer.dims
    shown = [w.axis_label.text() for w in qt_dims.slider_widgets if w.isVisible()]
    assert shown == ["z"]  # the one slider of a 3D scan, named
    _, labels = make_sample_3d()
    panel.open_checkpoint(tiny_checkpoint(tmp_path / "models", 3, sample_classes(labels)))
    panel.models.want_probabilities.setChecked(True)
    assert run_predict(panel, qtbot) == "done", panel.run.last_error
    qtbot.waitUntil(lambda: not panel.run.busy, timeout=60_000)
    for name in panel.run.map_names():  # maps become layers when first shown
        panel.run.show_map(name)
    view = viewer.window._qt_viewer.layers
    font = QFont(view.font())
    font.setBold(True)
    metrics = QFontMetrics(font)
    # thumbnail, eye and type icons take the rest of a row: 193 px at the default 302 px (a 193 px name
    # showed whole, a 206 px one did not)
    room = view.viewport().width() - 109
    names = [ly.name for ly in viewer.layers]
    assert (
        any("mask" in n for n in names)
        and any("p(" in n for n in names)
        and any("attention" in n for n in names)
    )
    scan = viewer.layers[0].name
    assert metrics.horizontalAdvance(f"{scan} mask") > room  # the old name did not fit
    for name in names[1:]:  # the scan's own name is the file's
        assert metrics.horizontalAdvance(name) <= room, name
