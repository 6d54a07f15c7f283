"""npe2 (napari's plugin engine): its manifest schema files, and its own version metadata.

npe2 discovers plugins by reading ``napari.manifest`` entry points from every dist-info it can see;
hook-seg_studio.py and hook-napari.py copy those dist-infos into the bundle.
"""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules, copy_metadata

hiddenimports = collect_submodules("npe2", filter=lambda n: "_pytest" not in n and "cli" not in n.split("."))
datas = collect_data_files("npe2") + copy_metadata("npe2")
