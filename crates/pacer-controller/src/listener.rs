//! The gRPC listener before authentication: what a stranger who can reach the port (any pod
//! of the cluster, anyone on the network) can make a controller hold before the session token
//! is checked. `pacer controller`, `pacer run --workers` and the operator's shared listener
//! all serve through [`serve`], so the limits are decided here once.
//!
//! Bounds, from the outside in:
//! - connections: at most [`Sessions::max_connections`] open at once (the base
//!   [`ListenerLimits::max_connections`], raised to twice the workers of the tests served, so a
//!   fleet always fits; counted at accept; past it a new connection is closed at once rather
//!   than left in the kernel's backlog), and a connection that has not authenticated a stream
//!   within the Hello timeout is closed ([`GuardedConn`]);
//! - streams: at most [`MAX_STREAMS_PER_CONNECTION`] per connection (HTTP/2
//!   `SETTINGS_MAX_CONCURRENT_STREAMS`: h2 refuses the others itself), HTTP/2 flow-control
//!   windows fixed at [`STREAM_WINDOW_BYTES`] / [`CONNECTION_WINDOW_BYTES`] (a peer may send
//!   no more than that before we read), headers at most [`MAX_HEADER_LIST_BYTES`];
//! - unauthenticated streams: at most [`ListenerLimits::max_unauthenticated_streams`] at once
//!   across the listener (a permit held from the stream's opening until its Hello is checked;
//!   past it a stream is refused with UNAVAILABLE, which a worker retries), each given the
//!   Hello timeout to send its first message, and that message at most
//!   [`pacer_proto::MAX_HELLO_BYTES`].
//!
//! Why the [`Gate`] reads the first message itself rather than letting tonic decode it: tonic
//! has one `max_decoding_message_size` per service, applied to every message of a stream, and
//! its decoder buffers a whole message (up to that size) before the handler sees a byte. Set
//! to the full [`pacer_proto::MAX_MESSAGE_BYTES`] (16 MiB, which reports need), anyone could
//! make it buffer 16 MiB per stream before the token is looked at; set to 64 KiB, reports
//! would not fit. gRPC metadata is no help either: the token travels in the Hello, and a peer
//! controls its frame length prefix. So the gate reads the raw body up to one length-prefixed
//! message, refuses a prefix above the Hello cap before reading the payload, decodes the Hello,
//! checks version, token (constant time) and test id with [`Coordinator::check_hello`], and
//! only then hands the request, first message included and untouched, to the test's tonic
//! service, whose decoder allows the full size for the rest of the stream.
//!
//! What is held before authentication, at most: `max_unauthenticated_streams` x (Hello cap +
//! one 16 KiB frame + the stream window) = 256 x (64 + 16 + 256) KiB = 84 MiB with the
//! defaults, and in practice far less: h2 discards what arrives for a refused stream.
//! The flood tests (crates/pacer-controller/tests/flood.rs, crates/pacer-operator/tests/flood.rs,
//! tests/tests/flood.rs) hold this to account.
//!
//! With TLS ([`Transport::Tls`], [`crate::tls`]) the handshake comes first, and it is bounded
//! too: at most [`MAX_HANDSHAKES_IN_FLIGHT`] at once (past it the listener stops accepting
//! until one ends: new connections wait in the kernel's backlog), each within the Hello timeout
//! counted from the accept (the same clock then runs on for the connection's first Hello), and
//! each holding its connection permit from the accept. A stranger who opens connections and
//! never finishes a handshake holds a handshake slot for the Hello timeout at most.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use pacer_proto::{Hello, WorkerMessage, worker_message};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::Service;

use crate::Coordinator;

/// Streams one connection may have open at once. A worker opens one `Session` stream per
/// connection (it dials anew to reconnect); a few more leave room for a stream that is
/// closing while the next opens, and nothing for a peer that multiplexes hundreds of
/// unauthenticated streams over one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 4;

/// Connections open at once, at least: the limit is this or twice the workers of the tests the
/// listener serves, whichever is more ([`Sessions::max_connections`]): every worker holds one
/// connection and a reconnect may overlap the old one, so a fleet (up to
/// `pacer_plan::shard::MAX_WORKERS`) always fits, while strangers get no more than a fleet's
/// worth. At the h2 windows below a connection whose streams are all read costs a few tens of
/// KiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Connections per worker of the tests served: its own, and a reconnect overlapping it.
const CONNECTIONS_PER_WORKER: usize = 2;

