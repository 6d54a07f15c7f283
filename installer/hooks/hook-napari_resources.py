"""napari's icons and style sheets live in this separate package and are read as files."""

from PyInstaller.utils.hooks import collect_data_files, copy_metadata

datas = collect_data_files("napari_resources") + copy_metadata("napari_resources")
