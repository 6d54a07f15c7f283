#!/usr/bin/env bash
# seg_studio as a napari user installs it, at either end of the ranges pyproject.toml claims (CI runs
# newest; oldest by hand; installer/constraints.txt, the locked set, runs in installer/test.sh):
#   newest  a plain venv that already has the newest torch the registry serves; `pip install` of
#           seg_studio must keep that torch (ranges, not pins); then everything else at its newest;
#   oldest  the lowest version of each direct dependency that resolves (installer/constraints-oldest.txt).
# Then the core and plugin tests run against the installed package (the slow accuracy tests run only
# in the locked run, installer/test.sh).
# Usage: .ci/plain-env.sh newest|oldest [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:?usage: .ci/plain-env.sh newest|oldest [pytest args]}"
shift
VENV="build/$MODE-venv"
# The registry's releases as users get them: no machine-wide version cap, and no local wheel folder
# (its CPU-only torch 2.13.0+cpu cannot load PyPI's torchvision 0.28.0: "torchvision::nms does not exist").
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS=
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3.11 -m venv --clear "$VENV"
pip=("$VENV/bin/python" -m pip install -q)
"${pip[@]}" --upgrade pip
torch_version() { "$VENV/bin/python" -c 'import torch; print(torch.__version__)'; }
case "$MODE" in
  newest)
    "${pip[@]}" --upgrade torch
    before="$(torch_version)"
    "${pip[@]}" --upgrade-strategy only-if-needed ".[app,dev,fast]"
    after="$(torch_version)"
    if [ "$before" != "$after" ]; then
      echo "plain-env newest: installing seg_studio replaced torch $before with $after" >&2
      exit 1
    fi
    echo "plain-env newest: seg_studio installed beside torch $after and kept it" ;;
  oldest)
    "${pip[@]}" -c installer/constraints-oldest.txt ".[app,dev,fast]" ;;
  *) echo "plain-env: unknown mode $MODE (newest or oldest)" >&2; exit 2 ;;
esac
"$VENV/bin/seg-studio" --version
# The installed package, not the source tree: pytest's own entry point keeps the repo root off sys.path.
QT_QPA_PLATFORM=xcb "$VENV/bin/pytest" -q -p no:cacheprovider -m "not slow" "$@"
