//! Who may call which operator endpoint: bearer tokens with a role and (for the tenant roles) a
//! tenant, as `[[admin.token]]` configures them. Pure: no I/O, no clock; `admin` calls
//! [`Tokens::authenticate`] then [`decide`] for every request, and the table below is the
//! whole policy (platform requirements: "role-based and tenant-based isolation SHALL be
//! strictly enforced for all integrated events, data flows, and audit logs").
//!
//! | endpoint                      | system-admin | org-admin (tenant T)            | auditor (tenant T)      |
//! |-------------------------------|--------------|---------------------------------|-------------------------|
//! | `GET /status`                 | all tenants  | T's entries only                | 403                     |
//! | `GET /queue/stats`            | all          | 403 (whole-box totals)          | 403                     |
//! | `GET /queue/dead-letters`     | all / any    | T (no tenant = T; other = 403)  | 403                     |
//! | `POST /queue/replay/{t}..`    | any t        | t = T, else 403                 | 403                     |
//! | `DELETE /queue/dead-letters/{t}/{id}` | any t | t = T, else 403                | 403                     |
//! | `GET /audit/export?tenant=t`  | any t, `-`   | t = T (no tenant = T), else 403 | t = T (no tenant = T), else 403 |
//! | `GET /audit/verify`           | yes          | yes                             | yes                     |
//!
//! `/livez`, `/readyz` and `/metrics` are open (no patient data, no tenant detail beyond
//! counters). A missing or unknown token is 401; a known token outside its role or tenant is
//! 403. With no token configured at all, every operator endpoint answers 403 saying so.
//!
//! Tokens are stored as their SHA-256 only ("token files hashed at rest"): the presented token
//! is hashed and compared with every configured hash in constant time.

use std::fmt;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, every tenant.
    SystemAdmin,
    /// Operations on one tenant: its status, dead letters, replay, purge, audit.
    OrgAdmin,
    /// Read-only audit data of one tenant.
    Auditor,
}

impl Role {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SystemAdmin => "system-admin",
            Role::OrgAdmin => "org-admin",
            Role::Auditor => "auditor",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system-admin" => Some(Role::SystemAdmin),
            "org-admin" => Some(Role::OrgAdmin),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured token: name (logged and audited), role, tenant, SHA-256 of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Name, e.g. `ops-alice`: the actor in logs and the audit trail.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The tenant (`None` exactly for system-admin).
    pub tenant: Option<String>,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a token, as the config stores it.
pub fn hash(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits → 32 bytes (surrounding whitespace allowed).
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A fresh random token (32 bytes from aws-lc-rs's system RNG, hex) and its hash.
pub fn new_token() -> Result<(String, [u8; 32]), aws_lc_rs::error::Unspecified> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes)?;
    let token = to_hex(&bytes);
    let h = hash(&token);
    Ok((token, h))
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens(pub Vec<Token>);

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No or unknown token: 401.
    Unauthenticated(&'static str),
    /// Known token, not allowed (or no tokens configured): 403.
    Forbidden(String),
}

impl Tokens {
    /// The token whose hash matches `presented` (every hash is compared, in constant time).
    pub fn authenticate(&self, presented: Option<&str>) -> Result<&Token, Refused> {
        if self.0.is_empty() {
            return Err(Refused::Forbidden(
                "the operator API is disabled: configure an [[admin.token]]".into(),
            ));
        }
        let Some(presented) = presented else {
            return Err(Refused::Unauthenticated("missing bearer token"));
        };
        let h = hash(presented);
        let mut found = None;
        for t in &self.0 {
            if verify_slices_are_equal(&h, &t.hash).is_ok() && found.is_none() {
                found = Some(t);
            }
        }
        found.ok_or(Refused::Unauthenticated("invalid bearer token"))
    }
}

/// The token from an `Authorization` header value (`Bearer <token>`, scheme case-insensitive).
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, rest) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty()).then_some(t)
}

