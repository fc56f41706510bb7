//! The engine's connections. One [`Pool`] per run keeps, per origin (scheme, host, port):
//!
//! - HTTP/1.1: a stack of idle keep-alive connections. A request takes the most recently used
//!   one, or opens a new one when none is idle, and gives it back once the response's body is
//!   read. A request that finds none idle opens one and uses it (it does not race the connect
//!   against a connection coming back), so a run never holds more connections than it has
//!   requests in flight.
//! - HTTP/2 (by ALPN, or `http2: true` for prior knowledge): one connection that every request
//!   to the origin multiplexes over, opened again when the server closes it.
//!
//! An HTTP/1.1 connection is its socket (TCP, or TLS over it) and nothing else: the request that
//! takes it writes and reads it itself ([`crate::h1`], the engine's own exchange: no task and
//! no buffers per connection). An HTTP/2 connection is hyper's `client::conn::http2`, driven by
//! a task of its own. An idle connection the server closed (or sent unasked bytes on) is
//! dropped when a request would take it; a request whose first byte could not be written on a
//! reused connection goes to the next one; a request that was written is never sent again
//! here (retries are the plan's, in send.rs).
//!
//! A response body is read frame by frame and never past `http.maxBodyBytes` (a server may be
//! hostile: an endless body ends as [`ErrorKind::BodyTooLarge`], and its connection is dropped,
//! not reused); a body the request does not keep is counted and dropped as it arrives.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pacer_stats::ErrorKind;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::h1;
use crate::http::{Outgoing, classify, error_chain as chain};

type Body = Full<Bytes>;

/// A failed exchange: the kind the report counts and the message (which carries no URL, so no
/// query string and no credentials in it).
pub(crate) type Failure = (ErrorKind, String);

/// An idle HTTP/1.1 connection is closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub(crate) struct Pool {
    origins: Mutex<Vec<Arc<Origin>>>,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    /// `http2: true`: HTTP/2 by prior knowledge on http://, and only h2 offered by ALPN.
    http2_only: bool,
    /// Idle HTTP/1.1 connections kept per origin.
    max_idle: usize,
    /// `http.maxBodyBytes`: a longer body fails the exchange ([`ErrorKind::BodyTooLarge`]).
    max_body: u64,
}

/// A response as the pool read it: the body is kept only when the request needs it (a check or
/// an extract reads it, or a 429 may name its limit in it); `body_len` counts it either way.
pub(crate) struct Received {
    pub(crate) parts: http::response::Parts,
    pub(crate) body: Bytes,
    pub(crate) body_len: u64,
}

struct Origin {
    https: bool,
    authority: Authority,
    /// The host to resolve and to name in TLS (IPv6 without its brackets).
    name: String,
    port: u16,
    /// The `Host` header HTTP/1.1 requests carry unless they set one.
    host_header: HeaderValue,
    /// [`MODE_UNKNOWN`] until the first connection, then [`MODE_H1`] or [`MODE_H2`].
    mode: AtomicU8,
    /// Held by the request that opens the first (or the next HTTP/2) connection.
    connecting: tokio::sync::Mutex<()>,
    idle: Mutex<VecDeque<Idle>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
}

const MODE_UNKNOWN: u8 = 0;
const MODE_H1: u8 = 1;
const MODE_H2: u8 = 2;

struct Idle {
    stream: h1::Stream,
    since: Instant,
}

enum Conn {
    H1(h1::Stream),
    H2(http2::SendRequest<Body>),
}

impl Pool {
    pub(crate) fn new(
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        http2_only: bool,
        max_idle: usize,
        max_body: u64,
    ) -> Self {
        Self {
            origins: Mutex::new(Vec::new()),
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            http2_only,
            max_idle: max_idle.max(1),
            max_body,
        }
    }

    /// Send `out` and read the whole response body (kept only if `out.keep_body`), at most
    /// `http.maxBodyBytes` of it.
    pub(crate) async fn exchange(&self, out: &Outgoing<'_>) -> Result<Received, Failure> {
        let origin = self.origin(out.uri)?;
        let limit = BodyLimit {
            max: self.max_body,
            keep: out.keep_body,
        };
        if let Some(tx) = self.shared_h2(&origin).await? {
            return Box::pin(send_h2(tx, build_h2(out), limit)).await;
        }
        loop {
            let (conn, reused) = match origin.checkout() {
                Some(stream) => (Conn::H1(stream), true),
                // Boxed: the connect's state (TLS included) is large and rare; the hot path's
                // future stays small (it is moved on every request).
                None => (Box::pin(self.connect(&origin)).await?, false),
            };
            match conn {
                Conn::H2(tx) => {
                    let req = build_h2(out);
                    return Box::pin(send_h2(origin.keep_h2(tx), req, limit)).await;
                }
                Conn::H1(mut stream) => {
                    // A body over the cap, or any failure, ends here: the connection, its
                    // rest unread, is dropped (closed), not given back.
                    match h1::exchange(&mut stream, out, &origin.host_header, limit, reused).await {
                        Ok(done) => {
                            if done.reusable {
                                origin.checkin(stream, self.max_idle);
                            }
                            return Ok(done.received);
                        }
                        // Closed while idle, and not a byte was written: the next connection.
                        Err(h1::Error::Unsent) => continue,
                        Err(h1::Error::Failed(f)) => return Err(f),
                    }
                }
            }
        }
    }

