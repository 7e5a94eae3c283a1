//! caregate: placeholder (the lead rewrites this file with the architecture map)
pub mod hl7;