/// The token from an `Authorization` header value: `Bearer <token>`, or `Basic` with the token
/// as the password (any user name), which is what a browser sends for the status page after
/// its login prompt. Scheme case-insensitive.
pub fn credentials(header: Option<&str>) -> Option<String> {
    if let Some(t) = bearer(header) {
        return Some(t.to_owned());
    }
    let (scheme, rest) = header?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(rest.trim())?).ok()?;
    let (_, password) = decoded.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// Standard base64 (RFC 4648 §4, padding optional); `None` on anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// An operator endpoint, with the tenant the request names (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `GET /status`.
    Status,
    /// `GET /queue/stats`.
    QueueStats,
    /// `GET /queue/dead-letters[?tenant=]`.
    DeadLetters(Option<&'a str>),
    /// `POST /queue/replay/{tenant}[/{id}]`.
    Replay(&'a str),
    /// `DELETE /queue/dead-letters/{tenant}/{id}`.
    Purge(&'a str),
    /// `GET /audit/export[?tenant=]`.
    AuditExport(Option<&'a str>),
    /// `GET /audit/verify`.
    AuditVerify,
    /// `GET|POST /consent/{tenant}`: consent registry of a tenant.
    Consent(&'a str),
}

/// What the caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant (or the one named).
    All,
    /// Exactly this tenant: filter to it, or act on it.
    Tenant(String),
}

impl Scope {
    /// Whether `tenant` is visible.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => t == tenant,
        }
    }
}

/// The decision for `role`/`own` (the token's tenant) on `endpoint`: the scope it may act
/// in, or why not (403).
pub fn decide(role: Role, own: Option<&str>, endpoint: Endpoint<'_>) -> Result<Scope, String> {
    let deny = |what: &str| Err(format!("role {role} may not {what}"));
    let own_tenant = |named: Option<&str>, what: &str| -> Result<Scope, String> {
        let Some(own) = own else {
            return deny(what);
        };
        match named {
            None => Ok(Scope::Tenant(own.to_owned())),
            Some(t) if t == own => Ok(Scope::Tenant(own.to_owned())),
            Some(_) => Err(format!("role {role} is limited to its own tenant")),
        }
    };
    match (role, endpoint) {
        (Role::SystemAdmin, _) => Ok(Scope::All),
        (Role::OrgAdmin, Endpoint::Status) => own_tenant(None, "read the status"),
        (Role::OrgAdmin, Endpoint::QueueStats) => deny("read whole-box queue stats (see /status)"),
        (Role::OrgAdmin, Endpoint::DeadLetters(t)) => own_tenant(t, "list dead letters"),
        (Role::OrgAdmin, Endpoint::Replay(t)) => own_tenant(Some(t), "replay"),
        (Role::OrgAdmin, Endpoint::Purge(t)) => own_tenant(Some(t), "purge"),
        (Role::OrgAdmin, Endpoint::Consent(t)) => own_tenant(Some(t), "change consent"),
        (Role::Auditor, Endpoint::Consent(_)) => deny("change consent"),
        (Role::OrgAdmin | Role::Auditor, Endpoint::AuditExport(t)) => {
            own_tenant(t, "export the audit trail")
        }
        (Role::OrgAdmin | Role::Auditor, Endpoint::AuditVerify) => match own {
            Some(t) => Ok(Scope::Tenant(t.to_owned())),
            None => deny("verify the audit trail"),
        },
        (Role::Auditor, Endpoint::Status) => deny("read the status"),
        (Role::Auditor, Endpoint::QueueStats) => deny("read queue stats"),
        (Role::Auditor, Endpoint::DeadLetters(_)) => deny("list dead letters"),
        (Role::Auditor, Endpoint::Replay(_)) => deny("replay"),
        (Role::Auditor, Endpoint::Purge(_)) => deny("purge"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    #[test]
    fn basic_credentials_carry_the_token_as_password() {
        // "operator:s3cret-token" and "x:a:b" (a colon in the password is kept).
        assert_eq!(
            super::credentials(Some("Basic b3BlcmF0b3I6czNjcmV0LXRva2Vu")).as_deref(),
            Some("s3cret-token")
        );
        assert_eq!(
            super::credentials(Some("basic eDphOmI=")).as_deref(),
            Some("a:b")
        );
        assert_eq!(
            super::credentials(Some("Bearer tok")).as_deref(),
            Some("tok")
        );
        for bad in ["Basic", "Basic !!!", "Basic eDo=", "Digest abc", ""] {
            assert_eq!(super::credentials(Some(bad)), None, "{bad}");
        }
        assert_eq!(super::credentials(None), None);
    }

    const N: Option<&str> = Some("north");

    fn all_endpoints(t: Option<&'static str>) -> Vec<Endpoint<'static>> {
        vec![
            Endpoint::Status,
            Endpoint::QueueStats,
            Endpoint::DeadLetters(t),
            Endpoint::Replay(t.unwrap_or("north")),
            Endpoint::Purge(t.unwrap_or("north")),
            Endpoint::AuditExport(t),
            Endpoint::AuditVerify,
            Endpoint::Consent(t.unwrap_or("north")),
        ]
    }

    #[test]
    fn system_admin_may_do_everything_everywhere() {
        for t in [None, Some("north"), Some("south"), Some("-")] {
            for e in all_endpoints(t) {
                assert_eq!(decide(Role::SystemAdmin, None, e), Ok(Scope::All), "{e:?}");
            }
        }
    }

    #[test]
    fn org_admin_is_limited_to_its_tenant_and_cannot_read_box_totals() {
        let own = || Ok(Scope::Tenant("north".into()));
        let r = |e| decide(Role::OrgAdmin, N, e);
        assert_eq!(r(Endpoint::Status), own());
        assert!(r(Endpoint::QueueStats).is_err());
        assert_eq!(r(Endpoint::DeadLetters(None)), own());
        assert_eq!(r(Endpoint::DeadLetters(N)), own());
        assert!(r(Endpoint::DeadLetters(Some("south"))).is_err());
        assert_eq!(r(Endpoint::Replay("north")), own());
        assert!(r(Endpoint::Replay("south")).is_err());
        assert_eq!(r(Endpoint::Purge("north")), own());
        assert!(r(Endpoint::Purge("south")).is_err());
        assert_eq!(r(Endpoint::AuditExport(None)), own());
        assert_eq!(r(Endpoint::AuditExport(N)), own());
        assert!(r(Endpoint::AuditExport(Some("south"))).is_err());
        assert!(
            r(Endpoint::AuditExport(Some("-"))).is_err(),
            "system entries"
        );
        assert_eq!(r(Endpoint::AuditVerify), own());
    }

    #[test]
    fn auditor_reads_only_its_tenants_audit_data() {
        let own = || Ok(Scope::Tenant("north".into()));
        let r = |e| decide(Role::Auditor, N, e);
        for e in [
            Endpoint::Status,
            Endpoint::QueueStats,
            Endpoint::DeadLetters(None),
            Endpoint::DeadLetters(N),
            Endpoint::Replay("north"),
            Endpoint::Purge("north"),
        ] {
            assert!(r(e).is_err(), "{e:?}");
        }
        assert_eq!(r(Endpoint::AuditExport(None)), own());
        assert_eq!(r(Endpoint::AuditExport(N)), own());
        assert!(r(Endpoint::AuditExport(Some("south"))).is_err());
        assert!(r(Endpoint::AuditExport(Some("-"))).is_err());
        assert_eq!(r(Endpoint::AuditVerify), own());
    }

    #[test]
    fn a_tenant_role_without_a_tenant_gets_nothing() {
        // Config validation forbids it; the decision does not rely on that.
        for role in [Role::OrgAdmin, Role::Auditor] {
            for e in all_endpoints(None) {
                assert!(decide(role, None, e).is_err(), "{role} {e:?}");
            }
        }
    }

    fn tokens() -> Tokens {
        Tokens(vec![
            Token {
                name: "root".into(),
                role: Role::SystemAdmin,
                tenant: None,
                hash: hash("s3cret-root"),
            },
            Token {
                name: "alice".into(),
                role: Role::OrgAdmin,
                tenant: Some("north".into()),
                hash: hash("s3cret-alice"),
            },
        ])
    }

    #[test]
    fn authentication_matches_the_hash_and_refuses_the_rest() {
        let t = tokens();
        assert_eq!(t.authenticate(Some("s3cret-alice")).unwrap().name, "alice");
        assert_eq!(t.authenticate(Some("s3cret-root")).unwrap().name, "root");
        assert!(matches!(
            t.authenticate(Some("s3cret")),
            Err(Refused::Unauthenticated(_))
        ));
        assert!(matches!(
            t.authenticate(None),
            Err(Refused::Unauthenticated(_))
        ));
        assert!(matches!(
            Tokens::default().authenticate(Some("s3cret-root")),
            Err(Refused::Forbidden(m)) if m.contains("[[admin.token]]")
        ));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn hashes_round_trip_through_hex_and_new_tokens_differ() {
        let h = hash("x");
        assert_eq!(parse_hash(&format!(" {}\n", to_hex(&h))), Some(h));
        assert_eq!(parse_hash("abc"), None);
        assert_eq!(parse_hash(&"g".repeat(64)), None);
        let (a, ha) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash(&a), ha);
        assert!(
            format!("{:?}", tokens().0[0]).contains("root")
                && !format!("{:?}", tokens().0[0]).contains("hash")
        );
    }
}
