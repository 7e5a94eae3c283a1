#!/usr/bin/env bash
# Coverage-guided fuzzing of caregate's parsers and converters with libFuzzer (cargo-fuzz), on
# the stable toolchain (RUSTC_BOOTSTRAP=1 unlocks the -Z flags cargo-fuzz passes). The targets
# are in tests/fuzz (README.md there: what each asserts, and measured figures).
#
# Usage: scripts/fuzz.sh [--smoke | --runs N | --seconds S] [TARGET...]
#   --smoke       every target for a short bounded time (FUZZ_SMOKE_SECONDS, default 20 s); CI
#   --runs N      each target for N executions
#   --seconds S   each target for S seconds (default 60)
#   TARGET...     some of: mllp_codec hl7_parse hl7_batch astm_link astm_record config_toml
#                 convert_hl7 convert_astm convert_reading upstream_answer modbus_decode
#                 (default: all)
# Environment:
#   CAREGATE_CORPUS    third-party corpus (default: ../shared/corpus next to the repo); used in
#                      place, read only; missing is fine (the project's fixtures still seed)
#   FUZZ_WORK          where seed corpora, libFuzzer's growing corpora and crash artifacts go
#                      (default: a new temp dir; never inside the repo)
#   FUZZ_TARGET_DIR    cargo target dir of the fuzz build (default: tests/fuzz/target, ignored)
#   FUZZ_JOBS          cargo build jobs (default: cargo's)
#   FUZZ_MAX_LEN       libFuzzer -max_len (default 32768)
#   FUZZ_SANITIZER     address (default) or none: without ASan the targets run 10-50x faster,
#                      which is what makes 10 M executions per target practical; safe Rust code
#                      gets its panics and overflow checks (debug assertions) either way
# Exit status: non-zero when a target crashed, leaked, timed out or failed to build. A crash
# leaves its input under $FUZZ_WORK/artifacts/<target>/ and is kept on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ALL_TARGETS=(mllp_codec hl7_parse hl7_batch astm_link astm_record config_toml convert_hl7 convert_astm convert_reading
  upstream_answer modbus_decode)
CARGO_FUZZ_VERSION=0.13.1

mode=seconds
amount=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) mode=seconds; amount=${FUZZ_SMOKE_SECONDS:-20} ;;
    --runs) mode=runs; amount=${2:?--runs N}; shift ;;
    --seconds) mode=seconds; amount=${2:?--seconds S}; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  [ -f "tests/fuzz/fuzz_targets/$t.rs" ] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
done

# --- what it needs: a C++ compiler (libFuzzer is built from source by libfuzzer-sys) and
# cargo-fuzz. The ASan runtime ships with the Rust toolchain (rust-std), so no clang is needed.
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if ! command -v c++ >/dev/null && command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq build-essential
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
fuzz_args=(--fuzz-dir tests/fuzz --sanitizer "${FUZZ_SANITIZER:-address}")
[ -n "${FUZZ_TARGET_DIR:-}" ] && fuzz_args+=(--target-dir "$FUZZ_TARGET_DIR")
# cargo-fuzz has no --jobs flag: cargo takes the job count from the environment.
[ -n "${FUZZ_JOBS:-}" ] && export CARGO_BUILD_JOBS="$FUZZ_JOBS"

echo "== fuzz: build (${targets[*]})"
t0=$(date +%s)
for t in "${targets[@]}"; do
  nice -n 10 cargo fuzz build "${fuzz_args[@]}" "$t"
done
echo "fuzz: build took $(( $(date +%s) - t0 )) s"

