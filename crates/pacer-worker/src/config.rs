//! How a worker finds and talks to its controller: the settings `pacer worker` (and the tests
//! that run a worker in-process) fill in, and their defaults. Kept apart from the session so
//! the one place that holds the session token also decides how it is shown (never).

use std::time::Duration;

use crate::tls::Transport;

/// How long a fresh worker keeps trying its first connection: a controller and its workers
/// are usually started together (a Job, a Deployment, a shell loop), and a minute covers the
/// controller's own start, image pull included.
pub(crate) const CONNECT_FOR: Duration = Duration::from_secs(60);

/// How long a worker that lost its controller keeps reconnecting: long enough for a
/// controller pod to be rescheduled and restarted, which then takes the shard back.
pub(crate) const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// A `lost_after` outside the protocol's bounds (`pacer_proto::lost_after_problem`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct LostAfterError {
    /// The field or flag that held it (`--lost-after`).
    pub field: String,
    pub problem: String,
}

/// Check a `lost_after` given as `field`.
pub fn check_lost_after(field: &str, value: Duration) -> Result<Duration, LostAfterError> {
    match pacer_proto::lost_after_problem(value) {
        None => Ok(value),
        Some(problem) => Err(LostAfterError {
            field: field.to_string(),
            problem,
        }),
    }
}

/// How a worker finds and talks to its controller.
#[derive(Clone)]
pub struct WorkerConfig {
    /// `host:port` or `http://host:port`.
    pub controller: String,
    /// TLS (the controller's certificate checked against a CA) or, on the user's explicit
    /// choice, plaintext. [`WorkerConfig::new`] starts in plaintext (loopback and tests).
    pub transport: Transport,
    /// The test to join; `None`: whatever test the controller runs.
    pub test_id: Option<String>,
    /// The worker index to ask for; `None`: the controller picks.
    pub index: Option<u32>,
    pub session_token: String,
    /// Shown by the controller (host:pid).
    pub name: String,
    /// Send `X-Pacer-Worker` even if the controller does not ask for it.
    pub force_worker_header: bool,
    /// Keep trying the first connection this long (default 60 s).
    pub connect_for: Duration,
    /// After losing the controller, keep running and trying to reconnect this long (default
    /// 5 min); past it a running shard goes on, but a finished one gives up delivering.
    pub reconnect_for: Duration,
    /// A running shard that hears nothing from any controller this long stops its load (the
    /// engine is aborted); it still reconnects to deliver its results within
    /// `reconnect_for` (default `pacer_proto::LOST_AFTER`, 30 s).
    pub lost_after: Duration,
    /// Resolve the plan's `${env:NAME}` references in this process's environment: the
    /// Kubernetes operator sends them unresolved, so credentials (the worker pods' Secrets)
    /// never pass through the controller.
    pub resolve_plan_env: bool,
    /// Join the fleet's budget in Redis (`scope: fleet` limits, `share: fleet` tokens).
    /// `None`: fleet limits are split by the shard's weight and kept by each worker.
    pub redis: Option<RedisJoin>,
}

/// The Redis a worker shares its fleet's budget through.
#[derive(Clone)]
pub struct RedisJoin {
    /// `redis://` or `rediss://` URL; may hold a password, so never logged.
    pub url: String,
    /// The fleet's id in Redis; `None`: the controller's test id.
    pub fleet: Option<String>,
    /// The named budget to share (`--budget`); `None`: the plan's `budget:`, if any.
    pub budget: Option<String>,
    /// How long the budget's keys outlive their last use; `None`: the limiter's default.
    pub budget_idle: Option<Duration>,
    /// This test's weight on the budget (`--weight`); `None`: the plan's `weight:`, else 1.
    pub weight: Option<f64>,
    /// How long to send at a safe share while Redis fails, before pausing.
    pub safe_mode_max: Duration,
    /// PEM CA(s) to trust for `rediss://` instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("controller", &self.controller)
            .field("transport", &self.transport)
            .field("test_id", &self.test_id)
            .field("index", &self.index)
            .field("session_token", &"<redacted>")
            .field("name", &self.name)
            .field("force_worker_header", &self.force_worker_header)
            .field("connect_for", &self.connect_for)
            .field("reconnect_for", &self.reconnect_for)
            .field("lost_after", &self.lost_after)
            .field("resolve_plan_env", &self.resolve_plan_env)
            .field(
                "redis",
                &self
                    .redis
                    .as_ref()
                    .map(|r| (pacer_limiter::fleet::redacted_url(&r.url), r.fleet.clone())),
            )
            .finish()
    }
}

impl WorkerConfig {
    pub fn new(controller: impl Into<String>, session_token: impl Into<String>) -> Self {
        Self {
            controller: controller.into(),
            transport: Transport::InsecurePlaintext,
            test_id: None,
            index: None,
            session_token: session_token.into(),
            name: String::new(),
            force_worker_header: false,
            connect_for: CONNECT_FOR,
            reconnect_for: RECONNECT_FOR,
            lost_after: pacer_proto::LOST_AFTER,
            resolve_plan_env: false,
            redis: None,
        }
    }

    /// The controller's URL for tonic: a bare `host:port` becomes `http://host:port`. With
    /// TLS an `https://` URL becomes `http://` too: the worker's own connector
    /// ([`crate::tls`]) does the TLS, tonic only speaks HTTP/2 over it.
    pub(crate) fn controller_url(&self) -> String {
        let addr = &self.controller;
        if let (Transport::Tls(_), Some(rest)) = (&self.transport, addr.strip_prefix("https://")) {
            return format!("http://{rest}");
        }
        if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.clone()
        } else {
            format!("http://{addr}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_is_plain_http_and_a_url_is_kept() {
        let url = |c: &str| WorkerConfig::new(c, "t").controller_url();
        assert_eq!(url("127.0.0.1:7000"), "http://127.0.0.1:7000");
        assert_eq!(url("http://c:1"), "http://c:1");
        assert_eq!(url("https://c:1"), "https://c:1");
    }

    #[test]
    fn lost_after_is_bounded_and_the_error_names_the_field() {
        let d = pacer_proto::LOST_AFTER;
        assert_eq!(check_lost_after("--lost-after", d), Ok(d));
        for bad in [
            Duration::ZERO,
            Duration::from_secs(4),
            Duration::from_secs(3601),
        ] {
            let e = check_lost_after("spec.lostAfter", bad).unwrap_err();
            assert!(e.to_string().starts_with("spec.lostAfter: "), "{e}");
        }
    }

    #[test]
    fn the_session_token_and_the_redis_password_are_never_shown() {
        let mut cfg = WorkerConfig::new("c:1", "session-secret-0123456789");
        cfg.redis = Some(RedisJoin {
            url: "redis://:redis-secret@r:6379".into(),
            fleet: None,
            budget: None,
            budget_idle: None,
            weight: None,
            safe_mode_max: Duration::from_secs(1),
            ca_pem: None,
        });
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("session-secret"), "{shown}");
        assert!(!shown.contains("redis-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
