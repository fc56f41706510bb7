//! How a worker checks that it talks to its controller: TLS, with the controller's certificate
//! verified against the CA the worker is given (`pacer worker --ca FILE`), under the name it
//! dials (or `--server-name`). Only then does the Hello, with the session token, go out
//! (docs/security.md, "The channel between workers and controller").
//!
//! The CA is a file (`--ca`), or PEM text in the environment (`PACER_CA_PEM`: the operator's
//! worker pods get it from their session Secret). The CA file is read again at every connection (a connection is made once per session, so
//! this costs nothing), so a CA renewed on disk (a Kubernetes volume updated in place) is used
//! by the next reconnect without restarting the worker. A certificate the CA does not vouch
//! for is a [`ConnectError::Untrusted`], which the session tells apart from a network failure
//! (a worker that has not started gives up at once: no retry will change the CA).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

/// The ALPN protocol a worker asks for: gRPC is HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// How a worker speaks to its controller.
#[derive(Clone, Debug)]
pub enum Transport {
    /// TLS, the controller's certificate verified against a CA.
    Tls(TlsTrust),
    /// Plain HTTP/2: the session token and the plan readable by anyone on the network, and no
    /// way to tell the controller from an impostor. Loopback and tests, or the user's explicit
    /// `--insecure-plaintext`.
    InsecurePlaintext,
}

/// Where the CA certificate(s) that sign the controller's certificate come from.
#[derive(Clone, Debug)]
pub enum CaSource {
    /// A PEM file (`--ca`), read at every connection.
    File(PathBuf),
    /// PEM text (`PACER_CA_PEM`).
    Pem(String),
}

impl std::fmt::Display for CaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaSource::File(p) => write!(f, "--ca {}", p.display()),
            CaSource::Pem(_) => f.write_str("PACER_CA_PEM"),
        }
    }
}

/// What a worker trusts: the CA, and the name the controller's certificate must carry.
#[derive(Clone, Debug)]
pub struct TlsTrust {
    /// PEM CA certificate(s) that sign the controller's certificate.
    pub ca: CaSource,
    /// The name to verify (a DNS name or an IP address); `None`: the host of the controller's
    /// address.
    pub server_name: Option<String>,
}

/// Why a TLS connection to the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("--ca {path}: cannot read the file: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{ca}: no usable PEM CA certificate ({reason})")]
    BadCa { ca: String, reason: String },
    #[error("{0:?} is not a valid TLS server name (give --server-name)")]
    ServerName(String),
    #[error("the controller's address {0} has no host and port")]
    Address(String),
    #[error("cannot connect to {addr}: {source}")]
    Tcp {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The controller's certificate was refused: not signed by the CA, not for this name, or
    /// expired. The session does not retry a worker that has not started.
    #[error(
        "the controller's certificate is not trusted: {reason} (verified as {server_name:?} against the CA of {ca})"
    )]
    Untrusted {
        ca: String,
        server_name: String,
        reason: String,
    },
    #[error("TLS handshake with the controller failed: {0}")]
    Handshake(String),
}

impl TlsTrust {
    /// Check now that the CA file holds a CA, so a wrong path is an error at start.
    pub fn check(&self) -> Result<(), ConnectError> {
        roots(&self.ca).map(|_| ())
    }
}

/// The CA certificates of `ca` as rustls roots.
fn roots(ca: &CaSource) -> Result<rustls::RootCertStore, ConnectError> {
    let pem = match ca {
        CaSource::File(path) => read(path)?,
        CaSource::Pem(text) => text.as_bytes().to_vec(),
    };
    let bad = |reason: String| ConnectError::BadCa {
        ca: ca.to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::ReadCa {
        path: path.to_path_buf(),
        source,
    })
}

/// The tonic connector of a TLS worker: TCP to the address's host and port, then the
/// handshake, the certificate verified against the CA file read at this very connection.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    trust: Arc<TlsTrust>,
}

impl Connector {
    pub(crate) fn new(trust: TlsTrust) -> Self {
        Self {
            trust: Arc::new(trust),
        }
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, ConnectError>> + Send>>;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = ConnectError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let trust = self.trust.clone();
        Box::pin(async move { connect(&trust, &uri).await.map(TokioIo::new) })
    }
}

async fn connect(trust: &TlsTrust, uri: &Uri) -> Result<TlsStream<TcpStream>, ConnectError> {
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
        return Err(ConnectError::Address(uri.to_string()));
    };
    // An IPv6 literal comes bracketed in a URI.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = trust.server_name.as_deref().unwrap_or(host).to_string();
    let server_name =
        ServerName::try_from(name.clone()).map_err(|_| ConnectError::ServerName(name.clone()))?;
    let roots = roots(&trust.ca)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Handshake(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    let addr = format!("{host}:{port}");
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| ConnectError::Tcp {
            addr: addr.clone(),
            source,
        })?;
    // Best effort: a worker's messages are small and latency-sensitive (Ping/Pong).
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(err @ rustls::Error::InvalidCertificate(_)) => ConnectError::Untrusted {
                    ca: trust.ca.to_string(),
                    server_name: name.clone(),
                    reason: err.to_string(),
                },
                Some(other) => ConnectError::Handshake(other.to_string()),
                None => ConnectError::Handshake(e.to_string()),
            },
        )
}

/// The [`ConnectError`] behind a failed connection, if TLS is what failed.
pub(crate) fn tls_failure<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ConnectError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = err.source();
    }
    None
}

/// Open a channel to the controller over `transport`. An untrusted certificate ends a worker
/// that has not `started` (no retry changes its CA); every other failure is retried.
pub(crate) async fn dial(
    endpoint: &tonic::transport::Endpoint,
    transport: &Transport,
    started: bool,
) -> Result<tonic::transport::Channel, crate::session::End> {
    use crate::session::End;
    let result = match transport {
        Transport::InsecurePlaintext => endpoint.connect().await,
        Transport::Tls(trust) => {
            endpoint
                .connect_with_connector(Connector::new(trust.clone()))
                .await
        }
    };
    result.map_err(|e| match tls_failure(&e) {
        Some(c @ ConnectError::Untrusted { .. }) if !started => {
            End::Fatal(crate::WorkerError::Untrusted(c.to_string()))
        }
        Some(c) => End::Retry(format!("cannot connect: {c}")),
        None => End::Retry(format!("cannot connect: {}", pacer_proto::error_chain(&e))),
    })
}
