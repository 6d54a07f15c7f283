"""napari's builtin plugin: its npe2 manifest (builtins.yaml) names modules by string."""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules

hiddenimports = collect_submodules("napari_builtins", filter=lambda n: "_tests" not in n)
datas = collect_data_files("napari_builtins", excludes=["**/_tests/**"])
