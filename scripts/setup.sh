#!/usr/bin/env bash
# Installs what building and testing caregate needs on a fresh Debian machine: a C compiler
# (aws-lc-rs builds C), the Rust toolchain with rustfmt and clippy, and Node.js for the FHIR
# validator used by the conversion conformance tests and for the FHIR server of the interop
# tests, and Debian's Chromium for the status page's browser test (tests/browser). Idempotent;
# safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v openssl >/dev/null || need_apt+=(openssl)
# MQTT interop tests start their own broker process (no service is enabled).
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
# The browser test drives Debian's Chromium with playwright-core (`npx playwright install`
# cannot download its own browser here).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# Node packages of the FHIR validator and of the test FHIR server (pinned by package-lock.json).
if [ -f tests/fhir-validator/package-lock.json ] && [ ! -d tests/fhir-validator/node_modules ]; then
  npm ci --prefix tests/fhir-validator --no-audit --no-fund
fi
if [ -f tests/fhir-server/package-lock.json ] && [ ! -d tests/fhir-server/node_modules ]; then
  npm ci --prefix tests/fhir-server --no-audit --no-fund
fi
if [ -f tests/browser/package-lock.json ] && [ ! -d tests/browser/node_modules ]; then
  npm ci --prefix tests/browser --no-audit --no-fund
fi
