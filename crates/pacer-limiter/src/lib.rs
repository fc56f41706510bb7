//! The seams between the engine and whatever paces requests and supplies credentials:
//! [`Limiter`] (client-side rate limits) and [`TokenSource`] (bearer tokens), plus the
//! simplest implementations of each. The in-process GCRA is in [`gcra`]; the Redis-backed
//! fleet budget (leases, fleet-wide Retry-After, the shared token cache) in [`fleet`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub mod fleet;
pub mod gcra;
pub mod headroom;
pub mod learn;
mod lease;
pub mod served;
pub use gcra::{FleetLimitReport, LimitReport, LocalLimiter, Reservation};

/// What a limiter needs to know about a request to decide which limits it matches.
#[derive(Clone, Copy, Debug)]
pub struct RequestMeta<'a> {
    pub method: &'a str,
    /// The path part of the URL as sent (without the query).
    pub path: &'a str,
    /// The request's name in the plan.
    pub request: &'a str,
}

/// What acquiring cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Time spent waiting for the limits (pacing), pauses excluded.
    pub waited: Duration,
    /// Time spent waiting because a scope was paused by a server's Retry-After.
    pub paused: Duration,
    /// Bit set of the plan's limits (by index) the request matched, for accounting. Up to 64.
    pub limits: u64,
}

/// What the server said, so the limiter can react (pause a scope, adapt a rate).
#[derive(Clone, Copy, Debug)]
pub struct Feedback {
    pub status: u16,
    /// How long to pause the request's scope: the server's Retry-After (already clamped), the
    /// plan's default for a 429 without one, or `None` when the plan does not pause scopes.
    pub retry_after: Option<Duration>,
    /// Where `retry_after` came from: an adaptive limit sizes its own pause from what it
    /// learned instead of the plan's blunt default.
    pub pause_origin: PauseOrigin,
    /// The rate (per second) the server states it enforces (IETF `RateLimit-Policy` `q`/`w`),
    /// read only for requests that matched an adaptive limit: it goes to that rate at once.
    pub stated_rate: Option<f64>,
    /// What the server's rate-limit headers said of the limit (remaining, reset, its stated
    /// limit), whatever their style; `None` when it sent none. Steers fixed windows and
    /// reserves ([`headroom`]).
    pub server: Option<headroom::ServerReport>,
    /// How long before this answer its request was sent (its service time): what pacer granted
    /// since is not yet in the server's count.
    pub sent_ago: Duration,
}

/// Who chose a [`Feedback`]'s pause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PauseOrigin {
    /// The server's own `Retry-After`: always honoured.
    #[default]
    Server,
    /// The plan's `retryAfterDefault`, for a refusal without a usable `Retry-After`.
    PlanDefault,
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// The limiter cannot decide (e.g. its shared store is gone past the safe-mode bound).
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
    /// The test is stopping.
    #[error("stopped")]
    Stopped,
}

/// Client-side rate limits. `acquire` resolves when every limit the request matches has
/// granted it (atomically: a request never holds one limit's token while waiting on another).
#[async_trait]
pub trait Limiter: Send + Sync {
    async fn acquire(&self, req: &RequestMeta<'_>) -> Result<Grant, LimiterError>;
    /// Called after every response of a request that went through `acquire`.
    fn feedback(&self, req: &RequestMeta<'_>, fb: &Feedback);
    /// What each of the plan's limits did, in plan order (empty when the limiter keeps none).
    fn report(&self) -> Vec<LimitReport> {
        Vec::new()
    }
}

/// No client-side limits.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unlimited;

#[async_trait]
impl Limiter for Unlimited {
    async fn acquire(&self, _: &RequestMeta<'_>) -> Result<Grant, LimiterError> {
        Ok(Grant::default())
    }
    fn feedback(&self, _: &RequestMeta<'_>, _: &Feedback) {}
}

/// A bearer token. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }
    /// The secret itself: only for the Authorization header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("credential {credential}: token endpoint failed: {reason}")]
    Fetch { credential: String, reason: String },
    #[error("no credential with index {0}")]
    Unknown(usize),
}

/// Supplies bearer tokens per credential (index into the plan's `auth`).
#[async_trait]
pub trait TokenSource: Send + Sync {
    async fn token(&self, credential: usize) -> Result<Token, TokenError>;
    /// The server rejected `failed` (401): drop it if it is still the current one.
    fn invalidate(&self, credential: usize, failed: &Token);
}

/// Fixed tokens (the plan's `type: bearer` credentials).
#[derive(Debug, Default, Clone)]
pub struct StaticTokens {
    tokens: Vec<Option<Token>>,
}

impl StaticTokens {
    pub fn new(tokens: Vec<Option<Token>>) -> Self {
        Self { tokens }
    }
}

#[async_trait]
impl TokenSource for StaticTokens {
    async fn token(&self, credential: usize) -> Result<Token, TokenError> {
        self.tokens
            .get(credential)
            .cloned()
            .flatten()
            .ok_or(TokenError::Unknown(credential))
    }
    fn invalidate(&self, _: usize, _: &Token) {}
}
