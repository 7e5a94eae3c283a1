//! caregate's single integration-test binary: only `mod` lines, one comment each.
//!
//! Fixtures under tests/fixtures are synthetic (written here from the specs, no real patient data).
//! Tests that read ../shared/corpus (third-party, de-identified samples) skip with a visible
//! message when that folder is absent (a user's fresh clone); CI has it.

mod support;
