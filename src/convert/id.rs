//! Deterministic identities: name-based UUIDs (RFC 4122 §4.3, version 5 = SHA-1), caregate-minted
//! URIs, FHIR search-parameter escaping and base64.
//!
//! Conversion is pure, so every id is a function of the message: a UUIDv5 of
//! `tenant ␟ source ␟ MSH-10 ␟ kind ␟ position` for resources sent with `PUT Type/<id>`, and of
//! `tenant ␟ system|value` for resources sent by identifier. The same message converted twice (or
//! resent by the sender with the same control id) gives the same ids, so the server ends up with
//! one copy (protocols.md §6.2).
//!
//! SHA-1 is used only as RFC 4122 prescribes for version-5 UUIDs (not for security); it is
//! implemented here (FIPS 180-4 §6.1) because nothing in the dependency tree exposes one.

use std::fmt::Write as _;

/// caregate's UUIDv5 namespace: `c1ec1301-88f4-5f90-bdf1-c762c5e1f42f`, itself the v5 UUID of
/// `https://caregate/ns` in the RFC 4122 URL namespace. Changing it changes every id ever sent.
const NAMESPACE: [u8; 16] = [
    0xc1, 0xec, 0x13, 0x01, 0x88, 0xf4, 0x5f, 0x90, 0xbd, 0xf1, 0xc7, 0x62, 0xc5, 0xe1, 0xf4, 0x2f,
];

