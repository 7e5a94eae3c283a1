#!/usr/bin/env bash
# Ingest benchmark: N connections x M messages against a running caregate (release build, child
# process), durable and with the commit's fsync turned off, 1 and 8 connections by default.
#
# Exact command (from the repository root):
#   scripts/bench-ingest.sh [--connections 1,8] [--messages 5000] [--modes durable,no-fsync]
# which runs:
#   cargo build --release && cargo bench --bench ingest -- ARGS
# Targets on the 2-core reference machine: >= 10,000 durable ACKs/s with 8 connections,
# >= 2,500/s with 1 connection, p99 ACK latency <= 5 ms at 8 connections.
set -euo pipefail
cd "$(dirname "$0")/.."

# The benchmark starts the release binary as a child process; it does not build it itself.
# The binary is looked up where cargo puts it: $CARGO_TARGET_DIR when set, else ./target.
cargo build --release
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
# On a machine others are loading (2 cores, parallel builds), scheduling delays swamp the fsync:
# BENCH_RT=1 runs client and daemon under SCHED_FIFO (chrt -f 10, needs root) so runs compare
# the code, not the neighbours. Report which one you used.
rt=()
if [[ -n "${BENCH_RT:-}" ]]; then rt=(chrt -f 10); fi
CAREGATE_BIN="${CAREGATE_BIN:-$target_dir/release/caregate}" "${rt[@]}" cargo bench --bench ingest -- "$@"
