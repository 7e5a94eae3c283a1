//! caregate's single integration-test binary: only `mod` lines, one comment each.
//!
//! Fixtures under tests/fixtures are synthetic (written here from the specs, no real patient data).
//! Tests that read ../shared/corpus (third-party, de-identified samples) skip with a visible
//! message when that folder is absent (a user's fresh clone); CI has it.

mod support;

mod audit; // audit trail: tamper evidence with file/line, crash recovery, rotation/compression/retention, export
mod convert; // HL7 v2 → FHIR golden Bundles, idempotency, report invariants
mod convert_conformance; // corpus ORU/ADT → FHIR: converts, validates (Node @medplum), compares with other converters
mod corpus_mllp; // every corpus message over MLLP: AA for well-formed, never AA otherwise
mod hl7_corpus; // every corpus HL7 file through the parser
mod mllp; // MLLP ingest: ACK codes, durability before AA, framing, limits, TLS, shutdown
mod process; // the real binary: SIGKILL under load, CLI commands, shipped config files
