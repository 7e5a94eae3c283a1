#!/usr/bin/env bash
# Sets up (toolchain, release build) and runs caregate on the shipped example configuration
# config/examples/quickstart.toml: MLLP on 127.0.0.1:2575, admin on 127.0.0.1:9100, queue in
# target/caregate-data. Stop with Ctrl-C (graceful: in-flight messages are committed and ACKed).
# Usage: scripts/run-example.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
target/release/caregate check-config --config config/examples/quickstart.toml
exec target/release/caregate run --config config/examples/quickstart.toml
