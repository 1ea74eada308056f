#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install avssl into it NON-editable, with the exact versions of
# constraints.txt, so that packaging mistakes (configs missing from the wheel) show up here as they would for users.
# Usage: source scripts/setup.sh   (sets $AVSSL_PY to the environment's python)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${AVSSL_VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c "$repo/constraints.txt" "$repo[${AVSSL_EXTRAS:-dev,decord,slurm}]"
AVSSL_PY="$venv/bin/python"
AVSSL_BIN="$venv/bin"
export AVSSL_PY AVSSL_BIN
