//! `convert::convert_bytes` with the fixed Context of tests/it/convert.rs: never panics, and the Bundle
//! serializes to JSON (see common.rs).
#![no_main]

#[path = "common.rs"]
mod common;

use caregate::convert;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = common::with_ctx(|ctx| convert::convert_bytes(ctx, data));
    if let Ok(conv) = out {
        common::check(&conv);
        // Idempotent: the same input gives the same Bundle (ids are name-based).
        let again =
            common::with_ctx(|ctx| convert::convert_bytes(ctx, data)).expect("converts again");
        assert_eq!(
            conv.bundle.to_json(),
            again.bundle.to_json(),
            "conversion not deterministic"
        );
    }
});
