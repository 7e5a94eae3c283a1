//! What an upstream answer means for the envelopes in the request: decided here, and only
//! here (protocols.md §6.5; the retry policy is ours).
//!
//! | answer                                   | disposition                                   |
//! |------------------------------------------|-----------------------------------------------|
//! | 2xx                                      | delivered: ack                                |
//! | 408, 425, 429, 5xx, connect/read errors  | retry the same request after a backoff (honouring `Retry-After`); counts against the breaker |
//! | 409 conflict                             | retry; after [`CONFLICT_RETRIES`] in a row, treated like 422 |
//! | 401                                      | fetch a new token once, then retry; still 401: route error |
//! | 403, 404, 405                            | route error: the endpoint or credentials are wrong for *every* message, so nothing is dead-lettered; retried with backoff, breaker and outage alert until an operator fixes it |
//! | 413                                      | split the request; a single message still too large is rejected |
//! | other 4xx (400, 412, 422, ...)           | rejected: the request is split until the message at fault is alone, which is dead-lettered with the OperationOutcome; the rest goes on |

use std::time::Duration;

/// A 409 on the same request this many times in a row is treated as a rejection.
pub const CONFLICT_RETRIES: u32 = 3;

/// Longest `Retry-After` honoured; a larger value is capped (a broken header must not stall a
/// tenant for days).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What came back for one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// An HTTP response.
    Status {
        /// Status code.
        status: u16,
        /// Parsed `Retry-After`.
        retry_after: Option<Duration>,
        /// Body (an OperationOutcome or a transaction-response), possibly truncated.
        body: String,
    },
    /// No response: connection refused, reset, TLS failure, timeout.
    Transport(String),
}

/// What to do with the envelopes of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Stored by the upstream: acknowledge.
    Delivered,
    /// Try the same request again later (`after`: the server's `Retry-After`).
    Retry {
        /// Server-requested delay.
        after: Option<Duration>,
    },
    /// Get a fresh token, then retry at once (once).
    Reauthenticate,
    /// The endpoint or credentials are wrong: retry with backoff, alert, never dead-letter.
    RouteError,
    /// Too large: split the request.
    Split,
    /// The content was refused: isolate the message at fault and dead-letter it.
    Reject,
}

/// Classifies an answer. `conflicts` is how many 409s this request already got in a row;
/// `reauthenticated` whether a 401 was already answered with a fresh token.
pub fn classify(answer: &Answer, conflicts: u32, reauthenticated: bool) -> Disposition {
    let Answer::Status {
        status,
        retry_after,
        ..
    } = answer
    else {
        return Disposition::Retry { after: None };
    };
    match *status {
        200..=299 => Disposition::Delivered,
        401 if !reauthenticated => Disposition::Reauthenticate,
        401 | 403 | 404 | 405 => Disposition::RouteError,
        409 if conflicts + 1 < CONFLICT_RETRIES => Disposition::Retry { after: None },
        413 => Disposition::Split,
        408 | 425 | 429 | 500..=599 => Disposition::Retry {
            after: retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
        },
        // 1xx/3xx are not answers a FHIR server gives to a transaction: treat as transient.
        100..=199 | 300..=399 => Disposition::Retry { after: None },
        _ => Disposition::Reject,
    }
}

/// Whether a 2xx answer to a transaction of `entries` entries is the server's: a FHIR
/// `transaction-response` Bundle with one entry per request entry, each with a 2xx status
/// (FHIR R4 http.html#transaction-response). Anything else, such as a proxy's or a login page's
/// `200 OK`, or a server that ignored the transaction, is not a delivery: the envelopes stay
/// and are retried as a route error (alert, never dead-letter). The reason names no content.
pub fn confirms(body: &str, entries: usize) -> Result<(), &'static str> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|_| "a 2xx answer that is not FHIR JSON (or larger than the read limit)")?;
    if v["resourceType"] != "Bundle" || v["type"] != "transaction-response" {
        return Err("a 2xx answer that is not a transaction-response Bundle");
    }
    let got = v["entry"].as_array().map_or(&[][..], Vec::as_slice);
    if got.len() != entries {
        return Err("a transaction-response with another number of entries than sent");
    }
    let ok = |e: &serde_json::Value| {
        e["response"]["status"]
            .as_str()
            .is_some_and(|s| s.trim_start().starts_with('2'))
    };
    if !got.iter().all(ok) {
        return Err("a transaction-response with an entry that did not succeed");
    }
    Ok(())
}

/// Parses `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3), relative to `now`.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let d = when.duration_since(now);
    Some(Duration::try_from(d).unwrap_or(Duration::ZERO))
}

