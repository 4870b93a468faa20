#!/usr/bin/env bash
# Every test: unit, property, real-etcd integration and (as root) datapath.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# A one-shot build keeps no incremental state: it would double the target
# directory (4 GB of the 9 GB a full run used) for nothing. Set
# CARGO_INCREMENTAL=1 to keep it while iterating.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Integration tests start the workspace's binaries as real processes.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads=2
