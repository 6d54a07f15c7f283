#!/usr/bin/env bash
# Build the standalone seg_studio bundle for Linux x86_64 and prove that it works.
#
#   installer/build_bundle.sh [--worktree] [--fresh-venv] [--budget-mib N] [--add-model F.segmodel]
#                             [--no-deb] [--tarball]
#
# 1. clones the committed HEAD of this repository into a fresh folder (--worktree: build the
#    working tree as it is, for iterating on the recipe), so nothing uncommitted leaks in;
# 2. makes a separate build venv (build/bundle-venv, cached) with a CPU-only torch and the pinned
#    app dependencies, and installs seg_studio into it from the clone as a real wheel install;
# 3. freezes the app with PyInstaller (installer/seg_studio.spec + installer/hooks/);
# 4. checks the bundle: no CUDA library inside, size under the budget (README.md, "Size budget");
# 5. runs the frozen self-test with an empty environment (no Python on PATH, no PYTHONPATH):
#    headless first, then under Xvfb with the napari window;
# 6. packages it as a .deb (dpkg-deb; /opt/seg-studio, /usr/bin/seg-studio, a .desktop entry and
#    the icon), unpacks that package elsewhere and runs the self-test from there too.
# Everything lands in dist/: the bundle folder, the .deb, and bundle-report.txt with the figures.
# It takes 15-30 minutes on 2 cores: run it before a release, not in every CI run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUDGET_MIB=1300
# The bundled demo model scores ~0.98 mean Dice on the sample (its model card); a frozen torch that
# computes wrongly, or a missing/garbled model, falls far below this.
MIN_DICE="${MIN_DICE:-0.8}"
FROM_WORKTREE=0
MAKE_DEB=1
MAKE_TARBALL=0
EXTRA_MODELS=()
FRESH_VENV=0
while [ $# -gt 0 ]; do
  case "$1" in
    --worktree) FROM_WORKTREE=1 ;;
    --budget-mib) BUDGET_MIB="$2"; shift ;;
    --add-model) EXTRA_MODELS+=("$(realpath "$2")"); shift ;;  # e.g. a site's own fine-tuned model
    --fresh-venv) FRESH_VENV=1 ;;
    --no-deb) MAKE_DEB=0 ;;
    --tarball) MAKE_TARBALL=1 ;;
    -h|--help) sed -n "2,22p" "$0"; exit 0 ;;
    *) echo "build_bundle.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# --- pinned build inputs -------------------------------------------------------------------------
# The bundle deliberately does NOT use pyproject's torch==2.14.1: that wheel is a CUDA build whose
# libtorch.so needs libtorch_cuda.so and ~3.2 GB of nvidia-* libraries (plus ~0.9 GB of triton), so
# a bundle made from it cannot drop CUDA. The CPU-only build of torch 2.13 is ~0.75 GB on disk and
# runs every seg_studio model (the checkpoint format is plain safetensors; nothing depends on 2.14).
# CUDA users install the pip package into their own environment instead (README.md).
# Override with TORCH_SPEC=... (e.g. a wheel path) and PIP_EXTRA_INDEX_URL for PyTorch's CPU index.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"
# Core and app libraries: pyproject's ranges, resolved to the exact versions of
# installer/constraints.txt (the set the tests run with), so the bundle never drifts from what is
# tested (PySide6 6.12.0, for one, aborts the app: see pyproject). Only torch differs: the CPU build
# above, so the lock's CUDA torch and its nvidia-*/triton libraries are left out of the constraints.
BUILD_REQS=("pyinstaller==6.22.3" "pyinstaller-hooks-contrib==2026.9")

log() { printf '\n[build_bundle %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[build_bundle] FAILED: %s\n' "$*" >&2; exit 1; }
T0=$(date +%s)

find_python() {
  for p in python3.11 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$p"; return 0
    fi
  done
  die "Python 3.11 is needed to build the bundle (the bundle itself needs none)"
}