/// Streams waiting for their Hello to be checked, across the listener, by default. A fleet's
/// workers start within a second or two and each Hello is checked as soon as it arrives, so a
/// few hundred in flight is far more than a real fleet needs at once; a refused worker
/// retries (UNAVAILABLE). This bounds what strangers make the listener hold (see the module
/// doc).
pub const DEFAULT_MAX_UNAUTHENTICATED_STREAMS: usize = 256;

/// How long a new stream may take to send its Hello, and a new connection to get one stream
/// authenticated, by default. A worker sends its Hello right after connecting; 10 s covers a
/// slow network and a busy controller.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 flow-control window of each stream: what a peer may send before the listener reads
/// it. 256 KiB keeps a 16 MiB report at hundreds of MB/s on a LAN (a window per round trip)
/// while a stream that is not read holds at most this much.
pub const STREAM_WINDOW_BYTES: u32 = 256 << 10;

/// HTTP/2 flow-control window of a connection (all its streams together): room for every
/// stream of a connection ([`MAX_STREAMS_PER_CONNECTION`]) to have its window in flight.
pub const CONNECTION_WINDOW_BYTES: u32 = STREAM_WINDOW_BYTES * MAX_STREAMS_PER_CONNECTION;

/// Largest header block accepted (HPACK-decoded). A worker's headers are a few hundred bytes.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;

/// HTTP/2 pings on an idle connection, and how long an unanswered one may wait: a peer that
/// vanished (its machine gone) does not keep its connection permit forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait before accepting again after `accept` fails (out of file descriptors):
/// retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// TLS handshakes in flight at once. A handshake costs a few milliseconds of CPU (one
/// signature) and a few KiB; 64 at once keeps a fleet's simultaneous reconnects (hundreds of
/// workers come back within a second or two, each retrying on failure) moving while a flood of
/// half-open handshakes holds no more than this many slots, each for the Hello timeout at most.
pub const MAX_HANDSHAKES_IN_FLIGHT: usize = 64;

/// How the listener speaks to its peers.
#[derive(Clone, Debug)]
pub enum Transport {
    /// TLS with the certificate files of [`crate::tls::ServerTls`] (re-read when renewed).
    Tls(crate::tls::ServerTls),
    /// Plain HTTP/2: the session token and the plan cross the network readable by anyone on
    /// it. Loopback (`pacer run --workers N`) and tests; elsewhere only on the user's explicit
    /// `--insecure-plaintext`.
    InsecurePlaintext,
}

/// The listener's limits; [`ListenerLimits::default`] holds the defaults above.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Connections open at once, at least (raised for the fleets served:
    /// [`Sessions::max_connections`]).
    pub max_connections: usize,
    /// Streams waiting for their Hello to be checked, across the listener.
    pub max_unauthenticated_streams: usize,
    /// How long a stream may take to send its Hello (and a connection to authenticate one).
    pub hello_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_unauthenticated_streams: DEFAULT_MAX_UNAUTHENTICATED_STREAMS,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
        }
    }
}

/// Where the gate sends a stream whose Hello names a test: the coordinator that checks it.
pub trait Sessions: Clone + Send + Sync + 'static {
    /// The coordinator of `test_id` (the Hello's, possibly empty), or the status that refuses
    /// the stream.
    fn coordinator(&self, test_id: &str) -> Result<Coordinator, Status>;

    /// Workers of the tests served now (asked at every accept).
    fn workers(&self) -> usize;

    /// Connections open at once: `base`, or room for every worker served, whichever is more.
    fn max_connections(&self, base: usize) -> usize {
        base.max(self.workers().saturating_mul(CONNECTIONS_PER_WORKER))
    }
}

/// One coordinator behind its own listener (`pacer controller`, `pacer run --workers`): every
/// stream goes to it; it checks the test id itself.
impl Sessions for Coordinator {
    fn coordinator(&self, _test_id: &str) -> Result<Coordinator, Status> {
        Ok(self.clone())
    }

    fn workers(&self) -> usize {
        self.config().weights.len()
    }
}

/// Serve `sessions` on `listener` behind the gate, with `limits`, in plaintext
/// ([`Transport::InsecurePlaintext`]: loopback and tests), until `shutdown`.
pub async fn serve<S: Sessions>(
    sessions: S,
    listener: TcpListener,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    serve_with(
        sessions,
        listener,
        limits,
        Transport::InsecurePlaintext,
        shutdown,
    )
    .await
}

/// Serve `sessions` on `listener` behind the gate, with `limits`, over `transport`, until
/// `shutdown`.
pub async fn serve_with<S: Sessions>(
    sessions: S,
    listener: TcpListener,
    limits: ListenerLimits,
    transport: Transport,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let gate = Gate::new(sessions.clone(), &limits);
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_adaptive_window(Some(false))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(gate)
        .serve_with_incoming_shutdown(
            incoming(listener, &limits, sessions, transport),
            shutdown.cancelled_owned(),
        )
        .await
}