    /// The origin's HTTP/2 connection if it speaks HTTP/2, `None` if HTTP/1.1. Until the
    /// first connection says which, and while an HTTP/2 origin has no open connection, one
    /// request connects and the others wait for it (so 1000 VUs starting at once open one
    /// HTTP/2 connection, not 1000).
    async fn shared_h2(
        &self,
        origin: &Origin,
    ) -> Result<Option<http2::SendRequest<Body>>, Failure> {
        if origin.mode.load(Ordering::Acquire) == MODE_H1 {
            return Ok(None);
        }
        if let Some(tx) = origin.h2_sender() {
            return Ok(Some(tx));
        }
        let _connecting = origin.connecting.lock().await;
        if origin.mode.load(Ordering::Acquire) == MODE_H1 {
            return Ok(None);
        }
        if let Some(tx) = origin.h2_sender() {
            return Ok(Some(tx));
        }
        match Box::pin(self.connect(origin)).await? {
            Conn::H2(tx) => Ok(Some(origin.keep_h2(tx))),
            Conn::H1(stream) => {
                origin.mode.store(MODE_H1, Ordering::Release);
                origin.checkin(stream, self.max_idle);
                Ok(None)
            }
        }
    }

    fn origin(&self, uri: &Uri) -> Result<Arc<Origin>, Failure> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err((
                    ErrorKind::Other,
                    "the URL's scheme is not http or https".into(),
                ));
            }
        };
        let Some(authority) = uri.authority() else {
            return Err((ErrorKind::Other, "the URL has no host".into()));
        };
        let mut origins = self.origins.lock();
        if let Some(o) = origins
            .iter()
            .find(|o| o.https == https && o.authority == *authority)
        {
            return Ok(o.clone());
        }
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let host = authority.host();
        let header = if port == default_port {
            host.to_string()
        } else {
            format!("{host}:{port}")
        };
        let host_header = HeaderValue::from_str(&header).map_err(|_| {
            (
                ErrorKind::Other,
                "the URL's host is not a valid header".into(),
            )
        })?;
        let o = Arc::new(Origin {
            https,
            authority: authority.clone(),
            name: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            host_header,
            mode: AtomicU8::new(MODE_UNKNOWN),
            connecting: tokio::sync::Mutex::new(()),
            idle: Mutex::new(VecDeque::new()),
            h2: Mutex::new(None),
        });
        origins.push(o.clone());
        Ok(o)
    }

    /// Open a connection to `origin` within `connectTimeout`: TCP, TLS for https, and the
    /// HTTP handshake (HTTP/2 if ALPN chose h2 or the plan says `http2`).
    async fn connect(&self, origin: &Origin) -> Result<Conn, Failure> {
        let open = async {
            let tcp = tcp_connect(&origin.name, origin.port).await?;
            if origin.https {
                let server_name = ServerName::try_from(origin.name.clone()).map_err(|_| {
                    (
                        ErrorKind::Tls,
                        format!("{:?} is not a name TLS can verify", origin.name),
                    )
                })?;
                let tls = self
                    .tls
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| (ErrorKind::Tls, format!("TLS handshake: {}", chain(&e))))?;
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    handshake_h2(TokioIo::new(tls)).await
                } else {
                    Ok(Conn::H1(h1::Stream::Tls(Box::new(tls))))
                }
            } else if self.http2_only {
                handshake_h2(TokioIo::new(tcp)).await
            } else {
                Ok(Conn::H1(h1::Stream::Tcp(tcp)))
            }
        };
        match tokio::time::timeout(self.connect_timeout, open).await {
            Ok(r) => r,
            Err(_) => Err((
                ErrorKind::Timeout,
                format!("no connection within {:?}", self.connect_timeout),
            )),
        }
    }
}

