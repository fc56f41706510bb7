//! TLS for the gRPC listener: the certificate the controller presents to its workers, so that
//! the session token and the plan never cross the network in the clear and a worker can tell
//! its controller from an impostor (docs/security.md, "The channel between workers and
//! controller").
//!
//! The certificate and key are files (`pacer controller --tls-cert/--tls-key`, the operator's
//! mounted Secret) and they are renewed while the controller runs (cert-manager, a chart
//! upgrade, a cron job): [`ReloadingCert`] looks at the files' metadata at most every
//! [`RELOAD_CHECK_INTERVAL`] when a handshake needs the certificate, and reads them again when
//! they changed. A pair that does not load (a half-written renewal: the new certificate beside
//! the old key) is logged and the previous pair kept; it is tried again when the files change
//! again. Connections already open keep the certificate they were made with.
//!
//! rustls with the aws-lc-rs provider, as everywhere else in the project; the handshake
//! offers ALPN `h2` only (gRPC).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often, at most, a handshake looks at the files' metadata: renewals happen days or
/// hours apart, so a second's delay is nothing, and a flood of handshakes costs one `stat`
/// pair per second rather than one per handshake.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The ALPN protocol the listener speaks: gRPC is HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// Why a certificate or key could not be used. Names the file and the flag; never holds the
/// key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: cannot read the file")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {path}: no PEM certificate in the file")]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("{flag} {path}: not a PEM certificate chain")]
    CertificatePem {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{flag} {path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file")]
    KeyPem {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "--tls-key {key}: not usable with --tls-cert {cert} (unsupported key, or not the certificate's key)"
    )]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The provider of every TLS configuration here: aws-lc-rs, as the rest of the project.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Read every PEM certificate of `path` (`flag` names the file in errors): a chain, or CAs.
pub fn read_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::CertificatePem {
            flag,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The listener's TLS: the certificate files, re-read when they change, and the rustls
/// configuration that presents them.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    cert: Arc<ReloadingCert>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert.cert_path)
            .field("key", &self.cert.key_path)
            .finish()
    }
}

impl ServerTls {
    /// Load `cert` (PEM chain, leaf first) and `key` (PEM private key) now, so a bad pair is
    /// an error at start rather than at the first worker's handshake.
    pub fn from_files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let provider = provider();
        let cert = Arc::new(ReloadingCert::load(
            cert.into(),
            key.into(),
            provider.clone(),
        )?);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Self {
            config: Arc::new(config),
            cert,
        })
    }

    /// The acceptor of the listener's handshakes.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// The files' identity as of a look at their metadata: a renewal changes one of these
/// (Kubernetes swaps a Secret volume's files for new ones; cert-manager and editors write new
/// content, and so a new time or length).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    files: [Option<(SystemTime, u64, u64)>; 2],
}

impl Stamp {
    fn of(cert: &Path, key: &Path) -> Self {
        let one = |p: &Path| {
            let m = std::fs::metadata(p).ok()?;
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let ino = 0;
            Some((m.modified().ok()?, m.len(), ino))
        };
        Self {
            files: [one(cert), one(key)],
        }
    }
}

/// The certificate presented, from files re-read when they change.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

struct State {
    current: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish()
    }
}

impl ReloadingCert {
    fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let stamp = Stamp::of(&cert_path, &key_path);
        let current = Arc::new(read_pair(&cert_path, &key_path, &provider)?);
        Ok(Self {
            cert_path,
            key_path,
            provider,
            state: Mutex::new(State {
                current,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to present now: re-read first when the files changed since the last look
    /// (looking at most every [`RELOAD_CHECK_INTERVAL`]).
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            state.checked = Instant::now();
            let stamp = Stamp::of(&self.cert_path, &self.key_path);
            if stamp != state.stamp {
                // Whatever the outcome, this version of the files has been tried: a pair that
                // does not load is tried again when the files change again, not every second.
                state.stamp = stamp;
                match read_pair(&self.cert_path, &self.key_path, &self.provider) {
                    Ok(pair) => {
                        state.current = Arc::new(pair);
                        tracing::info!(
                            "TLS: {} changed: new connections get the new certificate",
                            self.cert_path.display()
                        );
                    }
                    Err(e) => tracing::warn!(
                        "TLS: the certificate files changed but do not load ({}); still presenting the previous certificate",
                        pacer_proto::error_chain(&e)
                    ),
                }
            }
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Read a certificate chain and its private key, checked to belong together.
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates("--tls-cert", cert)?;
    let pem = std::fs::read(key).map_err(|source| TlsError::Read {
        flag: "--tls-key",
        path: key.to_path_buf(),
        source,
    })?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|source| TlsError::KeyPem {
        flag: "--tls-key",
        path: key.to_path_buf(),
        source,
    })?;
    CertifiedKey::from_der(chain, der, provider).map_err(|source| TlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
}
