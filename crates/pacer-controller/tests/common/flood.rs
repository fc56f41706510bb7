//! A flood of unauthenticated gRPC streams and connections against a pacer listener, on
//! loopback, bounded in count and time: what a stranger on the cluster network can send
//! before knowing a session token. Shared by the flood tests of pacer-controller (its own
//! listener) and pacer-operator (the routed listener), included with `#[path]`.
//!
//! The client speaks raw gRPC framing over tonic's `Channel` (HTTP/2), so it can send what a
//! well-behaved client never would: a length prefix that lies, a body that never comes.

#![allow(dead_code)] // each test file uses the parts it needs

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::StreamBody;
use pacer_proto::{Hello, PROTOCOL_VERSION, WorkerMessage, worker_message};
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

/// How long any one flood stream may take to end (the listeners' Hello timeout in these tests
/// is 2 s): past it the flood counts the stream as "still open", which the tests refuse.
pub const STREAM_LIMIT: Duration = Duration::from_secs(15);

/// What the listener answered, by outcome ("Unavailable", "ResourceExhausted", "closed", ...).
#[derive(Debug, Default)]
pub struct Tally(pub BTreeMap<String, usize>);

impl Tally {
    pub fn get(&self, key: &str) -> usize {
        self.0.get(key).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
}

/// All `n` streams were refused: with `code` once read, the others before they were read, past
/// the limit on streams waiting to authenticate (UNAVAILABLE) or past the connection's stream
/// limit (REFUSED_STREAM, which h2 sends for streams a client opened before it heard the
/// limit). The listener has `read` slots for streams waiting to authenticate, so of the
/// streams h2 let through at least that many were read; how many more depends on how fast the
/// refused ones free their slots, which a busy 2-core machine decides.
pub fn refused_as(tally: &Tally, code: &str, n: usize, read: usize) {
    assert_eq!(tally.total(), n, "{tally:?}");
    let early = ["Unavailable", "RefusedStream"]
        .iter()
        .filter(|c| **c != code)
        .map(|c| tally.get(c))
        .sum::<usize>();
    assert_eq!(tally.get(code) + early, n, "{tally:?}");
    let let_through = n - tally.get("RefusedStream");
    assert!(tally.get(code) >= read.min(let_through), "{tally:?}");
}

/// A stream's first message as a body: what it sends before the server answers.
#[derive(Clone)]
pub enum FirstMessage {
    /// Headers only; the body never ends and carries nothing.
    Silent,
    /// A length prefix claiming `claim` bytes, then `send` bytes of zeros (16 KiB frames).
    Oversized { claim: u32, send: usize },
    /// A well-formed Hello with this test id and token.
    Hello { test_id: String, token: String },
}

fn hello_frame(test_id: &str, token: &str) -> Bytes {
    let msg = WorkerMessage {
        body: Some(worker_message::Body::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            test_id: test_id.into(),
            worker_index: None,
            version: "flood".into(),
            session_token: token.into(),
            name: "flood".into(),
            resume: None,
            takes_served_budget: false,
        })),
    };
    let payload = msg.encode_to_vec();
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(&payload);
    b.freeze()
}

fn body(first: &FirstMessage) -> Body {
    type Frame = Result<http_body::Frame<Bytes>, tonic::Status>;
    let frames: futures::stream::BoxStream<'static, Frame> = match first.clone() {
        FirstMessage::Silent => futures::stream::pending().boxed(),
        FirstMessage::Oversized { claim, send } => {
            let mut prefix = BytesMut::with_capacity(5);
            prefix.put_u8(0);
            prefix.put_u32(claim);
            let chunk = Bytes::from(vec![0u8; 16 << 10]);
            let chunks = send.div_ceil(chunk.len());
            futures::stream::once(async move { Ok(http_body::Frame::data(prefix.freeze())) })
                .chain(
                    futures::stream::repeat(chunk)
                        .take(chunks)
                        .map(|c| Ok(http_body::Frame::data(c))),
                )
                // Then hold the stream open, as a slow sender would.
                .chain(futures::stream::pending())
                .boxed()
        }
        FirstMessage::Hello { test_id, token } => {
            let frame = hello_frame(&test_id, &token);
            futures::stream::once(async move { Ok(http_body::Frame::data(frame)) })
                .chain(futures::stream::pending())
                .boxed()
        }
    };
    Body::new(StreamBody::new(frames))
}