/// The connections to serve: accepted ones (see [`accepted`]), in plaintext as they are, with
/// TLS once their handshake is done (at most [`MAX_HANDSHAKES_IN_FLIGHT`] at once, each
/// before the connection's deadline; a failed one is logged and dropped).
fn incoming<S: Sessions>(
    listener: TcpListener,
    limits: &ListenerLimits,
    sessions: S,
    transport: Transport,
) -> futures::stream::BoxStream<'static, io::Result<GuardedConn>> {
    let hello_timeout = limits.hello_timeout;
    let accepted = accepted(listener, limits, sessions);
    match transport {
        Transport::InsecurePlaintext => accepted
            .map(move |(tcp, slot)| {
                let info = tcp.connect_info();
                let deadline = Instant::now() + hello_timeout;
                Ok(GuardedConn::new(Box::new(tcp), info, slot, deadline))
            })
            .boxed(),
        Transport::Tls(tls) => {
            let acceptor = tls.acceptor();
            accepted
                .map(move |(tcp, slot)| {
                    let acceptor = acceptor.clone();
                    async move {
                        let info = tcp.connect_info();
                        let deadline = Instant::now() + hello_timeout;
                        let peer = info.remote_addr();
                        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                Some(Ok(GuardedConn::new(Box::new(tls), info, slot, deadline)))
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(
                                    "gRPC listener: TLS handshake with {peer:?} failed: {}",
                                    pacer_proto::error_chain(&e)
                                );
                                None
                            }
                            Err(_) => {
                                tracing::debug!(
                                    "gRPC listener: TLS handshake with {peer:?} not done within {hello_timeout:?}"
                                );
                                None
                            }
                        }
                    }
                })
                .buffer_unordered(MAX_HANDSHAKES_IN_FLIGHT)
                .filter_map(futures::future::ready)
                .boxed()
        }
    }
}

/// Accepted TCP connections, each counted until it closes; past the limit a new connection is
/// closed at once.
fn accepted<S: Sessions>(
    listener: TcpListener,
    limits: &ListenerLimits,
    sessions: S,
) -> impl futures::Stream<Item = (TcpStream, ConnSlot)> + Send + 'static {
    let base = limits.max_connections;
    let open = Arc::new(AtomicUsize::new(0));
    futures::stream::unfold((listener, open), move |(listener, open)| {
        let sessions = sessions.clone();
        async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("gRPC listener: cannot accept: {e}");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let max = sessions.max_connections(base);
                // Only this loop adds to `open`, so the check and the add cannot race.
                if open.load(Ordering::Acquire) >= max {
                    tracing::debug!(
                        "gRPC listener: refusing {peer}: {max} connections are open (the limit)"
                    );
                    drop(tcp);
                    continue;
                }
                let slot = ConnSlot::take(&open);
                // Best effort: a worker's messages are small and latency-sensitive (Ping/Pong).
                let _ = tcp.set_nodelay(true);
                return Some(((tcp, slot), (listener, open)));
            }
        }
    })
}

/// One open connection in the listener's count, given back when the connection is dropped.
struct ConnSlot(Arc<AtomicUsize>);

