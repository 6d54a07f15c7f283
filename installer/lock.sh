#!/usr/bin/env bash
# Refresh installer/constraints.txt, the exact set of versions that the README's two commands, CI and
# the bundle install: resolve pyproject.toml's ranges afresh in a throwaway venv (the newest release
# in range of everything, under this machine's pip configuration) and freeze the result.
# Also installer/constraints-oldest.txt, the lowest version of each direct dependency that resolves
# (uv's lowest-direct resolution), which .ci/plain-env.sh oldest installs.
# Run it after changing a dependency in pyproject.toml, then run installer/test.sh and commit both.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="$(sed -n 's/^SEG_STUDIO_EXTRAS="\(.*\)"$/\1/p' installer/_setup.sh)"  # what _setup.sh installs
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3.11 -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q --upgrade pip
"$TMP/venv/bin/python" -m pip install -q ".[$EXTRAS]"
{
  echo "# The exact set seg_studio is tested and shipped with (installer/lock.sh made it from"
  echo "# pyproject.toml's ranges; the ranges are what a plain 'pip install seg-studio' accepts)."
  "$TMP/venv/bin/python" -m pip freeze --exclude-editable | grep -v -i '^seg-studio' | LC_ALL=C sort -f
} >installer/constraints.txt.new
mv installer/constraints.txt.new installer/constraints.txt
"$TMP/venv/bin/python" -m pip install -q uv
{
  echo "# The lowest version of each direct dependency that resolves (installer/lock.sh, uv --resolution"
  echo "# lowest-direct): the bottom of pyproject.toml's ranges, which .ci/plain-env.sh oldest tests."
  PIP_CONFIG_FILE=/dev/null "$TMP/venv/bin/uv" pip compile -q --no-header --no-annotate --python-version 3.11 \
    --resolution lowest-direct pyproject.toml $(printf -- '--extra %s ' ${EXTRAS//,/ })
} >installer/constraints-oldest.txt.new
mv installer/constraints-oldest.txt.new installer/constraints-oldest.txt
for f in installer/constraints.txt installer/constraints-oldest.txt; do
  echo "$f: $(grep -vc '^#' "$f") packages"
done
