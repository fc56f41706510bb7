//! The engine's own HTTP/1.1 exchange, on the pool's connections ([`crate::pool`]).
//!
//! Why not hyper's `client::conn::http1`, which the engine used before: at 10,000 requests in
//! flight the memory is per connection, and hyper keeps, for every connection whatever it is
//! doing, a task that drives it, a request channel (an 8 KiB block, a second one after its 32nd
//! request), an 8 KiB write buffer and a read buffer of at least 8 KiB: about 25 KB, most of
//! the ~30 KB each request in flight cost (docs/benchmarks.md, "10,000 in flight"). Here the
//! request's own task writes the request and reads the answer on the socket, so an idle
//! connection is the socket alone, a request waiting for its answer holds no buffer (on plain
//! TCP it waits for the socket to be readable first), and the one read buffer exists only
//! while bytes are read ([`READ_CHUNK`] at a time). No hand-off between two tasks per request
//! either. httparse (which hyper uses too) parses the response head; what is ours is the
//! framing (RFC 9112 section 6): `Content-Length`, chunked, a body until the close,
//! HEAD/204/304 with none, 1xx answers skipped, `Connection: close` and HTTP/1.0 honoured.
//!
//! A server may be hostile: the head is bounded ([`MAX_HEAD_BYTES`], [`MAX_HEADERS`]), as are
//! the 1xx answers before the final one ([`MAX_INFORMATIONAL`]), a chunk's size line
//! ([`MAX_CHUNK_LINE`]) and the trailers; every malformed byte is an error with a message, never
//! a panic; the body is bounded by the caller's `http.maxBodyBytes`. Messages carry no URL.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use pacer_stats::ErrorKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::http::Outgoing;
use crate::pool::{BodyLimit, Failure, Received, joined};

/// How much room each read of the socket gets: a typical API answer (head and a small JSON
/// body, under 1-2 KB) arrives in one read, and 4 KiB is one of jemalloc's size classes. A
/// larger body is read in reads of up to [`BIG_READ`].
const READ_CHUNK: usize = 4096;

/// The room a read gets while a long body (more than this still to come) is read: fewer
/// system calls for big bodies, and only while one is being read.
const BIG_READ: usize = 64 * 1024;

/// The largest response head read (status line and headers). Far above what servers and the
/// proxies in front of APIs send (nginx refuses an upstream's head over its `proxy_buffer_size`,
/// 4 or 8 KiB by default); a larger one is a broken or hostile server, and what it costs is
/// bounded by this per connection.
pub(crate) const MAX_HEAD_BYTES: usize = 128 * 1024;

/// The most headers a response may have (hyper's limit is 100); httparse needs their number up
/// front, and the slots live on the stack only while a head is parsed.
pub(crate) const MAX_HEADERS: usize = 128;

/// The most 1xx answers (100 Continue, 103 Early Hints) read before the final one: a server
/// sends one or two; endless ones would keep a request busy for its whole timeout.
pub(crate) const MAX_INFORMATIONAL: usize = 16;

/// The longest chunk-size line of a chunked body (its hex size and extensions, which are
/// ignored); hyper allows 16 KiB of extensions over a whole body, this allows 4 KiB per chunk.
const MAX_CHUNK_LINE: usize = 4096;

/// A request body up to this size goes out in the same write as the head (one system call,
/// one TCP segment for a small JSON body); a larger one is written after it, not copied.
const INLINE_BODY: usize = 16 * 1024;

