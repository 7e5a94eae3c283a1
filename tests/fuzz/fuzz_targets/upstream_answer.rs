//! What the upstream FHIR server and its OAuth2 token endpoint send back, read as caregate reads
//! it: the `Retry-After` text, the status classification, a Consent search page (any JSON) and
//! the latest-wins merge, and the token's `expires_in`. Never panics; besides:
//! - a server-requested delay never exceeds `MAX_RETRY_AFTER`; only a 2xx is `Delivered`;
//! - a token is never kept past `MAX_TOKEN_LIFE`, whatever `expires_in` says;
//! - a link is followed only on the base URL's scheme, host and port, without user info, at a
//!   path under the base path (`forward::client::under_base`; the Retry-After text doubles as
//!   the link);
//! - a page has no more Consents than entries, each names a patient identifier, and the merge
//!   keeps at most one decision per patient.
//!
//! Layout: status (2 bytes LE), 409s so far, reauthenticated flag, `expires_in` (8 bytes LE),
//! then the `Retry-After` value up to the first `\n`, then the body.
#![no_main]

use std::time::Instant;

use caregate::consent_pull;
use caregate::forward::client::{MAX_TOKEN_LIFE, Url, token_good_until, under_base};
use caregate::forward::retry::{self, Answer, Disposition};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<12>() else {
        return;
    };
    let status = u16::from_le_bytes([head[0], head[1]]);
    let conflicts = u32::from(head[2]);
    let reauthenticated = head[3] & 1 == 1;
    let mut expires = [0u8; 8];
    expires.copy_from_slice(&head[4..12]);
    let expires_in = u64::from_le_bytes(expires);
    let (header, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };

    let now = jiff::Timestamp::from_second(1_795_000_000).expect("a fixed instant");
    let retry_after = retry::parse_retry_after(&String::from_utf8_lossy(header), now);
    let answer = Answer::Status {
        status,
        retry_after,
        body: String::from_utf8_lossy(body).into_owned(),
    };
    match retry::classify(&answer, conflicts, reauthenticated) {
        Disposition::Retry { after: Some(d) } => {
            assert!(d <= retry::MAX_RETRY_AFTER, "Retry-After {d:?} not capped")
        }
        Disposition::Delivered => assert!((200..300).contains(&status), "{status} delivered"),
        _ => {}
    }

    // A `next` link (the Retry-After text doubles as one): followed only under the base URL.
    let link = String::from_utf8_lossy(header);
    for base in ["https://fhir.example.org/r4", "https://fhir.example.org"] {
        let base = Url::parse(base).expect("a fixed base");
        if let Some(u) = under_base(&base, &link) {
            assert_eq!(
                (u.scheme(), u.host_str(), u.port_or_known_default()),
                (base.scheme(), base.host_str(), base.port_or_known_default()),
                "{link:?} left the base"
            );
            assert!(u.username().is_empty() && u.password().is_none(), "{link:?}");
            let base_path = base.path().trim_end_matches('/');
            let rest = u.path().strip_prefix(base_path).unwrap_or("x");
            assert!(rest.is_empty() || rest.starts_with('/'), "{link:?} -> {u}");
        }
    }

    let t0 = Instant::now();
    let until = token_good_until(t0, Some(expires_in));
    assert!(until.duration_since(t0) <= MAX_TOKEN_LIFE, "token kept too long");

    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Ok(page) = consent_pull::read_page(&v)
    {
        assert!(page.consents.len() <= page.read, "more Consents than entries");
        for c in &page.consents {
            assert!(!c.system.is_empty() && !c.value.is_empty(), "a Consent without a patient");
        }
        let n = page.consents.len();
        assert!(consent_pull::latest(page.consents).len() <= n);
    }
});
