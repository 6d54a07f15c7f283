"""napari: its Qt/vispy layers are imported by name at run time, and it reads its own metadata.

- submodules: napari picks layer visuals, Qt widgets and its settings models dynamically;
- data: themes, shaders, translations and the ``*.yaml`` files beside its modules;
- metadata: ``napari.__version__`` comes from ``importlib.metadata``, and the builtins plugin
  (reader/writer for tif/npy/csv, sample data) is found through the ``napari.manifest`` entry point
  in napari's dist-info, so without the metadata napari has no builtin reader at all.
Tests, benchmarks and the pytest plugin are left out.
"""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules, copy_metadata


def _wanted(name: str) -> bool:
    parts = name.split(".")
    return not any(p in ("_tests", "tests", "benchmarks", "_testsupport", "_vendor_tests") for p in parts)


hiddenimports = collect_submodules("napari", filter=_wanted)
datas = collect_data_files("napari", excludes=["**/_tests/**", "**/tests/**", "**/benchmarks/**"])
datas += copy_metadata("napari")
