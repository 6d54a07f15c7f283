"""SimpleITK: one large extension module (``_SimpleITK*.so``) plus its SWIG wrapper.

The import graph finds the wrapper; collecting the extension explicitly keeps it there even when
SimpleITK changes how it loads it.
"""

from PyInstaller.utils.hooks import collect_dynamic_libs, collect_submodules

binaries = collect_dynamic_libs("SimpleITK")
hiddenimports = collect_submodules("SimpleITK")