/// A connection's byte stream: plain TCP, or TLS over it (boxed: rustls' state is large, and
/// an idle connection is this value alone).
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Is this idle connection still usable? `false` when the server closed it (or reset it)
    /// while it was idle, or sent bytes nobody asked for. Polls the socket once, without
    /// waiting: a read that would block means open.
    pub(crate) fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(Pin::new(self).poll_read(&mut cx, &mut buf), Poll::Pending)
    }

    /// Wait until the socket has bytes to read (plain TCP), so that a request waiting for its
    /// answer holds no read buffer. TLS reads at once (rustls decides when it has a record).
    /// `poll_read_ready`, not `TcpStream::readable`: that future keeps a waiter of its own
    /// (168 bytes in every request in flight); this one keeps the stream's address, and the
    /// waker stays in the socket's registration (one task uses a connection at a time).
    async fn readable(&self) {
        if let Stream::Tcp(s) = self {
            // An error shows again at the read that follows.
            let _ = std::future::poll_fn(|cx| s.poll_read_ready(cx)).await;
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// Why an exchange did not give an answer.
pub(crate) enum Error {
    /// Not a byte of the request was written: the (reused) connection was closed meanwhile;
    /// the request may go to another connection.
    Unsent,
    Failed(Failure),
}

/// An answer, and whether its connection may carry the next request.
pub(crate) struct Exchanged {
    pub(crate) received: Received,
    pub(crate) reusable: bool,
}

/// Send `out` on `stream` and read the answer (its body kept only as `limit` says). `host` is
/// the `Host` header unless the request sets one. `reused`: the connection served a request
/// before, so a failure to write its first byte is [`Error::Unsent`] (the server closed it
/// while it was idle), not a failed request.
pub(crate) async fn exchange(
    stream: &mut Stream,
    out: &Outgoing<'_>,
    host: &HeaderValue,
    limit: BodyLimit,
    reused: bool,
) -> Result<Exchanged, Error> {
    let (wire, rest) = encode(out, host);
    write_request(stream, &wire, rest, reused).await?;
    drop(wire);
    let head_request = out.method == Method::HEAD;
    let close_asked = wants_close(out.headers);
    read_response(stream, head_request, limit)
        .await
        .map(|(received, reusable)| Exchanged {
            received,
            reusable: reusable && !close_asked,
        })
        .map_err(Error::Failed)
}

/// Did the request itself say `Connection: close`?
fn wants_close(headers: &HeaderMap) -> bool {
    has_token(headers, &CONNECTION, "close")
}

/// Does any of `name`'s values list `token` (comma-separated, any case)?
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The request's bytes: request line, headers and, when it is small, the body; the body to
/// write after them when it is not. `Content-Length` is pacer's, from the body (a plan's own
/// `Content-Length` or `Transfer-Encoding` would frame a body other than the one sent, so
/// they are not copied).
fn encode<'a>(out: &Outgoing<'a>, host: &HeaderValue) -> (Vec<u8>, Option<&'a Bytes>) {
    let body = out.body.filter(|b| !b.is_empty());
    // The origin form: an empty path is "/" (also before a query: `http://h?q` is `/?q`).
    let path = out.uri.path_and_query().map_or("", |pq| pq.as_str());
    let slash = !path.starts_with('/');
    let mut size = out.method.as_str().len() + path.len() + 65 + host.len();
    for (k, v) in out.headers {
        size += k.as_str().len() + v.len() + 4;
    }
    if let Some(a) = &out.authorization {
        size += a.len() + 20;
    }
    if let Some((k, v)) = &out.correlation {
        size += k.as_str().len() + v.len() + 4;
    }
    let inline = body.filter(|b| b.len() <= INLINE_BODY);
    size += inline.map_or(0, |b| b.len());
    let mut w = Vec::with_capacity(size);
    w.extend_from_slice(out.method.as_str().as_bytes());
    w.extend_from_slice(if slash { b" /" } else { b" " });
    w.extend_from_slice(path.as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    let header = |w: &mut Vec<u8>, k: &HeaderName, v: &HeaderValue| {
        w.extend_from_slice(k.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(v.as_bytes());
        w.extend_from_slice(b"\r\n");
    };
    if !out.headers.contains_key(HOST) {
        header(&mut w, &HOST, host);
    }
    for (k, v) in out.headers {
        let ours = *k == CONTENT_LENGTH
            || *k == TRANSFER_ENCODING
            || (*k == http::header::AUTHORIZATION && out.authorization.is_some())
            || out.correlation.is_some_and(|(name, _)| k == name);
        if !ours {
            header(&mut w, k, v);
        }
    }
    if let Some(a) = &out.authorization {
        header(&mut w, &http::header::AUTHORIZATION, a);
    }
    if let Some((k, v)) = &out.correlation {
        header(&mut w, k, v);
    }
    match body {
        Some(b) => {
            w.extend_from_slice(b"content-length: ");
            w.extend_from_slice(b.len().to_string().as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        // A POST, PUT or PATCH without a body says so (curl and hyper do too): some servers
        // answer 411 Length Required otherwise.
        None if [Method::POST, Method::PUT, Method::PATCH].contains(out.method) => {
            w.extend_from_slice(b"content-length: 0\r\n");
        }
        None => {}
    }
    w.extend_from_slice(b"\r\n");
    match inline {
        Some(b) => {
            w.extend_from_slice(b);
            (w, None)
        }
        None => (w, body),
    }
}

/// Write the request. Nothing written at all on a reused connection is [`Error::Unsent`].
async fn write_request(
    stream: &mut Stream,
    head: &[u8],
    body: Option<&Bytes>,
    reused: bool,
) -> Result<(), Error> {
    let failed = |e: io::Error| {
        Error::Failed((
            io_kind(&e, ErrorKind::Protocol),
            format!("the connection failed while the request was written: {e}"),
        ))
    };
    match stream.write(head).await {
        Ok(0) | Err(_) if reused => return Err(Error::Unsent),
        Ok(0) => {
            return Err(Error::Failed((
                ErrorKind::Protocol,
                "the connection closed before the request was sent".into(),
            )));
        }
        Ok(n) => stream.write_all(&head[n..]).await.map_err(failed)?,
        Err(e) => return Err(failed(e)),
    }
    if let Some(b) = body {
        stream.write_all(b).await.map_err(failed)?;
    }
    stream.flush().await.map_err(failed)
}

/// How the body of an answer ends (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// HEAD, 1xx, 204 and 304 answers have none, whatever their headers say.
    Empty,
    Length(u64),
    Chunked,
    /// No length and not chunked: the body is what comes until the server closes.
    UntilClose,
}

/// A parsed response head.
struct Head {
    parts: http::response::Parts,
    framing: Framing,
    /// The connection may carry another request after this answer.
    keep_alive: bool,
}

/// Parse the response head at the start of `buf`, and split it off. `Ok(None)`: incomplete,
/// read more. The header values are slices of the head's bytes (no copy each).
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, String> {
    // Where each header's name and value are in the head: httparse's headers borrow `buf`,
    // which is split afterwards.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            &buf[..],
            &mut slots,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD_BYTES {
                    return Err(format!(
                        "the response head is larger than {MAX_HEAD_BYTES} bytes"
                    ));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(format!("the response has more than {MAX_HEADERS} headers"));
            }
            Err(e) => return Err(format!("invalid response head: {e}")),
        };
        if len > MAX_HEAD_BYTES {
            return Err(format!(
                "the response head is larger than {MAX_HEAD_BYTES} bytes"
            ));
        }
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            *span = (
                at(h.name.as_bytes()),
                h.name.len() as u32,
                at(h.value),
                h.value.len() as u32,
            );
        }
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            resp.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(n, nl, v, vl) in &spans[..count] {
        let (n, v) = (n as usize, v as usize);
        let name = HeaderName::from_bytes(&head[n..n + nl as usize])
            .map_err(|_| "invalid response header name".to_string())?;
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl as usize))
            .map_err(|_| format!("invalid value of the response header {name}"))?;
        headers.append(name, value);
    }
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status code {code}"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let (framing, mut keep_alive) = framing(status, head_request, &headers)?;
    keep_alive &= if version == Version::HTTP_10 {
        has_token(&headers, &CONNECTION, "keep-alive")
    } else {
        !has_token(&headers, &CONNECTION, "close")
    };
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
    }))
}

