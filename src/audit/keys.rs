//! The installation's audit keys, created on first start in the key directory (`data_dir`):
//!
//! | file                | content                                  | mode |
//! |---------------------|------------------------------------------|------|
//! | `audit-signing.key` | Ed25519 private key, PKCS#8 v2 DER       | 0600 |
//! | `audit-signing.pub` | Ed25519 public key, 64 hex digits + `\n` | 0644 |
//! | `audit-patient.key` | 32 random bytes: the HMAC key for patient references | 0600 |
//!
//! The keys live beside the audit directory, not in it, so copying the trail to an auditor
//! never copies a private key. The auditor verifies with the `.pub` file alone, which should
//! reach them by a channel other than the trail itself (otherwise a forger swaps both).
//!
//! A private key file readable by group or others is refused, not silently fixed.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SecureRandom as _;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};

use super::Error;
use super::entry::{PatientRef, hex, unhex};

/// Private signing key file name.
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";
/// Public key file name.
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";
/// Patient-reference HMAC key file name.
pub const PATIENT_KEY_FILE: &str = "audit-patient.key";

/// The Ed25519 key that signs checkpoints.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        hex(self.pair.sign(message).as_ref())
    }

    /// The matching public key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }
}

/// An Ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    /// Reads a public key file (64 hex digits, surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<PublicKey, Error> {
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        PublicKey::from_hex(text.trim()).ok_or_else(|| Error::Key {
            path: path.to_owned(),
            reason: "not an Ed25519 public key (64 lowercase hex digits)",
        })
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<PublicKey> {
        unhex(s)?.try_into().ok().map(PublicKey)
    }

    /// Key id written in checkpoints: the first 8 bytes of SHA-256 of the key, in hex.
    pub fn id(&self) -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.0);
        hex(&d.as_ref()[..8])
    }

    /// Checks a hex signature of `message`.
    pub fn verify(&self, message: &[u8], sig_hex: &str) -> bool {
        let Some(sig) = unhex(sig_hex) else {
            return false;
        };
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(message, &sig)
            .is_ok()
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// The per-installation key for patient references (HMAC-SHA256).
pub struct PatientKey(aws_lc_rs::hmac::Key);

impl PatientKey {
    /// The keyed hash of one patient identifier: `system` is the assigning authority (or the
    /// identifier system URI), `value` the identifier. Both go into the MAC only.
    pub fn reference(&self, system: &str, value: &str) -> PatientRef {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        // Length-prefixed so ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(system.len() as u64).to_be_bytes());
        ctx.update(system.as_bytes());
        ctx.update(value.as_bytes());
        let tag = ctx.sign();
        let mut out = [0; 32];
        out.copy_from_slice(tag.as_ref());
        PatientRef::from_mac(out)
    }
}

/// Both keys of an installation.
pub struct Keys {
    /// Signs checkpoints.
    pub signing: SigningKey,
    /// Hashes patient identifiers.
    pub patient: PatientKey,
}

impl Keys {
    /// Loads the keys from `dir`, creating any that do not exist yet (first start).
    pub fn load_or_create(dir: &Path) -> Result<Keys, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let signing_path = dir.join(SIGNING_KEY_FILE);
        let pkcs8 = match read_private(&signing_path)? {
            Some(b) => b,
            None => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| Error::Key {
                    path: signing_path.clone(),
                    reason: "generating an Ed25519 key failed",
                })?;
                write_atomic(dir, SIGNING_KEY_FILE, doc.as_ref(), 0o600)?;
                doc.as_ref().to_vec()
            }
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| Error::Key {
            path: signing_path.clone(),
            reason: "not an Ed25519 PKCS#8 private key",
        })?;
        let mut public = [0; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        let public = PublicKey(public);

        let pub_path = dir.join(PUBLIC_KEY_FILE);
        match fs::read_to_string(&pub_path) {
            Ok(text) => {
                if PublicKey::from_hex(text.trim()) != Some(public) {
                    return Err(Error::Key {
                        path: pub_path,
                        reason: "does not match the private signing key beside it",
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let text = format!("{}\n", public.to_hex());
                write_atomic(dir, PUBLIC_KEY_FILE, text.as_bytes(), 0o644)?;
            }
            Err(e) => return Err(Error::io(&pub_path, e)),
        }

        let patient_path = dir.join(PATIENT_KEY_FILE);
        let patient = match read_private(&patient_path)? {
            Some(b) if b.len() == 32 => b,
            Some(_) => {
                return Err(Error::Key {
                    path: patient_path,
                    reason: "not a 32-byte key",
                });
            }
            None => {
                let mut b = vec![0; 32];
                aws_lc_rs::rand::SystemRandom::new()
                    .fill(&mut b)
                    .map_err(|_| Error::Key {
                        path: patient_path.clone(),
                        reason: "no random bytes from the system",
                    })?;
                write_atomic(dir, PATIENT_KEY_FILE, &b, 0o600)?;
                b
            }
        };
        Ok(Keys {
            signing: SigningKey { pair, public },
            patient: PatientKey(aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA256,
                &patient,
            )),
        })
    }
}

/// Reads a private key file; `None` if absent; refuses one readable by group or others.
fn read_private(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read(path).map(Some).map_err(|e| Error::io(path, e))
}

/// Writes `name` in `dir` via a temporary file created with `mode`, fsync, rename, fsync dir.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<PathBuf, Error> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Makes a directory's entries (new, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_created_once_with_private_modes_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load_or_create(dir.path()).unwrap();
        for (name, want) in [
            (SIGNING_KEY_FILE, 0o600),
            (PATIENT_KEY_FILE, 0o600),
            (PUBLIC_KEY_FILE, 0o644),
        ] {
            let mode = fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, want, "{name}");
        }
        let b = Keys::load_or_create(dir.path()).unwrap();
        assert_eq!(a.signing.public(), b.signing.public());
        assert_eq!(
            a.patient.reference("MRN", "12345"),
            b.patient.reference("MRN", "12345")
        );
        let exported = PublicKey::load(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(&exported, a.signing.public());
        let sig = a.signing.sign(b"hello");
        assert!(exported.verify(b"hello", &sig));
        assert!(!exported.verify(b"hellO", &sig));
    }

    #[test]
    fn patient_references_depend_on_key_system_and_value() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let k1 = Keys::load_or_create(d1.path()).unwrap().patient;
        let k2 = Keys::load_or_create(d2.path()).unwrap().patient;
        let r = k1.reference("MRN", "12345");
        assert_ne!(r, k2.reference("MRN", "12345"));
        assert_ne!(r, k1.reference("MRN", "12346"));
        assert_ne!(k1.reference("ab", "c"), k1.reference("a", "bc"));
        assert!(!r.to_string().contains("12345"));
    }

    #[test]
    fn a_world_readable_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Keys::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(SIGNING_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keys::load_or_create(dir.path()).err().unwrap();
        assert!(
            matches!(err, Error::KeyPermissions { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_public_key_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Keys::load_or_create(dir.path()).unwrap();
        fs::write(
            dir.path().join(PUBLIC_KEY_FILE),
            format!("{}\n", "ab".repeat(32)),
        )
        .unwrap();
        assert!(matches!(
            Keys::load_or_create(dir.path()),
            Err(Error::Key { .. })
        ));
    }
}
