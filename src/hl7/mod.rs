//! HL7 v2 (placeholder; the parser helper owns this file)
pub mod ack;
