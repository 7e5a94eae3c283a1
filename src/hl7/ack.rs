//! ACK builder (lead)