/// How the answer's body is framed, and whether that framing lets the connection be reused.
fn framing(
    status: StatusCode,
    head_request: bool,
    headers: &HeaderMap,
) -> Result<(Framing, bool), String> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection speaks another protocol from here on.
        return Ok((Framing::Empty, false));
    }
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // The last coding says how the body ends; with a Content-Length too, the message is
        // suspect (request smuggling), so its connection is not reused.
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .map(<[u8]>::trim_ascii);
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        let reusable = chunked && !headers.contains_key(CONTENT_LENGTH);
        return Ok((
            if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            },
            reusable,
        ));
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let n = content_length(part.trim_ascii())
                .ok_or_else(|| "invalid Content-Length in the response".to_string())?;
            if length.is_some_and(|l| l != n) {
                return Err("the response has two different Content-Length values".into());
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::UntilClose, false),
    })
}

/// A `Content-Length` value: digits only, within u64.
fn content_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Read one read's worth into `buf`: the number of bytes read, 0 at the end of the stream.
async fn fill(stream: &mut Stream, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
    buf.reserve(room);
    stream.read_buf(buf).await
}

/// Read the answer: its head (after any 1xx), then its body as `limit` says. Most answers
/// arrive whole with their head; the rest of a longer one is read in a boxed future
/// ([`Rest`]), so that the future every request in flight holds has no room for it.
async fn read_response(
    stream: &mut Stream,
    head_request: bool,
    limit: BodyLimit,
) -> Result<(Received, bool), Failure> {
    let (head, buf) = read_head(stream, head_request).await?;
    let rest = match start_body(head, buf, limit)? {
        Ok(done) => return Ok(done),
        Err(rest) => rest,
    };
    Box::pin(rest.read(stream)).await
}

