"""``python -m seg_studio``: the CLI (``python -m seg_studio gui`` opens the app)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from .cli import main

    sys.exit(main())
