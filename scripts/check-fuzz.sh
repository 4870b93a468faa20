#!/usr/bin/env bash
# The fuzz targets (fuzz/, outside the workspace) still compile against the
# code they fuzz: `cargo check`, no fuzzing (docs/fuzzing.md). Without this
# they rot unseen — a contract change once broke two of them for a day.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo check --quiet --locked --manifest-path fuzz/Cargo.toml --bins
echo "fuzz targets: they compile"