/// Exponential backoff with jitter: the n-th retry waits between half and all of
/// `min(max, initial * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A fresh backoff; `seed` feeds the jitter (any value; tests fix it).
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng: splitmix64(seed) | 1,
        }
    }

    /// The next delay (and counts the attempt).
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        let cap = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs spread, not secrecy.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = cap / 2;
        let spread = half.as_nanos() as u64;
        let extra = if spread == 0 { 0 } else { self.rng % spread };
        half + Duration::from_nanos(extra)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Retries since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// One splitmix64 step: spreads nearby seeds apart.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed from the process's hash randomness (no RNG crate needed for jitter).
pub fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> Answer {
        Answer::Status {
            status: s,
            retry_after: None,
            body: String::new(),
        }
    }

    #[test]
    fn every_status_class_has_its_disposition() {
        let d = |s| classify(&status(s), 0, false);
        assert_eq!(d(200), Disposition::Delivered);
        assert_eq!(d(201), Disposition::Delivered);
        assert_eq!(d(204), Disposition::Delivered);
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert_eq!(d(s), Disposition::Retry { after: None }, "{s}");
        }
        assert_eq!(d(401), Disposition::Reauthenticate);
        assert_eq!(classify(&status(401), 0, true), Disposition::RouteError);
        for s in [403, 404, 405] {
            assert_eq!(d(s), Disposition::RouteError, "{s}");
        }
        assert_eq!(d(413), Disposition::Split);
        for s in [400, 410, 412, 415, 422] {
            assert_eq!(d(s), Disposition::Reject, "{s}");
        }
        assert_eq!(
            classify(&Answer::Transport("refused".into()), 0, false),
            Disposition::Retry { after: None }
        );
    }

    #[test]
    fn conflicts_retry_then_reject() {
        assert_eq!(
            classify(&status(409), 0, false),
            Disposition::Retry { after: None }
        );
        assert_eq!(
            classify(&status(409), CONFLICT_RETRIES - 2, false),
            Disposition::Retry { after: None }
        );
        assert_eq!(
            classify(&status(409), CONFLICT_RETRIES - 1, false),
            Disposition::Reject
        );
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let a = Answer::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
            body: String::new(),
        };
        assert_eq!(
            classify(&a, 0, false),
            Disposition::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
        let a = Answer::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(86_400)),
            body: String::new(),
        };
        assert_eq!(
            classify(&a, 0, false),
            Disposition::Retry {
                after: Some(MAX_RETRY_AFTER)
            }
        );
    }

    #[test]
    fn only_a_matching_transaction_response_confirms_a_delivery() {
        let response = |statuses: &[&str]| {
            let entries: Vec<String> = statuses
                .iter()
                .map(|s| {
                    format!(
                        r#"{{"response":{{"status":"{s}","location":"Observation/x/_history/1"}}}}"#
                    )
                })
                .collect();
            format!(
                r#"{{"resourceType":"Bundle","type":"transaction-response","entry":[{}]}}"#,
                entries.join(",")
            )
        };
        assert_eq!(
            confirms(&response(&["201 Created", "200 OK", "200"]), 3),
            Ok(())
        );
        assert_eq!(confirms(&response(&[]), 0), Ok(()));
        for (body, entries) in [
            ("<html><body>Please log in</body></html>".to_owned(), 1),
            (String::new(), 1),
            (r#"{"resourceType":"OperationOutcome","issue":[]}"#.to_owned(), 1),
            (r#"{"resourceType":"Bundle","type":"batch-response","entry":[{"response":{"status":"201"}}]}"#.to_owned(), 1),
            (response(&["201 Created"]), 2),
            (response(&["201 Created", "201 Created"]), 1),
            (response(&["201 Created", "400 Bad Request"]), 2),
            (r#"{"resourceType":"Bundle","type":"transaction-response","entry":[{}]}"#.to_owned(), 1),
            (response(&["201 Created"])[..40].to_owned(), 1),
        ] {
            assert!(confirms(&body, entries).is_err(), "{body} confirmed {entries} entries");
        }
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Tue, 24 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Tue, 24 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_with_jitter_within_bounds_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 42);
        let mut caps = Vec::new();
        for n in 0..8u32 {
            let cap = Duration::from_millis(100)
                .saturating_mul(1 << n)
                .min(Duration::from_secs(2));
            let d = b.next_delay();
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {n}: {d:?} outside {cap:?}"
            );
            caps.push(cap);
        }
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..20 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), seed);
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 10, "jitter should differ between seeds");
    }
}
