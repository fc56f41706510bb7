//! The worker's end of the served budget (docs/distributed.md, "Tokens and limits without
//! Redis"): the [`Hub`] outlives sessions (a reconnect swaps the stream under it), sends the
//! limiter's lease requests and pauses and the token source's requests on the current stream
//! ([`pacer_limiter::served::LeaseLink`], [`pacer_limiter::served::TokenLink`]), and delivers
//! the controller's answers, which [`Inbound`] takes out of the stream before the session's
//! own reading sees it. A malformed answer is dropped with a warning naming the field (the
//! lease is asked again after `LEASE_ANSWER_WITHIN`); token values are never logged.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pacer_limiter::Token;
use pacer_limiter::fleet::LEASE_MAX_AHEAD;
use pacer_limiter::served::{Heard, LeaseLink, ServedLimiter, ServedTokens, TokenLink};
use pacer_proto::{
    ControllerMessage, LeaseRequest, ServerHeard, Throttled, TokenRequest, WorkerMessage,
    controller_message::Body as In, worker_message::Body as Out,
};
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::session::Tx;

// A lease the limiter asks for always fits what the controller accepts.
const _: () = assert!(
    pacer_limiter::fleet::MAX_LEASE == pacer_proto::MAX_LEASE_WANT,
    "pacer_proto::MAX_LEASE_WANT is the limiter's MAX_LEASE"
);

/// Slack on a grant's slot horizon: the controller measured its own clock, not ours.
const AHEAD_SLACK: Duration = Duration::from_millis(100);

/// What a worker's served limiter and token source talk through (see the module doc).
#[derive(Default)]
pub(crate) struct Hub {
    /// The current session's outbox; replaced by each new session.
    outbox: Mutex<Option<Tx>>,
    limiter: OnceLock<Arc<ServedLimiter>>,
    tokens: OnceLock<Arc<ServedTokens>>,
}

impl Hub {
    /// A new session: what the limiter and token source send goes to it from now on.
    pub(crate) fn attach(&self, tx: &Tx) {
        *self.outbox.lock() = Some(tx.clone());
    }

    /// The served limiter and token source this worker's engine uses (set once, at launch).
    pub(crate) fn serve(
        &self,
        limiter: Option<Arc<ServedLimiter>>,
        tokens: Option<Arc<ServedTokens>>,
    ) {
        if let Some(l) = limiter {
            let _ = self.limiter.set(l);
        }
        if let Some(t) = tokens {
            let _ = self.tokens.set(t);
        }
    }

    /// The served limiter, once the engine has one.
    pub(crate) fn limiter(&self) -> Option<Arc<ServedLimiter>> {
        self.limiter.get().cloned()
    }

    /// Queue a message on the current session; false when there is none (or it is full or
    /// closed: the caller asks again later).
    fn send(&self, body: Out) -> bool {
        let out = self.outbox.lock();
        out.as_ref()
            .is_some_and(|tx| tx.try_send(WorkerMessage { body: Some(body) }).is_ok())
    }