/// Read until the final answer's head: 1xx answers before it are skipped. Returns the head
/// and the bytes read after it.
async fn read_head(stream: &mut Stream, head_request: bool) -> Result<(Head, BytesMut), Failure> {
    stream.readable().await;
    let mut buf = BytesMut::new();
    let mut informational = 0;
    loop {
        // An `if let`, not a `match` around the read below: a match's scrutinee (a whole
        // `Head`) would stay in the future while the read waits.
        if let Some(h) = parse_head(&mut buf, head_request).map_err(|m| (ErrorKind::Protocol, m))? {
            if !h.parts.status.is_informational()
                || h.parts.status == StatusCode::SWITCHING_PROTOCOLS
            {
                return Ok((h, buf));
            }
            informational += 1;
            if informational > MAX_INFORMATIONAL {
                return Err((
                    ErrorKind::Protocol,
                    format!("more than {MAX_INFORMATIONAL} 1xx answers before the response"),
                ));
            }
            continue;
        }
        let n = fill(stream, &mut buf, READ_CHUNK).await.map_err(|e| {
            (
                io_kind(&e, ErrorKind::Protocol),
                format!("the connection failed before the response: {e}"),
            )
        })?;
        if n == 0 {
            return Err((
                ErrorKind::Protocol,
                if buf.is_empty() && informational == 0 {
                    "the connection closed before the response".into()
                } else {
                    "the connection closed within the response head".into()
                },
            ));
        }
    }
}

/// An I/O error's kind for the report: `Timeout` when it timed out, else `other`.
fn io_kind(e: &io::Error, other: ErrorKind) -> ErrorKind {
    if e.kind() == io::ErrorKind::TimedOut {
        ErrorKind::Timeout
    } else {
        other
    }
}

/// An answer whose body came whole with its head (and whether its connection may be reused),
/// or what it takes to read the rest.
type Started = Result<(Received, bool), Box<Rest>>;

/// Start the body: take what of it `buf` holds.
fn start_body(head: Head, mut buf: BytesMut, limit: BodyLimit) -> Result<Started, Failure> {
    let Head {
        parts,
        framing,
        keep_alive,
    } = head;
    let decoder = match framing {
        Framing::Empty => Decoder::Length(0),
        Framing::Length(n) if n > limit.max => return Err(limit.too_large()),
        Framing::Length(n) => Decoder::Length(n),
        Framing::Chunked => Decoder::Chunked(Chunked::Size, 0),
        Framing::UntilClose => Decoder::UntilClose,
    };
    let mut body = BodyReader {
        decoder,
        keep: limit.keeps(parts.status),
        limit,
        chunks: Vec::new(),
        len: 0,
    };
    let done = body.consume(&mut buf)?;
    let rest = Rest {
        parts,
        keep_alive,
        body,
        buf,
    };
    Ok(if done {
        Ok(rest.finish())
    } else {
        Err(Box::new(rest))
    })
}

/// An answer whose body is still coming.
struct Rest {
    parts: http::response::Parts,
    keep_alive: bool,
    body: BodyReader,
    buf: BytesMut,
}

impl Rest {
    async fn read(mut self: Box<Self>, stream: &mut Stream) -> Result<(Received, bool), Failure> {
        self.body.read_rest(stream, &mut self.buf).await?;
        Ok(self.finish())
    }

    fn finish(mut self) -> (Received, bool) {
        // Bytes after the answer's end were never asked for: that connection is not reused.
        let reusable =
            self.keep_alive && self.body.decoder != Decoder::UntilClose && self.buf.is_empty();
        (
            Received {
                parts: self.parts,
                body: self.body.finish(),
                body_len: self.body.len,
            },
            reusable,
        )
    }
}

