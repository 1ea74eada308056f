#!/usr/bin/env bash
# One command: set up the environment (scripts/setup.sh) and run the test suite against the INSTALLED package.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# pytest's console script (not `python -m pytest`) keeps the source tree off sys.path: the wheel is what is tested.
"$AVSSL_BIN/pytest" -q "$@"
