#!/usr/bin/env bash
# One command: set up the environment (scripts/setup.sh) and run the main job, `avssl-train`, on the built-in demo
# data (generated and cached on first use). Extra arguments are Hydra overrides, e.g. `bash scripts/demo.sh seed=1`.
set -euo pipefail
AVSSL_EXTRAS="${AVSSL_EXTRAS:-dev}" source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$AVSSL_BIN/avssl-train" "$@"
