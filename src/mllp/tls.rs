//! rustls configurations for the MLLP listener and client: TLS 1.3 only, aws-lc-rs provider,
//! PEM files read with `rustls-pki-types`. With `client_ca` set the listener requires a client
//! certificate signed by it (mTLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::TlsConfig;

/// TLS setup errors; they name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the combination.
    #[error("tls setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used.
    #[error("client_ca: {0}")]
    Verifier(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = |what: String| Error::Pem {
        path: path.to_owned(),
        what,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no certificate found".into()));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| Error::Pem {
        path: path.to_owned(),
        what: e.to_string(),
    })
}

/// Reads a PEM CA bundle into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| Error::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The listener's configuration.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, Error> {
    let certs = load_certs(&cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| Error::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(Arc::new(builder.with_single_cert(certs, key)?))
}

/// A listener's server configuration that a reload can replace: connections accepted after
/// [`TlsSwap::replace`] get the new certificate, connections already open keep theirs.
#[derive(Debug, Clone)]
pub struct TlsSwap(Arc<std::sync::RwLock<Arc<ServerConfig>>>);

impl TlsSwap {
    /// Starts with `config`.
    pub fn new(config: Arc<ServerConfig>) -> TlsSwap {
        TlsSwap(Arc::new(std::sync::RwLock::new(config)))
    }

    /// The configuration for the next accepted connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// An acceptor for the next accepted connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }

    /// Installs a new configuration.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

/// A client configuration trusting `ca` (or the system bundle), optionally presenting a
/// client certificate.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, Error> {
    let roots = match ca {
        Some(p) => load_roots(p)?,
        None => {
            let system = std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
            load_roots(&system)?
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
    };
    Ok(Arc::new(config))
}
