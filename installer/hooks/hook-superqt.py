"""superqt: widgets napari uses are reached through lazy ``__getattr__`` imports."""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules

hiddenimports = collect_submodules("superqt", filter=lambda n: "cmap" not in n and "pygments" not in n)
datas = collect_data_files("superqt")
