"""The desktop app window, the CLI's way into it, and the worker/plot building blocks."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("napari")

from seg_studio.core.errors import Cancelled, InferenceError  # noqa: E402
from seg_studio.core.progress import Progress  # noqa: E402


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_STUDIO_HOME", str(tmp_path / "home"))


def test_app_window_opens_the_sample_with_the_panel_docked(qtbot, tmp_path):
    from seg_studio.ui.app import TITLE, build_window
    from seg_studio.ui.panel import SegStudioPanel

    viewer, panel = build_window(None, show=True)
    try:
        assert viewer.title == TITLE
        assert isinstance(panel, SegStudioPanel)
        assert viewer.window.dock_widgets[TITLE] is panel
        assert [ly.name for ly in viewer.layers] == ["sample 2D"]
        assert panel.scan_layer().name == "sample 2D"
        qtbot.waitUntil(lambda: bool(panel.models.variants()), timeout=60_000)
        assert "attention_unet" in panel.models.variants()
        assert "cpu" in panel.models.devices()
    finally:
        panel.shutdown()
        viewer.close()


def test_app_reports_a_bad_scan_and_stays_open(qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    from seg_studio.ui.app import build_window

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer, panel = build_window(bad, show=True)
        assert len(viewer.layers) == 0
        assert any("broken.nii.gz" in str(n.message) and "\n" not in str(n.message) for n in seen)
        qtbot.waitUntil(lambda: bool(panel.models.variants()), timeout=60_000)
        panel.shutdown()
        viewer.close()
    finally:
        notification_manager.notification_ready.disconnect(seen.append)


def test_cli_opens_the_app_for_a_bare_scan_argument(tmp_path):
    from seg_studio.cli.main import _gui_shortcut

    scan = tmp_path / "x.nii.gz"
    scan.write_bytes(b"")
    assert _gui_shortcut([str(scan)]) == ["gui", str(scan)]
    assert _gui_shortcut(["models"]) == ["models"]
    assert _gui_shortcut([], command_line=False) == []


def _count(n, token, fail_at=None, sleep=0.01):
    for i in range(n):
        token.raise_if_cancelled()
        if i == fail_at:
            raise InferenceError("the model does not fit this scan; pick another checkpoint")
        time.sleep(sleep)
        yield Progress(i + 1, n, "counting", metrics={"loss": 1.0 / (i + 1)})
    return n * 10


def test_job_forwards_progress_and_the_result(qtbot):
    from seg_studio.ui.workers import Job

    seen, result, finished = [], [], []
    job = Job(
        lambda token: _count(5, token),
        on_progress=seen.append,
        on_done=result.append,
        on_finished=lambda: finished.append(1),
    )
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert result == [50] and [p.done for p in seen] == [1, 2, 3, 4, 5]
    assert not job.running


def test_job_cancel_drops_the_result_and_reports_cancelled(qtbot):
    from seg_studio.ui.workers import Job

    result, cancelled, finished = [], [], []
    job = Job(
        lambda token: _count(500, token),
        on_done=result.append,
        on_cancelled=lambda: cancelled.append(1),
        on_finished=lambda: finished.append(1),
    )
    job.cancel()
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert cancelled == [1] and result == []


def test_job_error_becomes_one_line(qtbot):
    from seg_studio.ui.workers import Job, user_message

    errors, finished = [], []
    Job(
        lambda token: _count(5, token, fail_at=2),
        on_error=lambda msg, exc: errors.append((msg, exc)),
        on_finished=lambda: finished.append(1),
    )
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert errors and errors[0][0] == "the model does not fit this scan; pick another checkpoint"
    assert "out of memory" in user_message(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert "\n" not in user_message(ValueError("a\nb"))
    assert user_message(Cancelled("cancelled by the user; nothing was written")).startswith("cancelled")


def test_loss_plot_draws_its_series(qtbot):
    from seg_studio.ui.plot_widget import DICE_COLOR, LOSS_COLOR, LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 160)
    for step in range(20):
        plot.add(step, loss=1.0 / (step + 1), dice=step / 20)
    plot.add(21, loss=float("nan"))
    assert len(plot.loss) == 20 and len(plot.dice) == 20
    img = plot.grab().toImage()

    def near(color, tol=40):
        return sum(
            1
            for x in range(img.width())
            for y in range(img.height())
            if sum(
                abs(a - b) for a, b in zip(img.pixelColor(x, y).getRgb()[:3], color.getRgb()[:3], strict=True)
            )
            < tol
        )

    assert near(DICE_COLOR) > 50 and near(LOSS_COLOR) > 50  # both curves are drawn


def test_triton_guard_keeps_torch_working_without_triton():
    """In a fresh process: after the guard, torch._dynamo (what optimisers import) still loads,
    ``import triton`` fails cleanly and ``find_spec`` still answers (torch.cuda asks it)."""
    import subprocess
    import sys

    code = (
        "import importlib.util, sys\n"
        "from seg_studio.ui.native_guard import guard_triton\n"
        "assert guard_triton()\n"
        "import torch, torch._dynamo\n"
        "from torch.utils._triton import has_triton_package\n"
        "assert not has_triton_package()\n"
        "assert importlib.util.find_spec('triton') is not None\n"
        "m = torch.nn.Linear(2, 2); torch.optim.AdamW(m.parameters()).step()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_thousands_of_progress_signals_do_not_drain_true(qtbot):
    """A whole Job (worker thread, queued signals, plain ``signal.emit``) must leave True's reference
    count alone: PySide6 6.12.0 took one per emit and a long fine-tune aborted the app
    ("bool_dealloc: deallocating True"). seg_studio does not patch counts; the pinned binding is sound."""
    import sys

    from napari.qt.threading import GeneratorWorker

    from seg_studio.ui.workers import Job

    # an earlier test's start-up warm-up (imports) may still run, and imports add references to True
    GeneratorWorker.await_workers(msecs=120_000)

    def run(n: int) -> int:
        finished: list[int] = []
        before = sys.getrefcount(True)
        Job(lambda token: _count(n, token, sleep=0), on_finished=lambda: finished.append(1))
        qtbot.waitUntil(lambda: bool(finished), timeout=60_000)
        qtbot.wait(50)
        return sys.getrefcount(True) - before

    run(10)  # first job of the process: imports add references to True
    assert abs(run(3000)) < 100  # on the leaking binding this is about -3000


def test_app_start_prefers_our_reader_without_overriding_a_user_choice(
    qtbot, tmp_path, monkeypatch, data_dir
):
    """File > Open (viewer.open with no plugin) uses our reader after start-up; a user's choice stays."""
    import napari.settings
    from napari.settings import NapariSettings, get_settings

    from seg_studio.ui.app import build_window

    monkeypatch.setattr(napari.settings, "_SETTINGS", NapariSettings(config_path=tmp_path / "settings.yaml"))
    get_settings().plugins.extension2reader = {"*.mha": "napari"}  # a choice the user made
    scan = data_dir / "msd_task04_hippocampus" / "images" / "hippocampus_014.nii.gz"
    viewer, panel = build_window(None, show=False)
    try:
        prefs = get_settings().plugins.extension2reader
        assert prefs["*.nii.gz"] == "seg-studio" and prefs["*.nrrd"] == "seg-studio"
        assert prefs["*.mha"] == "napari"
        (layer,) = viewer.open(scan, plugin=None)  # what File > Open does
        assert layer.metadata["seg_studio"]["source"] == str(scan)
    finally:
        panel.shutdown()
        viewer.close()


