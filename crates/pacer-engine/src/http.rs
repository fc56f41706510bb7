//! The HTTP side. Requests go through [`HttpClient`]: keep-alive HTTP/1.1 (the engine's own
//! exchange, [`crate::h1`]) and HTTP/2 by ALPN or prior knowledge (hyper), over rustls, on
//! connections kept in the engine's own pool ([`crate::pool`]), one for the whole run. It is
//! the hot path, so it has none of the layers of a general-purpose client (no redirects,
//! cookies, proxies or decompression, which a load test does not want either). OAuth2 token
//! fetches, which are rare, use reqwest ([`build_token_client`]).
//!
//! Credentials go only to their origin: the plan's `http.headers` named in
//! [`CREDENTIAL_HEADERS`] are added only to requests for the target's origin, and never to the
//! token endpoint (which gets its own client id and secret, and no redirect is followed).
//! Bodies are read up to `http.maxBodyBytes` ([`crate::pool`]), token responses up to
//! [`TOKEN_RESPONSE_MAX_BYTES`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pacer_plan::HttpOptions;
use pacer_stats::ErrorKind;
use reqwest::header::{
    AUTHORIZATION, COOKIE, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHORIZATION, USER_AGENT,
};

use crate::pool::Pool;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("http.headers.{0}: not a valid header")]
    Header(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

const AGENT: &str = concat!("pacer/", env!("CARGO_PKG_VERSION"));

/// Headers of the plan's `http.headers` that carry credentials: sent only to the target's
/// origin, never to an `http.allowHosts` host or the token endpoint.
pub(crate) const CREDENTIAL_HEADERS: [HeaderName; 3] = [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION];

/// The largest token endpoint response read: an OAuth2 token response is a small JSON object
/// (a JWT access token is a few KiB), so this is generous and still cheap to hold.
pub(crate) const TOKEN_RESPONSE_MAX_BYTES: usize = 64 * 1024;

fn plan_headers(opts: &HttpOptions) -> Result<HeaderMap, ClientError> {
    let mut headers = HeaderMap::new();
    for (k, v) in &opts.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| ClientError::Header(k.clone()))?;
        let value = HeaderValue::from_str(v).map_err(|_| ClientError::Header(k.clone()))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The client OAuth2 token fetches use (reqwest: forms, JSON, a few calls per run).
pub(crate) fn build_token_client(opts: &HttpOptions) -> Result<reqwest::Client, ClientError> {
    let mut headers = plan_headers(opts)?;
    for h in &CREDENTIAL_HEADERS {
        headers.remove(h);
    }
    let mut b = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(opts.timeout)
        .connect_timeout(opts.connect_timeout)
        .pool_max_idle_per_host(2)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(AGENT)
        .no_proxy();
    if opts.http2_only {
        b = b.http2_prior_knowledge();
    }
    if opts.insecure_skip_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| ClientError::Build(e.to_string()))
}

/// The client a whole run shares for its requests.
pub struct HttpClient {
    pool: Pool,
    /// `http.headers` of the plan and the user agent: sent unless the request sets them.
    default_headers: HeaderMap,
    timeout: Duration,
}

