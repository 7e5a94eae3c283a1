//! Config loader on arbitrary text: never panics; errors render (file, line, key) and the line
//! they name exists.
#![no_main]

use std::path::Path;

use caregate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(Path::new("/etc/caregate/fuzz.toml"), text) {
        Ok(cfg) => {
            let _ = format!("{cfg:?}");
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("/etc/caregate/fuzz.toml"), "{shown}");
            if let Some(line) = e.line {
                assert!(
                    line >= 1 && line <= text.split('\n').count().max(1),
                    "line {line} out of range"
                );
            }
        }
    }
});