def test_a_job_whose_widget_was_deleted_stays_silent(qtbot):
    """Closing the window deletes the panel; a job still running must not call into deleted widgets."""
    from qtpy.QtWidgets import QLabel

    from seg_studio.ui.workers import Job

    label = QLabel("ready")
    calls: list[int] = []

    class Owner(QLabel):
        def done(self, value):  # noqa: ANN001, ANN202
            calls.append(value)
            self.setText("done")  # would raise "already deleted" on a deleted widget

    owner = Owner()
    job = Job(lambda token: _count(30, token), on_done=owner.done)
    owner.deleteLater()
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert calls == [] and job.token.cancelled
    label.deleteLater()


def test_closing_the_viewer_while_start_up_work_runs_prints_no_traceback(tmp_path):
    """The viewer is closed (and the process ends) while the panel still probes models / warms up:
    no 'Signal source has been deleted', no 'already deleted', no traceback."""
    import os
    import subprocess
    import sys

    script = tmp_path / "close_early.py"
    script.write_text(
        "import napari\n"
        "from qtpy.QtWidgets import QApplication\n"
        "v = napari.Viewer()\n"
        "dock, w = v.window.add_plugin_dock_widget('seg-studio', 'seg_studio')\n"
        "for _ in range(5): QApplication.processEvents()\n"
        "v.close()\n"
        "for _ in range(50): QApplication.processEvents()\n"
        "print('closed', flush=True)\n"
    )
    env = dict(os.environ, SEG_STUDIO_HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="xcb")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "closed" in out.stdout, text
    for bad in (
        "Traceback",
        "Signal source has been deleted",
        "already deleted",
        "could not list the models",
    ):
        assert bad not in text, text