/// Open one stream on `channel` sending `first`, and wait (at most [`STREAM_LIMIT`]) for
/// the listener's answer: the grpc-status it ended the stream with, or how it broke.
async fn one_stream(mut channel: Channel, first: FirstMessage) -> String {
    let req = http::Request::builder()
        .method("POST")
        .uri("/pacer.v1.Coordinator/Session")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body(&first))
        .expect("a request");
    let answer = async move {
        if futures::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .is_err()
        {
            return "closed".to_string();
        }
        let resp = match channel.call(req).await {
            Ok(resp) => resp,
            // h2 refuses streams past the connection's limit (SETTINGS_MAX_CONCURRENT_STREAMS)
            // that a client opened before it heard the limit.
            Err(e) if format!("{e:?}").contains("REFUSED_STREAM") => {
                return "RefusedStream".to_string();
            }
            Err(_) => return "closed".to_string(),
        };
        // Trailers-only answers carry the status in the headers; otherwise read to the end.
        if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
            return format!("{:?}", status.code());
        }
        let mut body = resp.into_body();
        loop {
            match http_body_util::BodyExt::frame(&mut body).await {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref()
                        && let Some(status) = tonic::Status::from_header_map(trailers)
                    {
                        return format!("{:?}", status.code());
                    }
                }
                Some(Err(_)) | None => return "closed".to_string(),
            }
        }
    };
    tokio::time::timeout(STREAM_LIMIT, answer)
        .await
        .unwrap_or_else(|_| "still open".to_string())
}

/// `streams` streams sending `first`, spread over `connections` connections to `addr`, all at
/// once; what each ended with.
pub async fn flood(addr: &str, connections: usize, streams: usize, first: FirstMessage) -> Tally {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .expect("an endpoint")
            .connect_timeout(Duration::from_secs(2));
        // Lazily: a connection the listener refuses shows up as a "closed" stream.
        channels.push(endpoint.connect_lazy());
    }
    let answers = futures::future::join_all(
        (0..streams).map(|i| one_stream(channels[i % connections].clone(), first.clone())),
    )
    .await;
    let mut tally = Tally::default();
    for a in answers {
        *tally.0.entry(a).or_default() += 1;
    }
    tally
}

/// Open `n` plain TCP connections to `addr` that send nothing, and wait (at most `limit`) for
/// the listener to close each: how many were closed within `early` (refused at accept), and
/// how many were closed at all.
pub async fn idle_connections(
    addr: &str,
    n: usize,
    early: Duration,
    limit: Duration,
) -> (usize, usize) {
    let closed = futures::future::join_all((0..n).map(|_| async move {
        let started = tokio::time::Instant::now();
        let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
            return Some(Duration::ZERO);
        };
        let mut buf = [0u8; 1024];
        let deadline = started + limit;
        loop {
            match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
                // The server's HTTP/2 preface (SETTINGS) arrives first; read on to the close.
                Ok(Ok(n)) if n > 0 => continue,
                Ok(_) => return Some(started.elapsed()),
                Err(_) => return None,
            }
        }
    }))
    .await;
    let early_n = closed.iter().flatten().filter(|d| **d < early).count();
    let all = closed.iter().flatten().count();
    (early_n, all)
}

/// This process's resident set (VmRSS), in bytes.
pub fn rss_bytes(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Sample the resident set of `pid` every 20 ms until `stop`: the highest seen.
pub fn rss_peak(
    pid: String,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = rss_bytes(&pid);
        while !stop.is_cancelled() {
            peak = peak.max(rss_bytes(&pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.max(rss_bytes(&pid))
    })
}
