//! caregate's single integration-test binary: only `mod` lines, one comment each.
//!
//! Fixtures under tests/fixtures are synthetic (written here from the specs, no real patient data).
//! Tests that read ../shared/corpus (third-party, de-identified samples) skip with a visible
//! message when that folder is absent (a user's fresh clone); CI has it.

mod support;

mod admin_roles; // operator API roles over real HTTP: the role x endpoint x tenant table, TLS 1.3 admin listener, token config
mod astm; // ASTM E1381 link (simulated analyzer, faults, virtual clock) + E1394 parse + FHIR goldens; corpus replay
mod astm_serial; // ASTM over a real pty (astm, mllp-serial, probe) and loopback TCP through the whole gateway
mod audit; // audit trail: tamper evidence with file/line, crash recovery, rotation/compression/retention, export
mod clinical; // critical results (critical lane, alert within 1 s while the upstream is down) and consent holds
mod convert; // HL7 v2 → FHIR golden Bundles, idempotency, report invariants
mod convert_conformance; // corpus ORU/ADT → FHIR: converts, validates (Node @medplum), compares with other converters
mod corpus_mllp; // every corpus message over MLLP: AA for well-formed, never AA otherwise
mod fhir_server; // converter Bundles against a real FHIR server (Node, medplum in memory, HTTPS): commit, replay, faults, auth
mod files; // the file source: batch with a malformed message, done/failed, report, re-processing without duplicates
mod forward; // store-and-forward end to end against the real FHIR server: once each, outages, dead letters, tenants, OAuth2
mod hl7_corpus; // every corpus HL7 file through the parser
mod mllp; // MLLP ingest: ACK codes, durability before AA, framing, limits, TLS, shutdown
mod modbus; // Modbus TCP/RTU polling against real servers (TCP, pty RTU): decoding, timeouts, deadband, exceptions, probe
mod mqtt; // MQTT source against a real mosquitto: stored before PUBACK, once each, rejected kept, broker restart, probe
mod phi; // canaries through every path of the real binary: never in logs, ACKs, metrics, status, alerts, reports, audit, CLI output
mod process; // the real binary: SIGKILL under load, CLI commands, shipped config files
mod reload; // reload in place: sources added/moved/removed under load, bad file refused, TLS re-read, workers, tokens
mod status_page; // the status page in headless Chromium against a live gateway; alert rules vs /metrics
