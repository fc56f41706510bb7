//! The controller/worker protocol (`proto/pacer/v1/coordinator.proto`): generated prost
//! messages, the tonic client and server, and the limits both sides enforce.
//!
//! The message order and rules are documented in the `.proto` file and in
//! docs/distributed.md; this crate only adds names for the constants and small helpers that
//! keep both sides agreeing.

/// Generated from `proto/pacer/v1/coordinator.proto` (clippy is silenced for the generated
/// code only; the helpers below are linted like any other file).
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("pacer.v1");
}

pub use v1::{
    Abort, Assign, ControllerMessage, Finished, Heartbeat, Hello, LeaseGrant, LeaseRequest, Pause,
    Ping, Pong, Ready, Report, Resume, ServerHeard, Start, Stop, Throttled, TokenGrant,
    TokenRequest, WorkerMessage, controller_message, worker_message,
};

/// Most slots one [`LeaseRequest`] may ask for (as the Redis lease: `pacer_limiter`'s
/// `MAX_LEASE`).
pub const MAX_LEASE_WANT: u32 = 1024;

/// Largest token a [`TokenGrant`] may carry: real bearer tokens (JWTs included) are a few
/// kilobytes at most.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// Longest pause a [`Throttled`] or [`Pause`] may ask for: a day (a longer Retry-After is not
/// one anybody meant).
pub const MAX_PAUSE_US: u64 = 86_400_000_000;

/// The most `ServerHeard` entries one `LeaseRequest` carries (one per limit of a plan, which
/// has at most 64 that a bit set can name).
pub const MAX_HEARD: usize = 64;

/// The longest a `ServerHeard`'s request may have been in flight, or its answer kept before it
/// was forwarded: older news of a server's window is not news (the controller drops it).
pub const MAX_HEARD_AGE_US: u64 = 60_000_000;

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("credential", &self.credential)
            .field("token", &"<redacted>")
            .field("generation", &self.generation)
            .field("expires_in_ms", &self.expires_in_ms)
            .field("error", &self.error)
            .finish()
    }
}

/// The protocol version this build speaks (`Hello.protocol_version`, `Assign.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest gRPC message either side accepts (a snapshot of a large plan is a few hundred kB;
/// this leaves room without letting a peer make us buffer without bound).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Largest `Report.limits_json` accepted.
pub const MAX_LIMITS_BYTES: usize = 64 << 10;

/// Largest `Report.snapshot_json` accepted.
pub const MAX_SNAPSHOT_BYTES: usize = MAX_MESSAGE_BYTES - 4096 - MAX_LIMITS_BYTES;

/// Default period of heartbeats and reports.
pub const DEFAULT_INTERVAL_MS: u32 = 1000;

/// Largest first message of a stream (the Hello) a listener reads before the session token is
/// checked. A Hello holds a test id, a name, a version and the token: well under a kilobyte.
/// 64 KiB leaves room for long names while a stranger who opens streams can make the listener
/// hold at most this much per unauthenticated stream (the full [`MAX_MESSAGE_BYTES`] is
/// allowed only once the token has been checked).
pub const MAX_HELLO_BYTES: usize = 64 << 10;

/// Shortest session token a controller accepts. 16 bytes of a random hex token are 64 bits of
/// entropy: not guessable over a network in a test's lifetime, and short enough to paste. The
/// tokens pacer generates are longer (32 hex characters for `pacer controller`, 64 for the
/// operator).
pub const MIN_SESSION_TOKEN_BYTES: usize = 16;