/// SHA-1 digest of `data` (FIPS 180-4).
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let bit_len = (data.len() as u64).wrapping_mul(8);
    // The last partial block, the 0x80 marker, zero padding and the length: one or two blocks,
    // built on the stack.
    let full = data.len() / 64 * 64;
    let rest = &data[full..];
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let tail_len = if rest.len() < 56 { 64 } else { 128 };
    tail[tail_len - 8..tail_len].copy_from_slice(&bit_len.to_be_bytes());
    for block in data[..full]
        .chunks_exact(64)
        .chain(tail[..tail_len].chunks_exact(64))
    {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let mut v = h;
        // Four rounds of 20 steps, each with its own function and constant (one loop per
        // round, so there is no per-step branch on the step number).
        let (w0, w1, w2, w3) = (&w[..20], &w[20..40], &w[40..60], &w[60..]);
        rounds(&mut v, w0, 0x5A82_7999, |b, c, d| (b & c) | (!b & d));
        rounds(&mut v, w1, 0x6ED9_EBA1, |b, c, d| b ^ c ^ d);
        rounds(&mut v, w2, 0x8F1B_BCDC, |b, c, d| {
            (b & c) | (b & d) | (c & d)
        });
        rounds(&mut v, w3, 0xCA62_C1D6, |b, c, d| b ^ c ^ d);
        for (hv, v) in h.iter_mut().zip(v) {
            *hv = hv.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// SHA-1 steps over `words` with round constant `k` and round function `f` (FIPS 180-4 §6.1.2).
#[inline(always)]
fn rounds(state: &mut [u32; 5], words: &[u32], k: u32, f: impl Fn(u32, u32, u32) -> u32) {
    let [mut a, mut b, mut c, mut d, mut e] = *state;
    for wi in words {
        let t = a
            .rotate_left(5)
            .wrapping_add(f(b, c, d))
            .wrapping_add(e)
            .wrapping_add(k)
            .wrapping_add(*wi);
        e = d;
        d = c;
        c = b.rotate_left(30);
        b = a;
        a = t;
    }
    *state = [a, b, c, d, e];
}

/// RFC 4122 version-5 UUID of `name` in `namespace`, lower-case hyphenated.
pub fn uuid_v5(namespace: &[u8; 16], name: &[u8]) -> String {
    let mut input = Vec::with_capacity(16 + name.len());
    input.extend_from_slice(namespace);
    input.extend_from_slice(name);
    uuid_text(&sha1(&input))
}

/// The version-5 UUID text from the SHA-1 of namespace + name.
fn uuid_text(d: &[u8; 20]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(HEX[usize::from(byte >> 4)]));
        s.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    s
}

/// The caregate UUID for a list of name parts (joined with U+001F, which HL7 text never holds
/// unescaped, so distinct part lists give distinct names).
pub fn derive(parts: &[&str]) -> String {
    derive_numbered(parts, None)
}

/// [`derive()`] with `number` (in decimal) as one more part, without formatting it to a
/// `String` first: `derive_numbered(&[a, b], Some(7)) == derive(&[a, b, "7"])`.
pub fn derive_numbered(parts: &[&str], number: Option<usize>) -> String {
    let mut digits = [0u8; 20];
    let number = number.map(|n| decimal(n, &mut digits));
    let len: usize = parts.iter().chain(&number).map(|p| p.len() + 1).sum();
    let mut input = Vec::with_capacity(16 + len);
    input.extend_from_slice(&NAMESPACE);
    for (i, p) in parts.iter().chain(&number).enumerate() {
        if i > 0 {
            input.push(0x1f);
        }
        input.extend_from_slice(p.as_bytes());
    }
    uuid_text(&sha1(&input))
}

/// `n` in decimal, written into `buf`.
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &str {
    let mut start = buf.len();
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        start -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(buf.get(start..).unwrap_or_default()).unwrap_or_default()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A URI under `base` made of `parts` (each percent-encoded): `urn:` bases join with `:`,
/// others with `/`.
pub fn minted(base: &str, parts: &[&str]) -> String {
    let sep = if base.starts_with("urn:") { ':' } else { '/' };
    let mut out = base.trim_end_matches(['/', ':']).to_owned();
    for p in parts {
        out.push(sep);
        out.push_str(&percent_encode(p));
    }
    out
}

/// `identifier=<system>|<value>` as a FHIR search query: token escaping (`\`, `|`, `,`, `$`
/// with a backslash) and then percent-encoding of characters that are not safe in a query.
pub fn identifier_query(system: &str, value: &str) -> String {
    let mut q = String::from("identifier=");
    push_query(&mut q, system);
    q.push('|');
    push_query(&mut q, value);
    q
}

fn push_query(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            out.push_str("%5C");
        }
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '.' | '_' | '~' | ':' | '/' | '@' => {
                out.push(c)
            }
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// True when `text` is valid standard base64 (ignoring whitespace).
pub fn is_base64(text: &str) -> bool {
    let t: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if t.is_empty() || t.len() % 4 != 0 {
        return false;
    }
    let pad = t.iter().rev().take_while(|&&b| b == b'=').count();
    pad <= 2
        && t[..t.len() - pad]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Decodes hex digit pairs (ED encoding `Hex`); `None` when not valid hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let t: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if t.len() % 2 != 0 {
        return None;
    }
    t.chunks_exact(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha1_matches_the_fips_test_vectors() {
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(&sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        let million = vec![b'a'; 1_000_000];
        assert_eq!(
            hex(&sha1(&million)),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
    }

    #[test]
    fn uuid_v5_matches_rfc_4122_for_the_dns_namespace() {
        // Python: uuid.uuid5(uuid.NAMESPACE_DNS, "python.org")
        let dns = [
            0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4,
            0x30, 0xc8,
        ];
        assert_eq!(
            uuid_v5(&dns, b"python.org"),
            "886313e1-3b8a-5372-9b90-0c9aee199e5d"
        );
    }

    #[test]
    fn namespace_is_the_url_uuid_of_caregate_ns() {
        let url_ns = [
            0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4,
            0x30, 0xc8,
        ];
        assert_eq!(
            uuid_v5(&url_ns, b"https://caregate/ns"),
            "c1ec1301-88f4-5f90-bdf1-c762c5e1f42f"
        );
    }

    #[test]
    fn numbered_derivation_equals_the_number_as_a_part() {
        for n in [0, 1, 9, 10, 42, 1234, usize::MAX] {
            assert_eq!(
                derive_numbered(&["t", "s", "CTRL", "Observation"], Some(n)),
                derive(&["t", "s", "CTRL", "Observation", &n.to_string()])
            );
        }
        assert_eq!(derive_numbered(&["a"], None), derive(&["a"]));
        assert_eq!(derive_numbered(&[], Some(5)), derive(&["5"]));
    }

    #[test]
    fn derived_ids_are_stable_and_distinguish_part_boundaries() {
        assert_eq!(derive(&["a", "b"]), derive(&["a", "b"]));
        assert_ne!(derive(&["ab", ""]), derive(&["a", "b"]));
        assert_eq!(derive(&["x"]).len(), 36);
    }

    #[test]
    fn minted_uris_join_urn_with_colons_and_urls_with_slashes() {
        assert_eq!(
            minted("urn:caregate", &["north", "codes", "99 LAB"]),
            "urn:caregate:north:codes:99%20LAB"
        );
        assert_eq!(
            minted("https://caregate.local/", &["north", "codes", "L"]),
            "https://caregate.local/north/codes/L"
        );
    }

    #[test]
    fn identifier_query_escapes_search_separators_and_spaces() {
        assert_eq!(
            identifier_query("https://h.example/mrn", "A|1 2"),
            "identifier=https://h.example/mrn|A%5C%7C1%202"
        );
    }

    #[test]
    fn base64_encodes_with_padding_and_validates() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert!(is_base64("Zm9vYmFy"));
        assert!(is_base64("Zg=="));
        assert!(!is_base64("Zg="));
        assert!(!is_base64("not base64!"));
    }

    #[test]
    fn hex_decodes_pairs_and_rejects_odd_or_non_hex() {
        assert_eq!(from_hex("0d0A"), Some(vec![13, 10]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
