"""Entry point of the frozen app (PyInstaller runs this file as ``__main__``).

``seg-studio`` with no arguments opens the app when a display exists (see ``cli._gui_shortcut``);
every CLI command, and ``--self-test``, works the same as from a pip install.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # DataLoader workers re-run this executable; let them be workers
    from seg_studio.cli import main

    sys.exit(main())
