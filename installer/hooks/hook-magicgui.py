"""magicgui: its widget backend (``magicgui.backends._qtpy``) is imported by name."""

from PyInstaller.utils.hooks import collect_submodules, copy_metadata

hiddenimports = collect_submodules("magicgui", filter=lambda n: "testing" not in n)
datas = copy_metadata("magicgui")