impl ConnSlot {
    fn take(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        Self(open.clone())
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's bytes: the TCP stream itself, or TLS over it.
trait ConnIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ConnIo for T {}

/// An accepted connection: counts against the connection limit until it closes, and is
/// closed if none of its streams has passed the gate within the Hello timeout of its accept
/// (a stranger cannot keep a connection, and its permit, by opening it and sending nothing).
pub struct GuardedConn {
    io: Box<dyn ConnIo>,
    tcp_info: TcpConnectInfo,
    _slot: ConnSlot,
    authenticated: Arc<AtomicBool>,
    /// Until a stream is authenticated.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl GuardedConn {
    fn new(
        io: Box<dyn ConnIo>,
        tcp_info: TcpConnectInfo,
        slot: ConnSlot,
        deadline: Instant,
    ) -> Self {
        Self {
            io,
            tcp_info,
            _slot: slot,
            authenticated: Arc::new(AtomicBool::new(false)),
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
}

/// What the gate learns of a stream's connection (a request extension).
#[derive(Clone, Debug)]
pub struct GuardedInfo {
    tcp: TcpConnectInfo,
    authenticated: Arc<AtomicBool>,
}

impl Connected for GuardedConn {
    type ConnectInfo = GuardedInfo;

    fn connect_info(&self) -> GuardedInfo {
        GuardedInfo {
            tcp: self.tcp_info.clone(),
            authenticated: self.authenticated.clone(),
        }
    }
}

impl AsyncRead for GuardedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut() {
            if this.authenticated.load(Ordering::Acquire) {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                // hyper ends the connection on a read error; its count goes with it.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no stream of this connection sent a valid Hello in time",
                )));
            }
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The tonic service in front of the coordinators (it answers for `pacer.v1.Coordinator`):
/// reads and checks each stream's Hello under the limits above, then hands the stream over.
#[derive(Clone)]
pub struct Gate<S> {
    sessions: S,
    unauthenticated: Arc<Semaphore>,
    hello_timeout: Duration,
}

impl<S: Sessions> Gate<S> {
    pub fn new(sessions: S, limits: &ListenerLimits) -> Self {
        Self {
            sessions,
            unauthenticated: Arc::new(Semaphore::new(limits.max_unauthenticated_streams)),
            hello_timeout: limits.hello_timeout,
        }
    }
}

impl<S> NamedService for Gate<S> {
    const NAME: &'static str = pacer_proto::v1::coordinator_server::SERVICE_NAME;
}

impl<S: Sessions> Service<http::Request<Body>> for Gate<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let gate = self.clone();
        Box::pin(async move {
            Ok(match gate.pass(req).await {
                Ok(resp) => resp,
                Err(status) => {
                    tracing::debug!(
                        "gRPC listener: stream refused before authentication: {}",
                        pacer_proto::peer_text(status.message())
                    );
                    status.into_http()
                }
            })
        })
    }
}

impl<S: Sessions> Gate<S> {
    async fn pass(self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        let (mut parts, mut body) = req.into_parts();
        let permit = self
            .unauthenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::unavailable(
                    "too many streams are waiting to authenticate on this listener; retry",
                )
            })?;
        let (first, hello) = tokio::time::timeout(self.hello_timeout, read_hello(&mut body))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Hello within {:?} of opening the stream",
                    self.hello_timeout
                ))
            })??;
        let coordinator = self.sessions.coordinator(&hello.test_id)?;
        coordinator.check_hello(&hello)?;
        drop(permit);
        if let Some(info) = parts.extensions.get::<GuardedInfo>().cloned() {
            info.authenticated.store(true, Ordering::Release);
            // The session reads the peer's address from tonic's own connection info.
            parts.extensions.insert(info.tcp);
        }
        let rest =
            BodyStream::new(body).map(|frame| frame.map_err(|e| Status::from_error(e.into())));
        let stream =
            futures::stream::once(async move { Ok(http_body::Frame::data(first)) }).chain(rest);
        let req = http::Request::from_parts(parts, Body::new(StreamBody::new(stream)));
        match coordinator.service().call(req).await {
            Ok(resp) => Ok(resp),
            Err(never) => match never {},
        }
    }
}

/// Read the stream's first message (at most [`pacer_proto::MAX_HELLO_BYTES`]) and decode it
/// as a Hello: the bytes read (to hand on untouched) and the Hello.
async fn read_hello(body: &mut Body) -> Result<(Bytes, Hello), Status> {
    let mut buf = BytesMut::new();
    let len = loop {
        if buf.len() >= 5 {
            if buf[0] != 0 {
                return Err(Status::unimplemented(
                    "compressed messages are not supported by this controller",
                ));
            }
            let len = (&buf[1..5]).get_u32() as usize;
            if len > pacer_proto::MAX_HELLO_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "the first message of a stream (the Hello) is {len} bytes; at most {} are read before the session token is checked",
                    pacer_proto::MAX_HELLO_BYTES
                )));
            }
            if buf.len() >= 5 + len {
                break len;
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(Status::cancelled(format!(
                    "the stream broke before its Hello: {}",
                    pacer_proto::peer_text(&e.to_string())
                )));
            }
            None => return Err(Status::cancelled("the stream ended before its Hello")),
        }
    };
    let hello = match WorkerMessage::decode(&buf[5..5 + len]) {
        Ok(WorkerMessage {
            body: Some(worker_message::Body::Hello(h)),
        }) => h,
        Ok(WorkerMessage { body: Some(other) }) => {
            return Err(Status::failed_precondition(format!(
                "{} before Hello: the first message of a stream must be Hello",
                other.kind()
            )));
        }
        Ok(WorkerMessage { body: None }) => {
            return Err(Status::invalid_argument(
                "WorkerMessage.body: not set or of a kind this controller does not know; the first message of a stream must be Hello",
            ));
        }
        Err(e) => return Err(Status::invalid_argument(format!("WorkerMessage: {e}"))),
    };
    Ok((buf.freeze(), hello))
}
