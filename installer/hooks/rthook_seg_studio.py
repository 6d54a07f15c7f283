"""Runtime hook: runs inside the frozen app before ``seg_studio`` is imported.

qtpy (and so napari and magicgui) must use the bundled PySide6, the only Qt binding in the bundle,
even when the user's environment says ``QT_API=pyqt5`` for some other program.
"""

import os

os.environ["QT_API"] = "pyside6"