/// How long a running worker keeps sending with no message from any controller before it
/// stops its load on its own (`pacer worker --lost-after`, a LoadTest's `spec.lostAfter`).
/// Longer than a controller's restart or failover, which a worker must ride out: the
/// operator's standby takes its Lease at most about 17 s after the leader's last renewal (a
/// 15 s lease seen at most 2 s late), becomes Ready and is dialed within the worker's 2 s
/// backoff, so a worker hears from it about 20 s after it last heard the old one. Short enough
/// to protect the target: a controller gone for good (deleted, its node lost, a test it cannot
/// resume) leaves at most this much load behind, not the rest of the test.
pub const LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The shortest `lost_after`: below a few heartbeats (1 s each) a busy controller or one slow
/// reconnect would stop a healthy worker's load.
pub const MIN_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest `lost_after`: past an hour the bound protects nothing, and durations stay far
/// from overflowing an `Instant`.
pub const MAX_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// What is wrong with a `lost_after` of `d`, if anything (the caller names the field).
pub fn lost_after_problem(d: std::time::Duration) -> Option<String> {
    (!(MIN_LOST_AFTER..=MAX_LOST_AFTER).contains(&d))
        .then(|| format!("{d:?} is not between {MIN_LOST_AFTER:?} and {MAX_LOST_AFTER:?}"))
}

/// Longest text from the other side (a worker's error, a gRPC status message, a stop reason)
/// that is logged or put in a status, in characters. A real error is a line or two; the cap
/// keeps a hostile or broken peer from filling logs and the LoadTest's status.
pub const MAX_PEER_TEXT_CHARS: usize = 1024;

/// An error and its sources, `: `-joined: what either end of the channel reports when it
/// cannot connect or handshake (tonic's transport error says only "transport error", and a TLS
/// failure's cause is often two levels down).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Text that came from the other side of the protocol, made safe to log: control characters
/// (newlines that would forge log lines, terminal escapes) escaped as `\n`, `\u{1b}`, and at
/// most [`MAX_PEER_TEXT_CHARS`] characters kept, with a note of how many were cut.
pub fn peer_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_PEER_TEXT_CHARS + 32));
    for (kept, c) in text.chars().enumerate() {
        if kept == MAX_PEER_TEXT_CHARS {
            let cut = text.chars().count() - kept;
            out.push_str(&format!("... ({cut} more characters cut)"));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The gRPC metadata key (a trailer of the refused stream) that carries a [`Refusal`]'s wire
/// name. The status message stays the human text; this key is what a peer matches on.
pub const REFUSAL_METADATA_KEY: &str = "pacer-refusal";

/// A refusal of the controller that a worker acts on, typed so that neither side depends on
/// the wording of the other's messages: the controller ends the stream with
/// [`Refusal::to_status`] and the worker reads it back with [`Refusal::of`]. The wire name in
/// [`REFUSAL_METADATA_KEY`] is part of the protocol: renaming one breaks older peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A resuming worker's slot already holds its final report (the close that was the receipt
    /// got lost): the worker's part is delivered and it may exit.
    AlreadyFinished,
}

impl Refusal {
    /// Every refusal, for tests and for reading a wire name back.
    pub const ALL: [Refusal; 1] = [Refusal::AlreadyFinished];

    /// The stable name in the status metadata.
    pub const fn wire_name(self) -> &'static str {
        match self {
            Refusal::AlreadyFinished => "already-finished",
        }
    }

    /// The gRPC code the refusal is sent with (what a peer that does not read the metadata
    /// acts on).
    pub const fn code(self) -> tonic::Code {
        match self {
            Refusal::AlreadyFinished => tonic::Code::FailedPrecondition,
        }
    }

    /// The status that ends a stream with this refusal; `message` is for people.
    pub fn to_status(self, message: impl Into<String>) -> tonic::Status {
        let mut status = tonic::Status::new(self.code(), message);
        status.metadata_mut().insert(
            REFUSAL_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(self.wire_name()),
        );
        status
    }

    /// The refusal a status carries, if any: read from its metadata, never from its message.
    pub fn of(status: &tonic::Status) -> Option<Refusal> {
        let name = status.metadata().get(REFUSAL_METADATA_KEY)?.to_str().ok()?;
        Refusal::ALL
            .into_iter()
            .find(|r| r.wire_name() == name && r.code() == status.code())
    }
}