for tool in git xvfb-run objdump; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install git xvfb xauth binutils)"
done
[ "$MAKE_DEB" = 1 ] && { command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (use --no-deb)"; }

# --- 1. source ----------------------------------------------------------------------------------
WORK="$ROOT/build/bundle"
DIST="$ROOT/dist"
mkdir -p "$WORK" "$DIST"
if [ "$FROM_WORKTREE" = 1 ]; then
  SRC="$ROOT"
  log "building the working tree $SRC (not a fresh clone)"
else
  SRC="$WORK/src"
  rm -rf "$SRC"
  git clone --quiet --no-hardlinks "$ROOT" "$SRC"
  log "fresh clone of $(git -C "$SRC" rev-parse --short HEAD) in $SRC"
fi
for m in "${EXTRA_MODELS[@]}"; do
  [ -f "$m" ] || die "--add-model: $m does not exist"
  mkdir -p "$SRC/resources/models"
  cp "$m" "$SRC/resources/models/"
  log "bundling the extra model $(basename "$m")"
done
read -r -a APP_REQS <<<"$("$(find_python)" -c 'import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(" ".join(project["dependencies"] + project["optional-dependencies"]["app"]))' "$SRC/pyproject.toml")"
BUNDLE_CONSTRAINTS="$WORK/constraints-bundle.txt"
grep -v -i -E '^(torch|torchvision|triton|nvidia-|cuda-)' "$SRC/installer/constraints.txt" >"$BUNDLE_CONSTRAINTS"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml" | sed -n '1p')"
ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"

# --- 2. build venv --------------------------------------------------------------------------------
VENV="$ROOT/build/bundle-venv"
STAMP="$VENV/.bundle-reqs"
WANT="$TORCH_SPEC ${APP_REQS[*]} ${BUILD_REQS[*]} $(sha256sum <"$BUNDLE_CONSTRAINTS" | cut -c1-16)"
if [ "$FRESH_VENV" = 1 ] || [ ! -x "$VENV/bin/python" ]; then
  log "creating the build venv $VENV (CPU-only torch; a few minutes)"
  rm -rf "$VENV"
  "$(find_python)" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  # A changed pin updates the cached venv in place (pip swaps the changed packages); --fresh-venv
  # starts from an empty one, as a release build should.
  log "installing the pinned build requirements: $WANT"
  "$VENV/bin/python" -m pip install -q -c "$BUNDLE_CONSTRAINTS" "$TORCH_SPEC" "${APP_REQS[@]}" "${BUILD_REQS[@]}"
  echo "$WANT" >"$STAMP"
fi
# seg_studio itself: a real (non-editable) install, so its dist-info with the napari.manifest entry
# point exists for PyInstaller to copy; --no-deps because torch is the CPU build chosen above.
log "installing seg_studio from $SRC into the build venv"
"$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$SRC"
"$VENV/bin/python" - <<'EOF' || die "the build venv is not CPU-only or lacks a dependency"
import torch, napari, SimpleITK, PySide6, seg_studio
assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build"
print(f"build venv: torch {torch.__version__}, napari {napari.__version__}, PySide6 {PySide6.__version__}")
EOF

# --- 3. freeze ----------------------------------------------------------------------------------
log "freezing with PyInstaller (the slow part)"
T_FREEZE=$(date +%s)
BUNDLE="$DIST/seg-studio"
rm -rf "$BUNDLE"
(cd "$SRC" && "$VENV/bin/python" -m PyInstaller --noconfirm --log-level WARN \
  --distpath "$DIST" --workpath "$WORK/pyinstaller" installer/seg_studio.spec)
FREEZE_S=$(( $(date +%s) - T_FREEZE ))
[ -x "$BUNDLE/seg-studio" ] || die "PyInstaller made no $BUNDLE/seg-studio"

# --- 4. contents and size -------------------------------------------------------------------------
CUDA_LIBS="$(find "$BUNDLE" \( -name 'libcud*' -o -name 'libnccl*' -o -name 'libcublas*' -o -name 'libtorch_cuda*' \
  -o -name 'libnv*' \) -print | sed -n '1,5p')"
[ -z "$CUDA_LIBS" ] || die "CUDA libraries in a CPU-only bundle: $CUDA_LIBS"
for must in seg_studio/resources/icons/seg-studio.png seg_studio/napari.yaml; do
  [ -e "$BUNDLE/_internal/$must" ] || die "missing from the bundle: _internal/$must"
done
# The newest glibc symbol version any bundled binary needs = the oldest Linux the bundle runs on
# (the .deb's libc6 dependency says so; PySide6 6.12 wheels are manylinux_2_34, for example).
GLIBC_MIN="$(find "$BUNDLE" -type f \( -name '*.so*' -o -name seg-studio \) -print0 \
  | xargs -0 objdump -T 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1 || true)"
log "the bundle needs glibc >= ${GLIBC_MIN:-?}"
SIZE_MIB=$(( $(du -sb "$BUNDLE" | cut -f1) / 1048576 ))
log "bundle: $BUNDLE = $SIZE_MIB MiB (budget $BUDGET_MIB MiB)"
# sed, not head: head exits after 12 lines, sort can then die of SIGPIPE mid-write, and with
# pipefail + set -e the script stopped here without a word (seen once on 2026-11-25)
du -sm "$BUNDLE"/_internal/* 2>/dev/null | sort -rn | sed -n '1,12p' >"$WORK/largest.txt"
[ "$SIZE_MIB" -le "$BUDGET_MIB" ] || { cat "$WORK/largest.txt" >&2; die "bundle is $SIZE_MIB MiB, over the $BUDGET_MIB MiB budget"; }

# --- 5. frozen self-test --------------------------------------------------------------------------
# env -i: no PATH to a Python, no PYTHONPATH/PYTHONHOME, no venv; HOME is a scratch folder so the
# app's per-user folders are created there, as on a first start on a user's machine.
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
clean_env() { env -i HOME="$SCRATCH/home" PATH=/usr/bin:/bin LANG=C.UTF-8 "$@"; }
mkdir -p "$SCRATCH/home"
log "frozen self-test, headless"
clean_env "$BUNDLE/seg-studio" --self-test --no-viewer --min-dice "$MIN_DICE" 2>&1 | tee "$WORK/selftest-headless.txt" \
  || die "the frozen self-test failed without a display"
log "frozen self-test under Xvfb (napari window)"
T_ST=$(date +%s)
clean_env xvfb-run -a -s "-screen 0 1280x900x24" env QT_QPA_PLATFORM=xcb "$BUNDLE/seg-studio" --self-test --min-dice "$MIN_DICE" 2>&1 \
  | tee "$WORK/selftest-xvfb.txt" || die "the frozen self-test failed under Xvfb"
SELFTEST_S=$(( $(date +%s) - T_ST ))
grep -q "PASS viewer" "$WORK/selftest-xvfb.txt" || die "the viewer step did not run under Xvfb"

# --- 6. packages ----------------------------------------------------------------------------------
DEB=""
if [ "$MAKE_DEB" = 1 ]; then
  log "packaging the .deb"
  PKG="$WORK/deb"
  rm -rf "$PKG"
  mkdir -p "$PKG/DEBIAN" "$PKG/opt" "$PKG/usr/bin" "$PKG/usr/share/applications" \
    "$PKG/usr/share/icons/hicolor/256x256/apps"
  cp -a "$BUNDLE" "$PKG/opt/seg-studio"
  ln -s /opt/seg-studio/seg-studio "$PKG/usr/bin/seg-studio"
  install -m 644 "$SRC/installer/seg-studio.desktop" "$PKG/usr/share/applications/seg-studio.desktop"
  install -m 644 "$SRC/resources/icons/seg-studio.png" "$PKG/usr/share/icons/hicolor/256x256/apps/seg-studio.png"
  INSTALLED_KIB=$(du -sk "$PKG" | cut -f1)
  # Depends: the X/GL/Qt system libraries Qt's xcb platform plugin loads (the same list as
  # installer/_setup.sh); the bundle carries Python, Qt, torch and everything else.
  cat >"$PKG/DEBIAN/control" <<EOF
Package: seg-studio
Version: $VERSION
Section: science
Priority: optional
Architecture: $ARCH
Installed-Size: $INSTALLED_KIB
Depends: libc6 (>= ${GLIBC_MIN:-2.34}), libgl1, libegl1, libfontconfig1, libdbus-1-3, libglib2.0-0, libx11-xcb1, libxkbcommon-x11-0, libxcb-cursor0, libxcb-glx0, libxcb-icccm4, libxcb-image0, libxcb-keysyms1, libxcb-randr0, libxcb-render-util0, libxcb-shape0, libxcb-xfixes0, libxcb-xkb1
Recommends: libgl1-mesa-dri
Maintainer: seg_studio developers <seg-studio@users.noreply.invalid>
Description: segment 2D/3D medical images with the U-Net family (napari app)
 Open a scan (NIfTI, MHA, NRRD, DICOM, TIFF, PNG), pick a U-Net variant and a
 checkpoint, run inference, correct the mask with paint tools and fine-tune the
 model on the corrections. Self-contained: Python, Qt, napari and a CPU-only
 PyTorch are inside /opt/seg-studio. Check an installation with
 "seg-studio --self-test".
EOF
  DEB="$DIST/seg-studio_${VERSION}_${ARCH}.deb"
  dpkg-deb --root-owner-group -Zgzip --build "$PKG" "$DEB" >/dev/null
  log "checking the .deb: unpack it elsewhere and run the self-test from there"
  dpkg-deb -x "$DEB" "$SCRATCH/root"
  clean_env "$SCRATCH/root/opt/seg-studio/seg-studio" --self-test --no-viewer --no-finetune --min-dice "$MIN_DICE" >"$WORK/selftest-deb.txt" 2>&1 \
    || { cat "$WORK/selftest-deb.txt" >&2; die "the self-test failed from the unpacked .deb"; }
  rm -rf "$PKG" "$SCRATCH/root"
fi
TARBALL=""
if [ "$MAKE_TARBALL" = 1 ]; then
  TARBALL="$DIST/seg-studio-${VERSION}-linux-x86_64.tar.gz"
  log "packaging $TARBALL"
  cp "$SRC/installer/seg-studio.desktop" "$SRC/resources/icons/seg-studio.png" "$BUNDLE/"
  tar -C "$DIST" -czf "$TARBALL" seg-studio
  rm -f "$BUNDLE/seg-studio.desktop" "$BUNDLE/seg-studio.png"
fi

# --- report -------------------------------------------------------------------------------------
TOTAL_S=$(( $(date +%s) - T0 ))
{
  echo "seg_studio bundle report ($(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$SRC" rev-parse --short HEAD))"
  echo "bundle: $BUNDLE: $SIZE_MIB MiB unpacked (budget $BUDGET_MIB MiB)"
  [ -n "$DEB" ] && echo "deb: $DEB: $(( $(stat -c %s "$DEB") / 1048576 )) MiB"
  [ -n "$TARBALL" ] && echo "tarball: $TARBALL: $(( $(stat -c %s "$TARBALL") / 1048576 )) MiB"
  echo "needs: glibc >= ${GLIBC_MIN:-?} (objdump -T over every bundled binary)"
  echo "times: freeze ${FREEZE_S} s, Xvfb self-test ${SELFTEST_S} s, whole script ${TOTAL_S} s ($(nproc) cores)"
  echo "largest parts of _internal (MiB):"
  sed 's/^/  /' "$WORK/largest.txt"
  echo "frozen self-test under Xvfb:"
  sed 's/^/  /' "$WORK/selftest-xvfb.txt"
} | tee "$DIST/bundle-report.txt"
log "done: $DIST/bundle-report.txt"