impl Origin {
    /// The shared HTTP/2 connection, if the origin speaks HTTP/2 and it is still open.
    fn h2_sender(&self) -> Option<http2::SendRequest<Body>> {
        let mut h2 = self.h2.lock();
        match &*h2 {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    /// Keep a new HTTP/2 connection for the origin, unless another request opened one
    /// meanwhile (then this one serves the request that opened it, and closes after).
    fn keep_h2(&self, tx: http2::SendRequest<Body>) -> http2::SendRequest<Body> {
        self.mode.store(MODE_H2, Ordering::Release);
        let mut h2 = self.h2.lock();
        match &*h2 {
            Some(cur) if !cur.is_closed() => {}
            _ => *h2 = Some(tx.clone()),
        }
        tx
    }

    /// The most recently used idle HTTP/1.1 connection that is still open.
    fn checkout(&self) -> Option<h1::Stream> {
        let mut idle = self.idle.lock();
        while let Some(mut c) = idle.pop_back() {
            if c.since.elapsed() >= IDLE_TIMEOUT {
                // The rest are older still.
                idle.clear();
                return None;
            }
            if c.stream.is_open() {
                return Some(c.stream);
            }
        }
        None
    }

    fn checkin(&self, stream: h1::Stream, max_idle: usize) {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while idle
            .front()
            .is_some_and(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < max_idle {
            idle.push_back(Idle { stream, since: now });
        }
    }
}

async fn tcp_connect(name: &str, port: u16) -> Result<TcpStream, Failure> {
    let addrs = tokio::net::lookup_host((name, port))
        .await
        .map_err(|e| (ErrorKind::Connect, format!("cannot resolve {name:?}: {e}")))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Small requests go out at once (no Nagle delay).
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(format!("connect to {addr}: {e}")),
        }
    }
    Err((
        ErrorKind::Connect,
        last.unwrap_or_else(|| format!("{name:?} resolved to no address")),
    ))
}

/// HTTP/2's handshake (hyper's), and the task that drives the connection.
async fn handshake_h2<T>(io: T) -> Result<Conn, Failure>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|e| (ErrorKind::Protocol, format!("handshake: {}", chain(&e))))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn::H2(tx))
}

/// The HTTP/2 request: the absolute URI gives the `:scheme` and `:authority` pseudo-headers.
fn build_h2(out: &Outgoing<'_>) -> Request<Body> {
    let mut headers = HeaderMap::with_capacity(out.headers.len() + 2);
    for (k, v) in out.headers {
        headers.append(k.clone(), v.clone());
    }
    if let Some(a) = &out.authorization {
        headers.insert(AUTHORIZATION, a.clone());
    }
    if let Some((name, value)) = &out.correlation {
        headers.insert((*name).clone(), (*value).clone());
    }
    let mut req = Request::new(Full::new(out.body.cloned().unwrap_or_default()));
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = out.uri.clone();
    *req.headers_mut() = headers;
    req
}

async fn send_h2(
    mut tx: http2::SendRequest<Body>,
    mut req: Request<Body>,
    limit: BodyLimit,
) -> Result<Received, Failure> {
    // The absolute URI gives the :scheme and :authority pseudo-headers.
    *req.version_mut() = Version::HTTP_2;
    tx.ready().await.map_err(|e| {
        (
            ErrorKind::Protocol,
            format!("HTTP/2 connection: {}", chain(&e)),
        )
    })?;
    let resp = tx
        .send_request(req)
        .await
        .map_err(|e| (classify(&e, false), chain(&e)))?;
    read_body(resp, limit).await
}

/// How much of a body to read, and whether to keep it.
#[derive(Clone, Copy)]
pub(crate) struct BodyLimit {
    pub(crate) max: u64,
    pub(crate) keep: bool,
}

impl BodyLimit {
    /// Whether an answer of `status` keeps its body: when the request reads it, and always a
    /// 429's or a 5xx's, whose body may name the limit it is about (ratelimit_headers::
    /// server_limit_name), for the summary and the evidence ledger.
    pub(crate) fn keeps(&self, status: http::StatusCode) -> bool {
        self.keep || status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
    }

    /// A body over `http.maxBodyBytes` (by its length, or as it arrives).
    pub(crate) fn too_large(&self) -> Failure {
        (
            ErrorKind::BodyTooLarge,
            format!(
                "the response body is larger than http.maxBodyBytes ({} bytes)",
                self.max
            ),
        )
    }
}

/// A kept body from the pieces it arrived in (one piece: no copy).
pub(crate) fn joined(mut chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    }
}

/// Read the body frame by frame: past `limit.max` bytes (or a `Content-Length` above it) the
/// exchange fails as [`ErrorKind::BodyTooLarge`] without reading the rest; a body nobody needs
/// is counted and dropped frame by frame (drained), so it costs no memory. Not an `async fn`:
/// its future keeps the response's parts once, not twice (see [`HttpClient::send`]).
///
/// [`HttpClient::send`]: crate::http::HttpClient::send
fn read_body(
    resp: Response<Incoming>,
    limit: BodyLimit,
) -> impl Future<Output = Result<Received, Failure>> + Send {
    use http_body_util::BodyExt;
    let (parts, mut body) = resp.into_parts();
    async move {
        // hyper's size hint is the `Content-Length` of a response that has a body (not of a
        // HEAD, 204 or 304 answer, whose Content-Length describes a body that never comes).
        if hyper::body::Body::size_hint(&body).lower() > limit.max {
            return Err(limit.too_large());
        }
        let keep = limit.keeps(parts.status);
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                let kind = match classify(&e, false) {
                    ErrorKind::Other | ErrorKind::Protocol => ErrorKind::Body,
                    k => k,
                };
                (kind, chain(&e))
            })?;
            if let Ok(data) = frame.into_data() {
                len = len.saturating_add(data.len() as u64);
                if len > limit.max {
                    return Err(limit.too_large());
                }
                if keep && !data.is_empty() {
                    chunks.push(data);
                }
            }
        }
        Ok(Received {
            parts,
            body: joined(chunks),
            body_len: len,
        })
    }
}
