#!/usr/bin/env bash
# The main job: a local mesh on this machine (see README). Extra arguments go
# to `clustermesh demo` (e.g. --once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/debug/clustermesh" demo "$@"
