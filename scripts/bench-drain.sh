#!/usr/bin/env bash
# Drain benchmark: a backlog of queued messages delivered by the release binary to a local
# TLS 1.3 / HTTP/2 FHIR sink; time to ready with the backlog on disk, msg/s and the daemon's peak RSS.
#
# Exact command (from the repository root):
#   scripts/bench-drain.sh [--messages 100000] [--batch 100]
# which runs:
#   cargo build --release && cargo bench --bench drain -- ARGS
# Targets on the 2-core reference machine: >= 5,000 msg/s, RSS < 50 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
CAREGATE_BIN="${CAREGATE_BIN:-$PWD/target/release/caregate}" cargo bench --bench drain -- "$@"