    /// Take a served message out of the stream: true when `m` was one (delivered or dropped).
    fn deliver(&self, m: &ControllerMessage) -> bool {
        let received = Instant::now();
        match &m.body {
            Some(In::LeaseGrant(g)) => {
                let Some(lim) = self.limiter.get() else {
                    tracing::warn!("lease_grant: this worker asked for no lease");
                    return true;
                };
                let horizon = LEASE_MAX_AHEAD + AHEAD_SLACK;
                let offsets: Vec<Duration> = g
                    .offsets_us
                    .iter()
                    .map(|us| Duration::from_micros(*us))
                    .collect();
                if offsets.len() > pacer_proto::MAX_LEASE_WANT as usize
                    || offsets.iter().any(|o| *o > horizon)
                    || offsets.windows(2).any(|w| w[0] > w[1])
                    || g.pauses_us.iter().any(|p| *p > pacer_proto::MAX_PAUSE_US)
                    || g.wait_us > pacer_proto::MAX_PAUSE_US
                {
                    tracing::warn!(
                        "lease_grant.offsets_us: more than {} slots, out of order, beyond {horizon:?}, or a pause over a day: dropped",
                        pacer_proto::MAX_LEASE_WANT
                    );
                    return true;
                }
                let pauses: Vec<Duration> = g
                    .pauses_us
                    .iter()
                    .map(|us| Duration::from_micros(*us))
                    .collect();
                lim.granted(
                    g.id,
                    &offsets,
                    Duration::from_micros(g.wait_us),
                    &pauses,
                    received,
                );
                true
            }
            Some(In::Pause(p)) => {
                if p.remaining_us > pacer_proto::MAX_PAUSE_US {
                    tracing::warn!(
                        "pause.remaining_us: {} is over a day: dropped",
                        p.remaining_us
                    );
                } else if let Some(lim) = self.limiter.get() {
                    tracing::info!(
                        limits = format_args!("{:#b}", p.limits),
                        pause_ms = p.remaining_us / 1000,
                        "the fleet paused limits"
                    );
                    lim.paused(p.limits, Duration::from_micros(p.remaining_us), received);
                }
                true
            }
            Some(In::TokenGrant(g)) => {
                let Some(tokens) = self.tokens.get() else {
                    tracing::warn!("token_grant: this worker takes no served token");
                    return true;
                };
                let token = if !g.error.is_empty() {
                    Err(pacer_proto::peer_text(&g.error))
                } else if g.token.is_empty()
                    || g.token.len() > pacer_proto::MAX_TOKEN_BYTES
                    || g.token.chars().any(|c| c.is_control() || c == ' ')
                {
                    tracing::warn!(
                        "token_grant.token: empty, over {} bytes or not a token: dropped",
                        pacer_proto::MAX_TOKEN_BYTES
                    );
                    return true;
                } else {
                    Ok(Token::new(g.token.as_str()))
                };
                tokens.delivered(
                    g.credential as usize,
                    g.generation,
                    token,
                    Duration::from_millis(g.expires_in_ms),
                    received,
                );
                true
            }
            _ => false,
        }
    }
}

impl LeaseLink for Hub {
    fn request_lease(&self, id: u64, limits: u64, want: u32, heard: &[Heard]) -> bool {
        self.send(Out::LeaseRequest(LeaseRequest {
            id,
            limits,
            want,
            heard: heard
                .iter()
                .take(pacer_proto::MAX_HEARD)
                .map(server_heard)
                .collect(),
        }))
    }

    fn throttled(&self, limits: u64, pause: Duration) -> bool {
        let retry_after_us = u64::try_from(pause.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, pacer_proto::MAX_PAUSE_US);
        self.send(Out::Throttled(Throttled {
            limits,
            retry_after_us,
        }))
    }
}

/// A server's headers as the controller takes them: whatever the server said, every duration
/// within the bounds the controller checks (a hostile server cannot break the session).
fn server_heard(h: &Heard) -> ServerHeard {
    let us = |d: Duration, max: u64| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).min(max);
    ServerHeard {
        limit: h.limit,
        remaining: h.report.remaining,
        reset_us: h
            .report
            .reset
            .map_or(0, |r| us(r, pacer_proto::MAX_PAUSE_US).max(1)),
        stated_limit: h.report.limit.unwrap_or(0),
        sent_ago_us: us(h.sent_ago, pacer_proto::MAX_HEARD_AGE_US),
        age_us: us(h.age, pacer_proto::MAX_HEARD_AGE_US),
    }
}

impl TokenLink for Hub {
    fn request_token(&self, credential: u32, failed_generation: u64) -> bool {
        self.send(Out::TokenRequest(TokenRequest {
            credential,
            failed_generation,
        }))
    }
}

/// The controller's stream with the served messages taken out (delivered to the [`Hub`]):
/// the session reads the rest as before.
pub(crate) struct Inbound {
    stream: Streaming<ControllerMessage>,
    hub: Arc<Hub>,
}

impl Inbound {
    pub(crate) fn new(stream: Streaming<ControllerMessage>, hub: Arc<Hub>) -> Self {
        Self { stream, hub }
    }

    /// The next message that is not a served one (cancel-safe: a served message taken out is
    /// delivered before the next await).
    pub(crate) async fn message(&mut self) -> Result<Option<ControllerMessage>, Status> {
        loop {
            match self.stream.message().await? {
                Some(m) if self.hub.deliver(&m) => {}
                other => return Ok(other),
            }
        }
    }
}
