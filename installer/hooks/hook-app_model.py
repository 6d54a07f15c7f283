"""app_model (napari's menus and actions): Qt parts are imported by name."""

from PyInstaller.utils.hooks import collect_submodules

hiddenimports = collect_submodules("app_model")