impl worker_message::Body {
    /// The message kind, for errors about order ("Ready before Assign").
    pub fn kind(&self) -> &'static str {
        match self {
            worker_message::Body::Hello(_) => "Hello",
            worker_message::Body::Ready(_) => "Ready",
            worker_message::Body::Report(_) => "Report",
            worker_message::Body::Finished(_) => "Finished",
            worker_message::Body::Heartbeat(_) => "Heartbeat",
            worker_message::Body::Ping(_) => "Ping",
            worker_message::Body::LeaseRequest(_) => "LeaseRequest",
            worker_message::Body::Throttled(_) => "Throttled",
            worker_message::Body::TokenRequest(_) => "TokenRequest",
        }
    }
}

impl controller_message::Body {
    /// The message kind, for errors about order.
    pub fn kind(&self) -> &'static str {
        match self {
            controller_message::Body::Assign(_) => "Assign",
            controller_message::Body::Start(_) => "Start",
            controller_message::Body::Stop(_) => "Stop",
            controller_message::Body::Abort(_) => "Abort",
            controller_message::Body::Heartbeat(_) => "Heartbeat",
            controller_message::Body::Pong(_) => "Pong",
            controller_message::Body::LeaseGrant(_) => "LeaseGrant",
            controller_message::Body::Pause(_) => "Pause",
            controller_message::Body::TokenGrant(_) => "TokenGrant",
        }
    }
}

impl From<worker_message::Body> for WorkerMessage {
    fn from(body: worker_message::Body) -> Self {
        WorkerMessage { body: Some(body) }
    }
}

impl From<controller_message::Body> for ControllerMessage {
    fn from(body: controller_message::Body) -> Self {
        ControllerMessage { body: Some(body) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_after_is_bounded() {
        assert_eq!(lost_after_problem(LOST_AFTER), None);
        assert_eq!(lost_after_problem(MIN_LOST_AFTER), None);
        assert_eq!(lost_after_problem(MAX_LOST_AFTER), None);
        let p = lost_after_problem(std::time::Duration::from_secs(1)).unwrap();
        assert_eq!(p, "1s is not between 5s and 3600s");
        assert!(lost_after_problem(std::time::Duration::from_secs(3601)).is_some());
    }

    #[test]
    fn peer_text_escapes_control_characters_and_caps_the_length() {
        assert_eq!(peer_text("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        let long = "x".repeat(MAX_PEER_TEXT_CHARS + 10);
        let shown = peer_text(&long);
        assert!(shown.starts_with(&"x".repeat(MAX_PEER_TEXT_CHARS)));
        assert!(shown.ends_with("(10 more characters cut)"), "{shown}");
        assert_eq!(peer_text("plain"), "plain");
    }

    #[test]
    fn a_refusal_is_read_back_from_its_status_and_never_from_the_text() {
        for refusal in Refusal::ALL {
            let status = refusal.to_status("worker 3 has already finished");
            assert_eq!(status.code(), refusal.code());
            assert_eq!(status.message(), "worker 3 has already finished");
            assert_eq!(Refusal::of(&status), Some(refusal));
        }
        // The same words without the metadata are just words.
        let plain = tonic::Status::failed_precondition("worker 3 has already finished");
        assert_eq!(Refusal::of(&plain), None);
    }

    #[test]
    fn a_refusal_needs_its_code_and_a_known_name() {
        let mut status = tonic::Status::aborted("replaced");
        status.metadata_mut().insert(
            REFUSAL_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static("already-finished"),
        );
        assert_eq!(Refusal::of(&status), None, "wrong code");
        let mut status = tonic::Status::failed_precondition("?");
        status.metadata_mut().insert(
            REFUSAL_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static("something-newer"),
        );
        assert_eq!(Refusal::of(&status), None, "unknown name");
    }

    #[test]
    fn a_token_grant_never_shows_its_token() {
        let g = TokenGrant {
            credential: 0,
            token: "very-secret-token".into(),
            generation: 1,
            expires_in_ms: 1000,
            error: String::new(),
        };
        let msg = ControllerMessage::from(controller_message::Body::TokenGrant(g));
        let shown = format!("{msg:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn wire_names_are_distinct_and_valid_metadata() {
        let names: std::collections::HashSet<_> = Refusal::ALL.map(Refusal::wire_name).into();
        assert_eq!(names.len(), Refusal::ALL.len());
        for name in names {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{name}"
            );
        }
    }
}
