#!/usr/bin/env bash
# Run seg_studio: the app when a display exists, else the CLI's headless job on the bundled sample.
# Usage: installer/run.sh [SCAN]   (sets everything up on first use)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec seg-studio gui "$@"
fi
echo "seg_studio: no display found; running the headless job on the bundled sample" >&2
exec seg-studio demo "$@"
