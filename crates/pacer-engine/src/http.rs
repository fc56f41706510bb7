//! The HTTP side: one reqwest client per run (keep-alive pool), sending one attempt, and
//! classifying what came back.

use std::time::{Duration, Instant};

use pacer_plan::HttpOptions;
use pacer_stats::ErrorKind;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("http.headers.{0}: not a valid header")]
    Header(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Build the client a whole run shares.
pub fn build_client(opts: &HttpOptions, pool_hint: usize) -> Result<reqwest::Client, ClientError> {
    let mut headers = HeaderMap::new();
    for (k, v) in &opts.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| ClientError::Header(k.clone()))?;
        let value = HeaderValue::from_str(v).map_err(|_| ClientError::Header(k.clone()))?;
        headers.insert(name, value);
    }
    let mut b = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(opts.timeout)
        .connect_timeout(opts.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(opts.max_idle_per_host.unwrap_or(pool_hint.max(1)))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pacer/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    if opts.http2_only {
        b = b.http2_prior_knowledge();
    }
    if opts.insecure_skip_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| ClientError::Build(e.to_string()))
}

/// What one attempt produced.
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    pub sent_at: Instant,
    pub service_time: Duration,
}

pub struct TransportError {
    pub kind: ErrorKind,
    pub message: String,
    pub service_time: Duration,
}

/// Send one request and read the whole body.
pub async fn send(
    client: &reqwest::Client,
    req: reqwest::Request,
) -> Result<Response, TransportError> {
    let sent_at = Instant::now();
    let fail = |e: reqwest::Error| TransportError {
        kind: classify(&e),
        message: redact(&e),
        service_time: sent_at.elapsed(),
    };
    let mut resp = client.execute(req).await.map_err(fail)?;
    let status = resp.status().as_u16();
    // Taken, not cloned: reading the body needs no headers.
    let headers = std::mem::take(resp.headers_mut());
    let body = resp.bytes().await.map_err(|e| {
        let mut t = fail(e);
        if t.kind == ErrorKind::Other {
            t.kind = ErrorKind::Body;
        }
        t
    })?;
    Ok(Response {
        status,
        headers,
        body,
        sent_at,
        service_time: sent_at.elapsed(),
    })
}

pub fn classify(e: &reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        return ErrorKind::Timeout;
    }
    let chain = error_chain(e).to_ascii_lowercase();
    if chain.contains("certificate") || chain.contains("tls") || chain.contains("handshake") {
        ErrorKind::Tls
    } else if e.is_connect() {
        ErrorKind::Connect
    } else if e.is_body() || e.is_decode() {
        ErrorKind::Body
    } else if e.is_request() || chain.contains("connection") || chain.contains("protocol") {
        ErrorKind::Protocol
    } else {
        ErrorKind::Other
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// reqwest puts the URL in its messages; the query might carry secrets, so drop it.
fn redact(e: &reqwest::Error) -> String {
    let mut e2 = error_chain(e);
    if let Some(u) = e.url() {
        let mut clean = u.clone();
        clean.set_query(None);
        e2 = e2.replace(u.as_str(), clean.as_str());
    }
    e2
}
