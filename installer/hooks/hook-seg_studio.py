"""seg_studio itself: variants register on import (``core.models`` walks its own package), the
napari manifest names modules by string, and napari finds the plugin only through the
``napari.manifest`` entry point in seg-studio's dist-info, which is therefore copied in.

The bundled resources (icons, ``.segmodel`` checkpoints) are added by the spec from the source tree,
so they land at ``_internal/seg_studio/resources`` whether or not the wheel carries them.
"""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules, copy_metadata

hiddenimports = collect_submodules("seg_studio")
datas = collect_data_files("seg_studio", includes=["**/*.yaml", "**/*.json"]) + copy_metadata("seg-studio")
