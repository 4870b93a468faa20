#!/usr/bin/env bash
# Every test: unit, property, real-etcd integration and (as root) datapath.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Integration tests start the workspace's binaries as real processes.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads=2