/// A body being read: its decoder, and what of it is kept.
struct BodyReader {
    decoder: Decoder,
    keep: bool,
    limit: BodyLimit,
    chunks: Vec<Bytes>,
    /// The body's bytes so far, kept or not.
    len: u64,
}

impl BodyReader {
    /// Take the body bytes at the front of `buf`: `true` when the body is complete.
    fn consume(&mut self, buf: &mut BytesMut) -> Result<bool, Failure> {
        loop {
            match self.decoder.decode(buf).map_err(|m| (ErrorKind::Body, m))? {
                Decoded::Data(n) => {
                    self.len = self.len.saturating_add(n as u64);
                    if self.len > self.limit.max {
                        return Err(self.limit.too_large());
                    }
                    if self.keep {
                        self.chunks.push(buf.split_to(n).freeze());
                    } else {
                        buf.advance(n);
                    }
                }
                Decoded::Done => return Ok(true),
                Decoded::NeedMore => return Ok(false),
            }
        }
    }

    /// Read from `stream` until the body is complete.
    async fn read_rest(&mut self, stream: &mut Stream, buf: &mut BytesMut) -> Result<(), Failure> {
        loop {
            let room = if self.decoder.left() > READ_CHUNK as u64 {
                BIG_READ
            } else {
                READ_CHUNK
            };
            let n = fill(stream, buf, room).await.map_err(|e| {
                (
                    io_kind(&e, ErrorKind::Body),
                    format!("the connection failed within the response body: {e}"),
                )
            })?;
            if n == 0 {
                if self.decoder == Decoder::UntilClose {
                    return Ok(());
                }
                return Err((
                    ErrorKind::Body,
                    "the connection closed before the response body's end".into(),
                ));
            }
            if self.consume(buf)? {
                return Ok(());
            }
        }
    }

    /// The body as kept (empty when not kept).
    fn finish(&mut self) -> Bytes {
        joined(std::mem::take(&mut self.chunks))
    }
}

/// Where a body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    /// This many bytes still to come.
    Length(u64),
    /// Where in a chunked body, and the trailer bytes seen so far.
    Chunked(Chunked, usize),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// At a chunk-size line.
    Size,
    /// Within a chunk, this many bytes of it left.
    Data(u64),
    /// After a chunk's data, at its CRLF.
    DataEnd,
    /// After the last (0) chunk, at the trailers (ended by an empty line).
    Trailers,
    Done,
}

/// What [`Decoder::decode`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// The first this many bytes of the buffer are body bytes.
    Data(usize),
    /// More bytes are needed (the buffer's framing bytes are consumed).
    NeedMore,
    Done,
}

impl Decoder {
    /// How many body bytes are known to be still to come (0 when unknown).
    fn left(&self) -> u64 {
        match self {
            Decoder::Length(n) | Decoder::Chunked(Chunked::Data(n), _) => *n,
            _ => 0,
        }
    }

    /// Consume framing bytes at the front of `buf` and say what is next. Never reads past
    /// the body's end: what follows it stays in `buf`.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, String> {
        match self {
            Decoder::Length(0) => Ok(Decoded::Done),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                Ok(Decoded::Data(n as usize))
            }
            Decoder::UntilClose => Ok(if buf.is_empty() {
                Decoded::NeedMore
            } else {
                Decoded::Data(buf.len())
            }),
            Decoder::Chunked(state, trailers) => loop {
                match *state {
                    Chunked::Done => return Ok(Decoded::Done),
                    Chunked::Size => {
                        let Some(line) = take_line(buf, MAX_CHUNK_LINE, "chunk size line")? else {
                            return Ok(Decoded::NeedMore);
                        };
                        let size = chunk_size(&line)?;
                        *state = if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        };
                    }
                    Chunked::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        let n = left.min(buf.len() as u64);
                        *state = if n == left {
                            Chunked::DataEnd
                        } else {
                            Chunked::Data(left - n)
                        };
                        return Ok(Decoded::Data(n as usize));
                    }
                    Chunked::DataEnd => {
                        if buf.starts_with(b"\r\n") {
                            buf.advance(2);
                        } else if buf.starts_with(b"\n") {
                            buf.advance(1);
                        } else if buf.is_empty() || &buf[..] == b"\r" {
                            return Ok(Decoded::NeedMore);
                        } else {
                            return Err("a chunk is not followed by CRLF".into());
                        }
                        *state = Chunked::Size;
                    }
                    Chunked::Trailers => {
                        let room = MAX_HEAD_BYTES.saturating_sub(*trailers);
                        let Some(line) = take_line(buf, room, "trailers")? else {
                            return Ok(Decoded::NeedMore);
                        };
                        *trailers += line.len() + 2;
                        if line.is_empty() {
                            *state = Chunked::Done;
                        }
                    }
                }
            },
        }
    }
}

