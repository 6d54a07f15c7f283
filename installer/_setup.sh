# Shared set-up for run.sh and test.sh: sourced, not run. Idempotent and quick on a second run.
# - installs the Qt/X libraries napari needs with apt when run as root (else prints the apt line);
# - creates .venv with Python 3.11 and installs seg_studio with its app and dev extras, once per
#   change of pyproject.toml or installer/constraints.txt (a stamp file remembers the last install),
#   at the exact versions of installer/constraints.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PKGS="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libx11-xcb1 libdbus-1-3 libfontconfig1 libglib2.0-0 \
libxcb-cursor0 libxcb-glx0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxkbcommon-x11-0"

ensure_system_libs() {
  # shellcheck disable=SC2086
  if dpkg -s $APT_PKGS >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "seg_studio: installing the X/Qt system libraries with apt..." >&2
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $APT_PKGS >/dev/null
  else
    echo "seg_studio: some X/Qt libraries are missing; run once:" >&2
    echo "  sudo apt-get install -y $APT_PKGS" >&2
  fi
}

ensure_orthanc() {
  # The hospital round-trip tests (tests/core/test_pacs.py) start a real Orthanc PACS themselves on
  # free 127.0.0.1 ports; only the Debian packages are needed (the packaged service is not used).
  if command -v Orthanc >/dev/null && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then return 0; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "seg_studio: installing Orthanc for the PACS tests with apt..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb >/dev/null
  else
    echo "seg_studio: the PACS tests need Orthanc; run once: sudo apt-get install -y orthanc orthanc-dicomweb" >&2
  fi
}

find_python() {
  for p in python3.11 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$p"; return 0
    fi
  done
  echo "seg_studio: Python 3.11 is required (python3.11 not found)" >&2
  return 1
}

# The extras the two README commands install: the app, the tests and the optional fast paths.
SEG_STUDIO_EXTRAS="app,dev,fast"

ensure_venv() {
  local py stamp want
  if [ ! -x .venv/bin/python ]; then
    py="$(find_python)"
    echo "seg_studio: creating .venv with $py..." >&2
    "$py" -m venv .venv
  fi
  want="$(cat pyproject.toml installer/constraints.txt installer/_setup.sh | sha256sum | cut -d' ' -f1)"
  stamp=".venv/.seg-studio-installed"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "seg_studio: installing into .venv (first run takes a few minutes)..." >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    # pyproject.toml gives ranges; installer/constraints.txt the exact tested set (torch 2.14.1 and
    # torchvision 0.29.1 are wheels that lie on this machine).
    .venv/bin/python -m pip install -q -c installer/constraints.txt -e ".[$SEG_STUDIO_EXTRAS]"
    # napari's own reader claims *.nii.gz too, so without a preference plain `napari scan.nii.gz`
    # asks which plugin to use; record ours (a choice the user made is kept).
    .venv/bin/seg-studio napari-reader >&2 || echo "seg_studio: could not record the napari reader preference" >&2
    echo "$want" >"$stamp"
  fi
}

ensure_system_libs
ensure_venv
export PATH="$ROOT/.venv/bin:$PATH"