# --- seed corpora, built in a temp dir from the fixtures and the shared corpus (in place).
WORK=${FUZZ_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/caregate-fuzz.XXXXXX")}
mkdir -p "$WORK"
case "$(cd "$WORK" && pwd)/" in "$ROOT"/*) echo "fuzz.sh: FUZZ_WORK must be outside the repo" >&2; exit 2 ;; esac
CORPUS=${CAREGATE_CORPUS:-$ROOT/../shared/corpus}
SEEDS=$WORK/seeds
rm -rf "$SEEDS"
for t in "${ALL_TARGETS[@]}"; do mkdir -p "$SEEDS/$t" "$WORK/corpus/$t" "$WORK/artifacts/$t"; done

hl7_files() {
  find tests/fixtures/hl7 -type f -name '*.hl7'
  [ -d "$CORPUS/hl7v2" ] && find "$CORPUS/hl7v2" -type f
  return 0
}
astm_files() {
  find tests/fixtures/astm -type f -name '*.txt'
  [ -d "$CORPUS/astm" ] && find "$CORPUS/astm" -type f
  return 0
}
# astmio session notation ([STX]1H|...[CR][ETX]18[CR][LF], ` - [ACK]` lines from the LIS) to
# the bytes on the line ($1 = sed expression for [LF]).
astm_notation() {
  sed -e '/^ - /d' "$1" | tr -d '\n' | sed -e 's/\[STX\]/\x02/g; s/\[ETX\]/\x03/g; s/\[ETB\]/\x17/g' \
    -e 's/\[CR\]/\r/g' -e "s/\\[LF\\]/$2/g" -e 's/\[ENQ\]/\x05/g; s/\[EOT\]/\x04/g'
}
# The same log as record text: frame numbers, checksums and control characters dropped.
astm_records() {
  sed -e '/^ - /d' "$1" | tr -d '\n' | sed -e 's/\[STX\][0-7]//g; s/\[ET[XB]\][0-9A-Fa-f]\{0,2\}//g' \
    -e 's/\[CR\]/\r/g; s/\[LF\]//g; s/\[ENQ\]//g; s/\[EOT\]//g'
}

i=0
while IFS= read -r f; do
  i=$((i + 1))
  for t in hl7_parse hl7_batch convert_hl7; do cp "$f" "$SEEDS/$t/$i"; done
  # mllp_codec: limit byte 0xFF (1021-byte frames), chunk byte 7, then the framed message.
  { printf '\xff\x07\x0b'; cat "$f"; printf '\x1c\x0d'; } > "$SEEDS/mllp_codec/$i"
done < <(hl7_files)
# Two framed messages with garbage between them, and a restarted block.
first=$(hl7_files | head -n 1)
{ printf '\x40\x03garbage\x0b'; head -c 40 "$first"; printf '\x0b'; cat "$first"; printf '\x1c\x0d\x0d\x0b'; cat "$first"; printf '\x1c'; } \
  > "$SEEDS/mllp_codec/mixed"

i=0
while IFS= read -r f; do
  i=$((i + 1))
  for t in astm_record convert_astm; do cp "$f" "$SEEDS/$t/$i"; done
  if grep -q '\[STX\]' "$f"; then
    for t in astm_record convert_astm; do astm_records "$f" > "$SEEDS/$t/$i.records"; done
    # astm_link: default limits (0xFF), 7-byte chunks, Stored (0xF2) after every frame.
    { printf '\xff\x07'; astm_notation "$f" '\n\xf2'; } > "$SEEDS/astm_link/$i"
    { printf '\x13\x3f'; astm_notation "$f" '\n\xf3\xf2'; printf '\xf0'; } > "$SEEDS/astm_link/$i.small"
  else
    # Record text framed by encode rules is not needed: the fuzzer finds frames from the logs.
    { printf '\xff\x05\x05\x02\x31'; tr '\n' '\r' < "$f" | head -c 200; printf '\x03\x30\x30\r\n\xf2\x04'; } > "$SEEDS/astm_link/$i"
  fi
done < <(astm_files)

for f in config/*.toml config/examples/*.toml; do cp "$f" "$SEEDS/config_toml/$(basename "$f")"; done

r=0
reading() { r=$((r + 1)); printf '%s' "$1" > "$SEEDS/convert_reading/$r.json"; }
reading '{"device":{"id":"0009FBFFFF9B42B3","name":"bed 12 monitor"},"code":"150456","system":"urn:iso:std:iso:11073:10101","display":"SpO2","value":"97","unit":"%","time":"2024-01-05T09:30:00Z","patient":{"system":"https://hospital.example/mrn","value":"MRN-1"},"location":"ICU-12"}'
reading '{"device":{"id":"dev-1"},"code":"8867-4","system":"http://loinc.org","value":"72.50","unit":"/min","time":"2024-01-05T09:30:00+01:00"}'
reading '{"device":{"id":"pump-7"},"code":"LOCAL-STATE","text":"occlusion","time":"2024-01-05T09:30:00-05:00","patient":{"value":"123"}}'
reading '{"device":{"id":"x"},"code":"1","value":"-0.000001e3","unit":"mm[Hg]","time":"2024-02-29T23:59:59+14:00"}'

# upstream_answer: status, 409s, reauthenticated, expires_in (LE), Retry-After, then the body.
u=0
answer() {
  u=$((u + 1))
  { printf "$1"; printf '%s\n' "$2"; printf '%s' "$3"; } > "$SEEDS/upstream_answer/$u"
}
consent='{"resourceType":"Consent","status":"active","meta":{"lastUpdated":"2026-11-24T05:00:00+02:00"},"patient":{"identifier":{"system":"urn:oid:1.2.3","value":"MRN-1"}},"provision":{"type":"deny"}}'
answer '\xc8\x00\x00\x00\x10\x0e\x00\x00\x00\x00\x00\x00' '' "{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"link\":[{\"relation\":\"next\",\"url\":\"https://fhir.example/Consent?page=2\"}],\"entry\":[{\"resource\":$consent},{\"resource\":{\"resourceType\":\"Consent\",\"status\":\"draft\"}}]}"
answer '\xf7\x01\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff' '120' '{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}'
answer '\xc8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' 'https://fhir.example.org/r4/Consent?page=2' '{}'
answer '\xc8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' 'https://fhir.example.org.evil.net/r4/Consent' '{}'
answer '\xad\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00' 'Wed, 21 Oct 2026 07:28:00 GMT' '{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"duplicate"}]}'
# Real servers' Bundles as 200 bodies (the first 40 of the shared corpus's FHIR outputs).
fhir=()
[ -d "$CORPUS/fhir-expected" ] && mapfile -t fhir < <(find "$CORPUS/fhir-expected" -type f -name '*.json' | sort)
for f in "${fhir[@]:0:40}"; do
  u=$((u + 1)); { printf '\xc8\x00\x00\x00\x2c\x01\x00\x00\x00\x00\x00\x00\n'; cat "$f"; } > "$SEEDS/upstream_answer/$u"
done
# modbus_decode: type (0 bool .. 5 f32), word order + count << 1, words (BE), "scale|offset".
m=0
register() { m=$((m + 1)); printf "$1" > "$SEEDS/modbus_decode/$m"; }
register '\x01\x02\x04\xd20.1|-40'          # u16 1234 × 0.1 - 40
register '\x02\x02\xff\x38|'                # i16 -200
register '\x03\x04\x00\x01\x86\xa00.001|0' # u32 100000 big-endian
register '\x04\x05\x86\xa0\x00\x01-1|'     # i32 little word order
register '\x05\x04\x41\xcc\x00\x001|0.5'   # f32 25.5
register '\x05\x04\x7f\xc0\x00\x00|'       # f32 NaN
register '\x00\x02\x00\x01|'                # coil on

echo "== fuzz: seeds in $SEEDS"
for t in "${targets[@]}"; do echo "  $t: $(find "$SEEDS/$t" -type f | wc -l) files"; done

# --- run each target, one at a time.
status=0
summary=()
for t in "${targets[@]}"; do
  limit=()
  if [ "$mode" = runs ]; then limit=(-runs="$amount"); else limit=(-max_total_time="$amount"); fi
  log=$WORK/$t.log
  echo "== fuzz: $t (${limit[*]})"
  set +e
  nice -n 10 cargo fuzz run "${fuzz_args[@]}" "$t" "$WORK/corpus/$t" "$SEEDS/$t" -- \
    "${limit[@]}" -max_len="${FUZZ_MAX_LEN:-32768}" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$WORK/artifacts/$t/" > "$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
  secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -n 1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || true)
  corpus_n=$(find "$WORK/corpus/$t" -type f | wc -l)
  line="$t: rc=$rc execs=${execs:-?} seconds=${secs:-?} cov=${cov:-?} corpus=$corpus_n"
  if [ -n "${execs:-}" ] && [ -n "${secs:-}" ] && [ "${secs:-0}" -gt 0 ]; then line="$line exec/s=$(( execs / secs ))"; fi
  echo "$line"
  summary+=("$line")
  if [ $rc -ne 0 ]; then
    status=1
    echo "fuzz: $t FAILED; log $log; artifacts:" >&2
    ls -l "$WORK/artifacts/$t" >&2 || true
    grep -E 'panicked|ERROR|SUMMARY' "$log" | head -n 20 >&2 || true
  fi
done

echo "== fuzz: summary ($mode $amount; work dir $WORK)"
printf '  %s\n' "${summary[@]}"
# The seeds are rebuilt each run; the grown corpora stay in FUZZ_WORK for a later run.
rm -rf "$SEEDS"
if [ -z "${FUZZ_WORK:-}" ] && [ $status -eq 0 ]; then rm -rf "$WORK"; fi
exit $status
