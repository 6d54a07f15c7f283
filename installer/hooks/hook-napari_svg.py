"""napari-svg (napari's SVG writer, a napari dependency): an npe2 plugin found by entry point."""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules, copy_metadata

hiddenimports = collect_submodules("napari_svg", filter=lambda n: "_tests" not in n)
datas = collect_data_files("napari_svg", excludes=["**/_tests/**"]) + copy_metadata("napari_svg")