/// Take one line (ended by LF, its CR dropped) off the front of `buf`; `None` if it has not
/// all arrived. A line longer than `max` is an error naming `what`.
fn take_line(buf: &mut BytesMut, max: usize, what: &str) -> Result<Option<BytesMut>, String> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i <= max => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        Some(_) => Err(format!("the {what} is longer than {max} bytes")),
        None if buf.len() > max => Err(format!("the {what} is longer than {max} bytes")),
        None => Ok(None),
    }
}

/// A chunk-size line's size (hex, then optional whitespace and `;extensions`, ignored).
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("invalid chunk size line".into());
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err("invalid chunk size line".into());
    }
    line[..digits].iter().try_fold(0u64, |n, &d| {
        let d = (d as char).to_digit(16).unwrap_or(0);
        n.checked_mul(16)
            .and_then(|n| n.checked_add(u64::from(d)))
            .ok_or_else(|| "a chunk size overflows 64 bits".to_string())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use proptest::prelude::*;

    fn head(s: &str) -> Result<Option<Head>, String> {
        parse_head(&mut BytesMut::from(s), false)
    }

    fn framing_of(s: &str) -> (Framing, bool) {
        let h = head(s).unwrap().unwrap();
        (h.framing, h.keep_alive)
    }

    #[test]
    fn heads_frame_their_bodies() {
        use Framing::*;
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                (Length(5), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                (Length(5), true),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                (Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
                (Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                (UntilClose, false),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                (Chunked, false),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", (UntilClose, false)),
            (
                "HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
                (Empty, true),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                (Empty, true),
            ),
            (
                "HTTP/1.1 101 Switching\r\nupgrade: x\r\n\r\n",
                (Empty, false),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                (Length(0), false),
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
                (Length(0), false),
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: Keep-Alive\r\n\r\n",
                (Length(0), true),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(framing_of(s), want, "{s:?}");
        }
        let h = parse_head(
            &mut BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"),
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Empty, "a HEAD answer has no body");
    }

    #[test]
    fn broken_heads_are_errors_naming_what() {
        for (s, want) in [
            ("HELLO\r\n\r\n", "invalid response head"),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                "two different",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
                "two different",
            ),
        ] {
            let e = head(s)
                .err()
                .unwrap_or_else(|| panic!("{s:?} was accepted"));
            assert!(e.contains(want), "{s:?}: {e}");
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "x: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(head(&many).err().unwrap().contains("headers"));
        let big = format!("HTTP/1.1 200 OK\r\nx: {}", "y".repeat(MAX_HEAD_BYTES));
        assert!(head(&big).err().unwrap().contains("larger than"));
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
    }

    #[test]
    fn header_values_are_kept_as_sent() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nX-Custom: a b\r\nx-custom: c\r\n\r\nbody",
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.parts.status, 429);
        assert_eq!(h.parts.headers["retry-after"], "7");
        let all: Vec<_> = h.parts.headers.get_all("x-custom").iter().collect();
        assert_eq!(all, ["a b", "c"]);
        assert_eq!(&buf[..], b"body", "the body stays in the buffer");
    }

    /// Decode `wire` fed in pieces of `step` bytes: the body, and what was left after it.
    fn decode_all(mut d: Decoder, wire: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(n) => body.extend_from_slice(&buf.split_to(n)),
                Decoded::Done => return Ok((body, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        return Err("cut short".into());
                    }
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    fn chunked() -> Decoder {
        Decoder::Chunked(Chunked::Size, 0)
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let wire = b"5;foo=bar\r\nhello\r\n1 \r\n \r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (body, rest) = decode_all(chunked(), wire, step).unwrap();
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
        for (wire, want) in [
            (&b"fffffffffffffffff\r\n"[..], "overflows"),
            (b"zz\r\n", "invalid chunk size"),
            (b"5\r\nhelloXX", "not followed by CRLF"),
            (b"5x\r\n", "invalid chunk size"),
        ] {
            let e = decode_all(chunked(), wire, 4).unwrap_err();
            assert!(e.contains(want), "{wire:?}: {e}");
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert!(
            decode_all(chunked(), long.as_bytes(), 64)
                .unwrap_err()
                .contains("longer")
        );
        let trailers = format!("0\r\n{}", "t: x\r\n".repeat(MAX_HEAD_BYTES / 6 + 1));
        assert!(
            decode_all(chunked(), trailers.as_bytes(), 4096)
                .unwrap_err()
                .contains("trailers")
        );
    }

    #[test]
    fn a_length_stops_at_its_end() {
        let (body, rest) = decode_all(Decoder::Length(5), b"helloHTTP", 3).unwrap();
        assert_eq!(
            (body.as_slice(), rest.as_slice()),
            (&b"hello"[..], &b"H"[..])
        );
        assert_eq!(decode_all(Decoder::Length(0), b"", 1).unwrap().0, b"");
    }

    fn outgoing<'a>(
        method: &'a Method,
        uri: &'a http::Uri,
        headers: &'a HeaderMap,
        body: Option<&'a Bytes>,
    ) -> Outgoing<'a> {
        Outgoing {
            method,
            uri,
            headers,
            authorization: None,
            body,
            keep_body: false,
            correlation: None,
        }
    }

    #[test]
    fn requests_are_written_with_pacers_framing() {
        let uri: http::Uri = "http://h:8/p?q=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let body = Bytes::from_static(b"{}");
        let host = HeaderValue::from_static("h:8");
        let (w, rest) = encode(&outgoing(&Method::POST, &uri, &headers, Some(&body)), &host);
        assert_eq!(
            String::from_utf8(w).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: h:8\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n{}"
        );
        assert!(rest.is_none());
        let empty = HeaderMap::new();
        let (w, _) = encode(&outgoing(&Method::PUT, &uri, &empty, None), &host);
        assert!(
            String::from_utf8(w)
                .unwrap()
                .ends_with("content-length: 0\r\n\r\n")
        );
        let (w, _) = encode(&outgoing(&Method::GET, &uri, &empty, None), &host);
        assert_eq!(
            String::from_utf8(w).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: h:8\r\n\r\n"
        );
        for (uri, line) in [
            ("http://h:8", "GET / HTTP/1.1"),
            ("http://h:8?q", "GET /?q HTTP/1.1"),
        ] {
            let uri: http::Uri = uri.parse().unwrap();
            let (w, _) = encode(&outgoing(&Method::GET, &uri, &empty, None), &host);
            assert!(String::from_utf8(w).unwrap().starts_with(line), "{uri}");
        }
        let big = Bytes::from(vec![b'x'; INLINE_BODY + 1]);
        let (w, rest) = encode(&outgoing(&Method::POST, &uri, &empty, Some(&big)), &host);
        assert!(
            String::from_utf8(w)
                .unwrap()
                .ends_with("content-length: 16385\r\n\r\n")
        );
        assert_eq!(rest.map(Bytes::len), Some(INLINE_BODY + 1));
    }

    /// A chunked body with random chunk sizes, cut into random pieces, decodes to itself.
    fn encode_chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut w = Vec::new();
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].clamp(1, rest.len());
            w.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            w.extend_from_slice(&rest[..n]);
            w.extend_from_slice(b"\r\n");
            rest = &rest[n..];
            i += 1;
        }
        w.extend_from_slice(b"0\r\n\r\n");
        w
    }

    proptest! {
        #[test]
        fn chunked_round_trips(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            sizes in proptest::collection::vec(1usize..700, 1..8),
            step in 1usize..600,
        ) {
            let wire = encode_chunked(&body, &sizes);
            let (got, rest) = decode_all(chunked(), &wire, step).unwrap();
            prop_assert_eq!(got, body);
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(wire in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_all(chunked(), &wire, 7);
            let _ = parse_head(&mut BytesMut::from(&wire[..]), false);
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            head.extend_from_slice(&wire);
            let _ = parse_head(&mut BytesMut::from(&head[..]), false);
        }
    }
}
