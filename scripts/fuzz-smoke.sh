#!/usr/bin/env bash
# A brief run of every cargo-fuzz target (docs/fuzzing.md): installs
# cargo-fuzz 0.13.2 when absent (`cargo install cargo-fuzz --locked`), builds the
# targets on the stable toolchain (RUSTC_BOOTSTRAP=1; release with debug
# assertions, no sanitizer: the code under test is safe Rust, and overflow
# checks stay on), then runs each for $FUZZ_SECONDS (default 20) on one core,
# from the committed seeds in fuzz/seeds/<target>/ plus a scratch corpus.
# A crash fails the script and leaves the input in
# $TARGET/fuzz/artifacts/<target>/ (turn it into a regression test, see
# docs/fuzzing.md). $TARGET is $CARGO_TARGET_DIR (default target/).
#
# FUZZ_BUILD=dev builds without optimisation (fuzz/Cargo.toml's dev
# profile; debug assertions on): a quicker cold build for CI's brief runs,
# at a lower exec rate. FUZZ_CLEAN=1 removes the fuzz build afterwards
# (CI: ~1.5 GB it does not need once the runs are done).
#
#   scripts/fuzz-smoke.sh [target...]      (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ingest watch_batches manifests)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
cd fuzz
if [ "${FUZZ_BUILD:-release}" = dev ]; then
    mode=(--dev) profile=debug
else
    mode=(-O --debug-assertions) profile=release
fi
if [ "${FUZZ_CLEAN:-0}" = 1 ]; then
    # The scratch corpus and any crash input are kept (they are small);
    # only the build goes.
    trap 'rm -rf "$target_dir/$host" "$target_dir/release" "$target_dir/debug"' EXIT
fi
host="$(rustc -vV | sed -n 's/^host: //p')"
start=$SECONDS
RUSTC_BOOTSTRAP=1 cargo fuzz build "${mode[@]}" --sanitizer none \
    --target-dir "$target_dir"
echo "fuzz-smoke: built in $((SECONDS - start)) s ($profile)"
bin_dir="$target_dir/$host/$profile"
for t in "${targets[@]}"; do
    corpus="$target_dir/corpus/$t"
    artifacts="$target_dir/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    log="$target_dir/$t.log"
    echo "fuzz-smoke: $t for ${seconds}s (log: $log)"
    # One process, one core (no -jobs/-workers: libFuzzer's default).
    rc=0
    "$bin_dir/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 \
        "$corpus" "${seeds[@]}" >"$log" 2>&1 || rc=$?
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$log" || true
    if [ "$rc" -ne 0 ]; then
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 20 >&2 || true
        echo "fuzz-smoke: $t failed (exit $rc); inputs in $artifacts" >&2
        exit 1
    fi
done
echo "fuzz-smoke: no crash"
