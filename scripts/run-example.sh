#!/usr/bin/env bash
# Sets up (toolchain, Node packages, release build) and runs caregate on the shipped example
# configuration config/examples/quickstart.toml: MLLP on 127.0.0.1:2575, admin on
# 127.0.0.1:9100, queue in target/caregate-data, and as the tenant's upstream a local in-memory
# FHIR R4 server (tests/fhir-server, HTTPS on localhost:8443 with a certificate made here).
# Stop with Ctrl-C (graceful: in-flight messages are committed and ACKed; the demo server stops).
# Usage: scripts/run-example.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
target/release/caregate check-config --config config/examples/quickstart.toml

# A throwaway CA and a localhost certificate for the demo FHIR server.
pki=target/quickstart
mkdir -p "$pki"
if [ ! -f "$pki/server.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=caregate quickstart CA" -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$pki/san.ext"
  openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 365 -extfile "$pki/san.ext" -out "$pki/server.pem" 2>/dev/null
fi

# The demo upstream; it exits when this script does (its stdin closes).
coproc FHIR { exec node tests/fhir-server/server.mjs --cert "$pki/server.pem" --key "$pki/server.key" --port 8443; }
read -r -t 30 ports <&"${FHIR[0]}" || { echo "the demo FHIR server did not start" >&2; exit 1; }
echo "demo FHIR server: https://localhost:8443/fhir ($ports)" >&2

SSL_CERT_FILE="$PWD/$pki/ca.pem" target/release/caregate run --config config/examples/quickstart.toml
