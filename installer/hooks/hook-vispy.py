"""vispy: GLSL shaders and fonts are data files; the Qt backend and GL bindings are picked by name.

napari runs vispy on PySide6 through vispy's ``_qt``/``_pyside6`` backends; the GL layer is
``vispy.gloo.gl.gl2`` (ctypes to the system's libGL), so no OpenGL library is bundled: the user's
graphics driver provides it.
"""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules

_SKIP_BACKENDS = (
    "_pyqt4",
    "_pyqt5",
    "_pyqt6",
    "_pyside",
    "_pyside2",
    "_glfw",
    "_sdl2",
    "_tk",
    "_wx",
    "_osmesa",
    "_egl",
    "_jupyter_rfb",
    "_ipynb_webgl",
    "_test",
)


def _wanted(name: str) -> bool:
    parts = name.split(".")
    if "tests" in parts or "testing" in parts or "ext" in parts and "ipy_inputhook" in name:
        return False
    return not (len(parts) > 3 and parts[1:3] == ["app", "backends"] and parts[3] in _SKIP_BACKENDS)


hiddenimports = collect_submodules("vispy", filter=_wanted)
datas = collect_data_files("vispy", excludes=["**/tests/**"])