impl HttpClient {
    /// `pool_hint` is how many connections the run may use at once (idle ones kept per host,
    /// unless the plan says `maxIdlePerHost`).
    pub fn new(opts: &HttpOptions, pool_hint: usize) -> Result<Self, ClientError> {
        let mut default_headers = plan_headers(opts)?;
        if !default_headers.contains_key(USER_AGENT) {
            default_headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        }
        let mut tls = tls_config(opts.insecure_skip_verify)?;
        tls.alpn_protocols = if opts.http2_only {
            vec![b"h2".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        let pool = Pool::new(
            tls,
            opts.connect_timeout,
            opts.http2_only,
            opts.max_idle_per_host.unwrap_or(pool_hint.max(1)),
            opts.max_body_bytes,
        );
        Ok(Self {
            pool,
            default_headers,
            timeout: opts.timeout,
        })
    }

    /// Add the plan's headers that `headers` does not set; its [`CREDENTIAL_HEADERS`] only
    /// when the request goes to the target's origin (`credentials`).
    pub(crate) fn add_default_headers(&self, headers: &mut HeaderMap, credentials: bool) {
        for (k, v) in self.default_headers.iter() {
            if !headers.contains_key(k) && (credentials || !CREDENTIAL_HEADERS.contains(k)) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }

    /// Send one request and read the whole body (at most `http.maxBodyBytes`; kept only if
    /// `out.keep_body`), within the plan's `http.timeout`.
    ///
    /// Not an `async fn`, on purpose: an `async fn`'s future keeps each argument twice (as
    /// captured, and in the local it is moved into), and every request in flight holds this
    /// one; the block below uses `out` where it was captured.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn send(
        &self,
        out: Outgoing<'_>,
    ) -> impl Future<Output = Result<Response, TransportError>> + Send {
        async move {
            let sent_at = Instant::now();
            match tokio::time::timeout(self.timeout, self.pool.exchange(&out)).await {
                Ok(Ok(r)) => Ok(Response {
                    status: r.parts.status.as_u16(),
                    headers: r.parts.headers,
                    body: r.body,
                    body_len: r.body_len,
                    sent_at,
                    service_time: sent_at.elapsed(),
                }),
                Ok(Err((kind, message))) => Err(TransportError {
                    kind,
                    message,
                    service_time: sent_at.elapsed(),
                }),
                Err(_) => Err(TransportError {
                    kind: ErrorKind::Timeout,
                    message: format!("no complete response within {:?}", self.timeout),
                    service_time: sent_at.elapsed(),
                }),
            }
        }
    }
}

/// rustls with the platform's verifier (the system's roots), or none at all when the plan
/// says `insecureSkipVerify`. The provider is aws-lc-rs, whatever the process installed.
fn tls_config(insecure: bool) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Build(format!("TLS: {e}")))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if insecure {
        Arc::new(NoVerifier(provider))
    } else {
        Arc::new(
            rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| ClientError::Build(format!("TLS: the system's verifier: {e}")))?,
        )
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `insecureSkipVerify`: any certificate is accepted (the handshake's signatures are still
/// checked, so the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct NoVerifier(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One attempt's request, as the engine prepared it. The pool builds the request on the wire
/// from it (with `Host` for HTTP/1.1), so the prepared headers are copied once per attempt.
pub struct Outgoing<'a> {
    pub method: &'a http::Method,
    /// Absolute (`http://host:port/path?query`).
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
    /// A bearer token's header value (marked sensitive), when the request has a credential.
    pub authorization: Option<HeaderValue>,
    /// Borrowed, like the correlation value below: a request in flight holds its
    /// `Outgoing`, so what is borrowed is not held twice.
    pub body: Option<&'a Bytes>,
    /// Keep the response body (a check or an extract reads it); otherwise it is drained.
    pub keep_body: bool,
    /// The correlation id header pacer adds (`http.correlationId`), when the request does
    /// not set it itself.
    pub correlation: Option<(&'a http::HeaderName, &'a HeaderValue)>,
}

/// What one attempt produced.
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    /// Empty when the request did not keep it (see [`Outgoing::keep_body`]).
    pub body: Bytes,
    /// The body's length as received, kept or not.
    pub body_len: u64,
    pub sent_at: Instant,
    pub service_time: Duration,
}

pub struct TransportError {
    pub kind: ErrorKind,
    pub message: String,
    pub service_time: Duration,
}

/// Which kind of transport failure an error chain is. `connect` says the client failed
/// before a connection was made. hyper's messages carry no URL (so no query string).
pub(crate) fn classify(e: &(dyn std::error::Error + 'static), connect: bool) -> ErrorKind {
    let chain = error_chain(e).to_ascii_lowercase();
    let timeout = {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut found = false;
        while let Some(c) = cur {
            if let Some(h) = c.downcast_ref::<hyper::Error>()
                && h.is_timeout()
            {
                found = true;
            }
            if let Some(io) = c.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
            {
                found = true;
            }
            cur = c.source();
        }
        found || chain.contains("timed out")
    };
    if timeout {
        ErrorKind::Timeout
    } else if chain.contains("certificate") || chain.contains("tls") || chain.contains("handshake")
    {
        ErrorKind::Tls
    } else if connect {
        ErrorKind::Connect
    } else if chain.contains("connection")
        || chain.contains("protocol")
        || chain.contains("parse")
        || chain.contains("message")
        || chain.contains("invalid")
    {
        ErrorKind::Protocol
    } else {
        ErrorKind::Other
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// [`classify`] for the token client's errors.
pub(crate) fn classify_reqwest(e: &reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        classify(e, e.is_connect())
    }
}
