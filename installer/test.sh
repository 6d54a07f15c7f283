#!/usr/bin/env bash
# Run the whole test suite (sets everything up on first use). Extra arguments go to pytest.
# napari needs a real X server: pytest-xvfb starts Xvfb, and Qt uses xcb with Mesa's software GL.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
ensure_orthanc
export QT_QPA_PLATFORM=xcb
exec python -m pytest "$@"
