//! The fleet budget: many pacer processes behave, against the target, like one well-behaved
//! client. Every `scope: fleet` limit is one GCRA in Redis, decided by one Lua script on
//! Redis' clock; processes take its tokens in small leases and spend them through a local
//! pacer; a 429's Retry-After pauses the scope for the whole fleet at once (Pub/Sub); and one
//! process refreshes each shared token under a lock while the others wait for it.
//!
//! - [`Fleet`]: the connection to Redis shared by everything below, the worker's registration
//!   (heartbeats, so the fleet size is known), the Pub/Sub listener, and the health state that
//!   drives safe mode when Redis is slow or gone.
//! - [`FleetLimiter`]: the [`crate::Limiter`] for a fleet (leases, pauses, the fleet's learner of
//!   adaptive limits, safe mode).
//! - [`TokenStore`]: the shared token cache's Redis primitives (the HTTP fetch stays in the
//!   engine, which owns the HTTP client).
//! - [`Keys`]: the Redis layout (a test's own, or a named budget's that many tests share:
//!   [`Fleet::declare`] refuses a budget declared with different limits).
//!
//! docs/rate-limiting.md ("Fleets") says what this guarantees and with which numbers.

pub mod fair;
pub mod keys;
mod limiter;
mod notes;
mod scripts;
pub mod server;
pub mod status;
mod tokens;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use keys::Keys;
pub use limiter::{
    FLEET_SPREAD, FleetLimiter, FleetOptions, LEASE_HOLD, LEASE_HOLD_MAX, LEASE_HOLD_SHARE,
    LEASE_MAX_AHEAD, LEASE_MAX_SPAN, MAX_LEASE, fleet_pacing, fleet_pacing_rate, fleet_spread,
    lease_hold,
};
pub use tokens::TokenStore;

/// How often a worker says it is alive (a heartbeat runs 5 commands in Redis).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A worker without a heartbeat for this long no longer counts.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(15);
/// How often a worker that lost Redis tries it again.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a named budget's keys (limit states and definitions) outlive their last use: long
/// enough that tests run one after another (or a laptop joining an hour later) meet the same
/// definitions and pauses, short enough that an abandoned budget leaves nothing for a day.
/// Every heartbeat and every lease refreshes it.
pub const BUDGET_IDLE: Duration = Duration::from_secs(3600);
/// The shortest idle time a budget may be given (tests use a few seconds): at least a few
/// heartbeats, so a budget in use never expires between two of them.
pub const BUDGET_IDLE_MIN: Duration = Duration::from_secs(HEARTBEAT_EVERY.as_secs() * 3);
/// The longest idle time a budget may be given: a day.
pub const BUDGET_IDLE_MAX: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    #[error("fleet: {0}")]
    Config(String),
    #[error("Redis at {addr}: cannot connect: {reason}")]
    Connect { addr: String, reason: String },
    #[error("Redis: {op} failed: {reason}")]
    Redis { op: &'static str, reason: String },
    #[error("Redis: no answer to {op} within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("Redis sent a malformed reply to {op}: {what}")]
    Reply { op: &'static str, what: String },
    /// A budget's limit declared differently than the budget recorded (boxed: errors stay
    /// small on the lease path).
    #[error(transparent)]
    BudgetDisagrees(Box<BudgetDisagreement>),
}

/// Two declarations of one budget's limit that differ: both, and who declared each.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "budget {budget:?}: limit {limit:?} is declared as {theirs} by test {declared_by:?} and as \
     {ours} by this test ({test:?}); a budget's limits must agree: declare the same limit, or \
     name another budget"
)]
pub struct BudgetDisagreement {
    pub budget: String,
    pub limit: String,
    /// This process's definition.
    pub ours: String,
    pub test: String,
    /// The definition the budget recorded first, and the test that declared it.
    pub theirs: String,
    pub declared_by: String,
}

/// How to reach Redis and how long to wait for it.
#[derive(Clone)]
pub struct FleetConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS. Holds secrets: never
    /// logged (see [`redacted_url`]).
    pub url: String,
    /// The test's id: the processes of one fleet use the same one.
    pub test_id: String,
    /// The named budget the fleet shares with other tests (its keys live under its name), or
    /// `None`: the test keeps its limits and tokens to itself.
    pub budget: Option<String>,
    /// How long the budget's keys outlive their last use ([`BUDGET_IDLE`]; tests shorten it,
    /// within [`BUDGET_IDLE_MIN`]..=[`BUDGET_IDLE_MAX`]).
    pub budget_idle: Duration,
    /// This test's weight among the tests on the budget (`weight:`, `--weight`; `None`: 1):
    /// its share of each limit while others have a backlog ([`fair`]). Only with a budget.
    pub weight: Option<f64>,
    /// TCP (and TLS) connect timeout. redis-rs' own default is 1 s.
    pub connect_timeout: Duration,
    /// Longest wait for any Redis answer; beyond it Redis counts as failing (safe mode).
    /// A lease call takes about 0.2 ms on a LAN; 500 ms (redis-rs' own default, kept on
    /// purpose) leaves room for a busy client machine without mistaking it for a Redis outage,
    /// which the closing Pub/Sub connection reports at once anyway.
    pub response_timeout: Duration,
    /// How long a worker keeps sending at its safe share while Redis fails, before it pauses.
    pub safe_mode_max: Duration,
    /// PEM certificate(s) to trust for `rediss://` instead of the system's roots (a private
    /// CA, as Redis in a cluster often has).
    pub ca_pem: Option<Vec<u8>>,
}

impl FleetConfig {
    pub fn new(url: impl Into<String>, test_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            test_id: test_id.into(),
            budget: None,
            budget_idle: BUDGET_IDLE,
            weight: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(500),
            safe_mode_max: Duration::from_secs(10),
            ca_pem: None,
        }
    }
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("url", &redacted_url(&self.url))
            .field("test_id", &self.test_id)
            .field("budget", &self.budget)
            .field("budget_idle", &self.budget_idle)
            .field("weight", &self.weight)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("safe_mode_max", &self.safe_mode_max)
            .field("ca_pem", &self.ca_pem.as_ref().map(|c| c.len()))
            .finish()
    }
}

/// `scheme://host:port/db` without user or password, for messages.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{rest}")
}

/// What other workers told the fleet (Redis Pub/Sub).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A limit's scope is paused for `remaining` from when the message was sent.
    Pause { limit: String, remaining: Duration },
    /// A new shared token for this credential is in Redis.
    Token { credential: String },
    /// The fleet now has this many live workers.
    Workers(u32),
    /// The listener (re)subscribed: messages may have been missed before.
    Subscribed,
}

fn parse_event(payload: &[u8]) -> Option<Event> {
    let s = std::str::from_utf8(payload).ok()?;
    let (kind, rest) = s.split_once(' ')?;
    match kind {
        "pause" => {
            let (us, name) = rest.split_once(' ')?;
            let us: u64 = us.parse().ok()?;
            // A pause longer than a day is not a Retry-After anyone meant: ignore it.
            (us <= 86_400_000_000).then(|| Event::Pause {
                limit: name.to_string(),
                remaining: Duration::from_micros(us),
            })
        }
        "token" => Some(Event::Token {
            credential: rest.to_string(),
        }),
        "workers" => rest.parse().ok().map(Event::Workers),
        _ => None,
    }
}

/// Whether Redis can be used right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    /// Redis is failing: limit locally at a safe share, for at most `safe_mode_max`.
    Safe,
    /// Redis has been failing for longer than `safe_mode_max`: do not send. The reason says why.
    Unavailable(String),
}

#[derive(Debug, Default)]
struct Health {
    failing_since: Option<Instant>,
    last_error: String,
    /// Finished episodes.
    safe_total: Duration,
    unavailable_total: Duration,
    /// Why sending paused, the last time it did.
    unavailable_reason: Option<String>,
    /// Bumped on every change of mode: a slot or safe-mode reservation taken under another mode
    /// is given up.
    epoch: u64,
}

/// Totals of this worker's use of Redis, for the summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetStats {
    /// Commands this worker sent to Redis (a script counts as one; inside it Redis runs a few).
    pub redis_calls: u64,
    /// Time spent in safe mode (Redis failing, local limiter at a safe share).
    pub safe_mode: Duration,
    /// Time during which sending was paused because Redis had been failing for too long.
    pub unavailable: Duration,
    /// Why sending paused, if it ever did.
    pub unavailable_reason: Option<String>,
    /// The most workers seen live at once.
    pub workers: u32,
}

/// The connection commands and scripts go through: one Redis (a reconnecting manager), or a
/// Redis Cluster (every key of a test carries one hash tag, so each script runs on the one
/// node that holds the test's slot).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// One worker's connection to its fleet. Create with [`Fleet::connect`]; call
/// [`Fleet::leave`] at the end of the test.
pub struct Fleet {
    conn: Conn,
    client: redis::Client,
    keys: Keys,
    addr: String,
    worker_id: String,
    op_timeout: Duration,
    safe_mode_max: Duration,
    calls: AtomicU64,
    workers: AtomicU32,
    max_workers: AtomicU32,
    health: Mutex<Health>,
    probing: AtomicBool,
    /// Set when the worker leaves: an adaptive limit's learner stops taking turns (the last
    /// worker deletes the keys it would otherwise start over in).
    leaving: AtomicBool,
    /// Notified on every change of mode.
    health_changed: Notify,
    events: broadcast::Sender<Event>,
    /// Every key this worker created, so the last worker can delete them all.
    known_keys: Mutex<BTreeSet<String>>,
    test_id: String,
    /// How long a budget's keys outlive their last use (unused without a budget).
    budget_idle: Duration,
    /// The budget's definition keys this worker declared: every heartbeat refreshes them.
    definitions: Mutex<BTreeSet<String>>,
    /// This test's weight on the budget (1 without one).
    weight: f64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("redis", &self.addr)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Connect, register this worker and start listening to the fleet. Fails when Redis cannot
    /// be reached within the connect timeout (a fleet does not start without its budget).
    pub async fn connect(cfg: FleetConfig) -> Result<Arc<Self>, FleetError> {
        let keys = Keys::new(&cfg.test_id, cfg.budget.as_deref())?;
        if !(BUDGET_IDLE_MIN..=BUDGET_IDLE_MAX).contains(&cfg.budget_idle) {
            return Err(FleetError::Config(format!(
                "the budget's idle time {:?} must be within {:?}..={:?}",
                cfg.budget_idle, BUDGET_IDLE_MIN, BUDGET_IDLE_MAX
            )));
        }
        match (cfg.weight, &cfg.budget) {
            (Some(w), _) if pacer_plan::budget::weight_problem(w).is_some() => {
                return Err(FleetError::Config(format!(
                    "weight {}",
                    pacer_plan::budget::weight_problem(w).unwrap_or_default()
                )));
            }
            (Some(_), None) => {
                return Err(FleetError::Config(
                    "a weight is a test's share of a budget: name the budget too".into(),
                ));
            }
            _ => {}
        }
        let addr = redacted_url(&cfg.url);
        let connect_err = |reason: String| FleetError::Connect {
            addr: addr.clone(),
            reason,
        };
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: cfg.ca_pem.clone(),
        };
        let client = match &cfg.ca_pem {
            Some(_) => redis::Client::build_with_tls(cfg.url.as_str(), certs()),
            None => redis::Client::open(cfg.url.as_str()),
        }
        .map_err(|e| connect_err(format!("invalid URL or CA: {}", e.category())))?;
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.response_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let bound = cfg.connect_timeout * 3;
        let no_connection = || connect_err(format!("no connection within {bound:?}"));
        let mut single = tokio::time::timeout(
            bound,
            ConnectionManager::new_with_config(client.clone(), mgr_cfg),
        )
        .await
        .map_err(|_| no_connection())?
        .map_err(|e| connect_err(e.to_string()))?;
        // A node of a Redis Cluster: talk to the cluster (the seed's URL, password and TLS
        // settings reach every node); Pub/Sub stays on the seed, since a cluster broadcasts
        // every PUBLISH to all its nodes.
        let info: Result<String, _> = tokio::time::timeout(
            bound,
            redis::cmd("INFO").arg("cluster").query_async(&mut single),
        )
        .await
        .map_err(|_| no_connection())?;
        // A user whose ACL refuses INFO talks to one node.
        let cluster = match info {
            Ok(info) => info.lines().any(|l| l.trim() == "cluster_enabled:1"),
            Err(e) => {
                tracing::debug!(error = %e, "INFO cluster refused; using one Redis node");
                false
            }
        };
        let conn = if cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(vec![cfg.url.as_str()])
                .connection_timeout(cfg.connect_timeout)
                .response_timeout(cfg.response_timeout)
                .retries(2);
            if cfg.ca_pem.is_some() {
                b = b.certs(certs());
            }
            let cc = b
                .build()
                .map_err(|e| connect_err(format!("Redis Cluster: {e}")))?;
            let c = tokio::time::timeout(bound, cc.get_async_connection())
                .await
                .map_err(|_| no_connection())?
                .map_err(|e| connect_err(format!("Redis Cluster: {e}")))?;
            Conn::Cluster(c)
        } else {
            Conn::Single(single)
        };
        let worker_id = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "pacer".into()),
            std::process::id(),
            rand::random::<u32>()
        );
        let (events, _) = broadcast::channel(1024);
        let fleet = Arc::new(Self {
            conn,
            client,
            keys,
            addr: addr.clone(),
            worker_id,
            op_timeout: cfg.response_timeout,
            safe_mode_max: cfg.safe_mode_max,
            calls: AtomicU64::new(0),
            workers: AtomicU32::new(1),
            max_workers: AtomicU32::new(1),
            health: Mutex::new(Health::default()),
            probing: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            health_changed: Notify::new(),
            events,
            known_keys: Mutex::new(BTreeSet::new()),
            test_id: cfg.test_id.clone(),
            budget_idle: cfg.budget_idle,
            definitions: Mutex::new(BTreeSet::new()),
            weight: cfg.weight.unwrap_or(1.0),
            tasks: Mutex::new(Vec::new()),
        });
        fleet
            .heartbeat()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let weak = Arc::downgrade(&fleet);
        let hb = tokio::spawn(heartbeats(weak.clone()));
        let sub = tokio::spawn(listen(weak, fleet.client.clone(), fleet.keys.events()));
        fleet.tasks.lock().extend([hb, sub]);
        tracing::info!(redis = %fleet.addr, cluster, worker = %fleet.worker_id, "joined the fleet");
        Ok(fleet)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// This test's weight on its budget (1 without a budget or a weight).
    pub fn weight(&self) -> f64 {
        self.weight
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Live workers at the last count (at least 1: this one).
    pub fn workers(&self) -> u32 {
        self.workers.load(Ordering::Relaxed).max(1)
    }

    fn set_workers(&self, n: u64) {
        let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
        self.workers.store(n, Ordering::Relaxed);
        self.max_workers.fetch_max(n, Ordering::Relaxed);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Remember a key this worker writes, for the cleanup at the end of the test.
    pub(crate) fn track_key(&self, key: String) {
        self.known_keys.lock().insert(key);
    }

    /// How long an idle limit's state outlives its last slot in a budget (ms): the budget's
    /// idle time, refreshed by every lease. `None` for a test's own fleet (the limiter's own
    /// keep, since the last worker deletes the keys anyway).
    pub(crate) fn budget_keep_ms(&self) -> Option<u64> {
        self.keys
            .budget()
            .map(|_| u64::try_from(self.budget_idle.as_millis()).unwrap_or(u64::MAX))
    }

    /// Declare the budget's `scope: fleet` limits among `limits`, each by its
    /// [`pacer_plan::budget::definition`] (rate, window, burst, shape). The first declaration of a limit is recorded with
    /// this test's id; a later one that differs is refused with both definitions and the test
    /// that declared the first ([`BudgetDisagreement`]), never a silent winner.
    /// Without a budget there is nothing to agree on: the test's limits are its own.
    pub async fn declare(self: &Arc<Self>, limits: &[pacer_plan::Limit]) -> Result<(), FleetError> {
        let Some(budget) = self.keys.budget() else {
            return Ok(());
        };
        let limits: Vec<(String, String)> = limits
            .iter()
            .filter(|l| l.scope == pacer_plan::spec::LimitScope::Fleet)
            .map(|l| (l.name.clone(), pacer_plan::budget::definition(l)))
            .collect();
        if limits.is_empty() {
            return Ok(());
        }
        let mut inv = scripts::DECLARE.prepare_invoke();
        for (name, _) in &limits {
            inv.key(self.keys.definition(name));
        }
        inv.arg(self.budget_idle.as_millis() as u64)
            .arg(&self.test_id);
        for (_, def) in &limits {
            inv.arg(def);
        }
        let v = self.script("declaring the budget's limits", inv).await?;
        if let Some((i, theirs, by)) = scripts::parse_declare(&v, limits.len())? {
            let (limit, ours) = &limits[i];
            return Err(FleetError::BudgetDisagrees(Box::new(BudgetDisagreement {
                budget: budget.to_string(),
                limit: limit.clone(),
                ours: ours.clone(),
                test: self.test_id.clone(),
                theirs,
                declared_by: by,
            })));
        }
        self.definitions
            .lock()
            .extend(limits.iter().map(|(n, _)| self.keys.definition(n)));
        Ok(())
    }

    /// Whether the worker is leaving the fleet (or left).
    pub(crate) fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// The current mode, and the epoch that changes with it.
    pub fn mode(&self) -> (Mode, u64) {
        let h = self.health.lock();
        let mode = match h.failing_since {
            None => Mode::Healthy,
            Some(since) if since.elapsed() < self.safe_mode_max => Mode::Safe,
            Some(since) => Mode::Unavailable(format!(
                "fleet limiter: Redis at {} has been failing for {:.1} s, longer than the \
                 safe-mode bound of {:.1} s, so sending is paused until it answers again \
                 (last error: {})",
                self.addr,
                since.elapsed().as_secs_f64(),
                self.safe_mode_max.as_secs_f64(),
                h.last_error
            )),
        };
        (mode, h.epoch)
    }

    /// When the current safe mode ends (and sending pauses), if Redis is failing.
    pub(crate) fn safe_mode_ends(&self) -> Option<Instant> {
        self.health
            .lock()
            .failing_since
            .map(|s| s + self.safe_mode_max)
    }

    /// Resolves on the next change of mode.
    pub(crate) fn mode_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.health_changed.notified()
    }

    pub fn stats(&self) -> FleetStats {
        let h = self.health.lock();
        let (mut safe, mut unavailable) = (h.safe_total, h.unavailable_total);
        let mut reason = h.unavailable_reason.clone();
        if let Some(since) = h.failing_since {
            let failing = since.elapsed();
            safe += failing.min(self.safe_mode_max);
            if failing > self.safe_mode_max {
                unavailable += failing - self.safe_mode_max;
                reason = Some(format!(
                    "Redis at {} failing for longer than the safe-mode bound of {:.1} s: {}",
                    self.addr,
                    self.safe_mode_max.as_secs_f64(),
                    h.last_error
                ));
            }
        }
        FleetStats {
            redis_calls: self.calls.load(Ordering::Relaxed),
            safe_mode: safe,
            unavailable,
            unavailable_reason: reason,
            workers: self.max_workers.load(Ordering::Relaxed).max(1),
        }
    }

    /// Redis failed: enter safe mode (if not in it yet) and start probing for its return.
    pub(crate) fn record_failure(self: &Arc<Self>, err: &FleetError) {
        let entered = {
            let mut h = self.health.lock();
            h.last_error = err.to_string();
            if h.failing_since.is_none() {
                h.failing_since = Some(Instant::now());
                h.epoch += 1;
                true
            } else {
                false
            }
        };
        if entered {
            tracing::warn!(
                error = %err,
                bound_s = self.safe_mode_max.as_secs_f64(),
                "Redis is failing: the fleet limiter runs in safe mode (a local limiter at a safe share)"
            );
            self.health_changed.notify_waiters();
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(self);
            let t = tokio::spawn(probe(weak));
            let mut tasks = self.tasks.lock();
            tasks.retain(|t| !t.is_finished());
            tasks.push(t);
        }
    }

    fn record_success(&self) {
        let recovered = {
            let mut h = self.health.lock();
            match h.failing_since.take() {
                None => false,
                Some(since) => {
                    let failing = since.elapsed();
                    h.safe_total += failing.min(self.safe_mode_max);
                    if failing > self.safe_mode_max {
                        h.unavailable_total += failing - self.safe_mode_max;
                        h.unavailable_reason = Some(format!(
                            "Redis at {} failed for {:.1} s, longer than the safe-mode bound of \
                             {:.1} s: {}",
                            self.addr,
                            failing.as_secs_f64(),
                            self.safe_mode_max.as_secs_f64(),
                            h.last_error
                        ));
                    }
                    h.epoch += 1;
                    true
                }
            }
        };
        if recovered {
            tracing::warn!("Redis answers again: the fleet limiter is back on the shared budget");
            self.health_changed.notify_waiters();
        }
    }

    /// Run one Redis operation of `cmds` commands with the response timeout.
    async fn run<T>(
        &self,
        op: &'static str,
        cmds: u64,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FleetError> {
        self.calls.fetch_add(cmds, Ordering::Relaxed);
        match tokio::time::timeout(self.op_timeout, fut).await {
            Err(_) => Err(FleetError::Timeout {
                op,
                timeout: self.op_timeout,
            }),
            Ok(Err(e)) => Err(FleetError::Redis {
                op,
                reason: e.to_string(),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Invoke a script; on a failure (not a malformed reply) the worker enters safe mode.
    pub(crate) async fn script(
        self: &Arc<Self>,
        op: &'static str,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<redis::Value, FleetError> {
        let mut c = self.conn.clone();
        let r = self.run(op, 1, inv.invoke_async(&mut c)).await;
        match &r {
            Ok(_) => self.record_success(),
            Err(e) => self.record_failure(e),
        }
        r
    }

    /// Any other command (or pipeline of `cmds` commands).
    pub(crate) async fn query<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        op: &'static str,
        cmds: u64,
        q: impl FnOnce(&mut Conn) -> redis::RedisFuture<'_, T>,
    ) -> Result<T, FleetError> {
        let mut c = self.conn.clone();
        let r = self.run(op, cmds, q(&mut c)).await;
        match &r {
            Ok(_) => self.record_success(),
            Err(e) => self.record_failure(e),
        }
        r
    }

    async fn heartbeat(self: &Arc<Self>) -> Result<u64, FleetError> {
        let mut inv = scripts::HEARTBEAT.key(self.keys.workers());
        // A budget in use stays: its definitions live on for its idle time after this beat.
        for k in self.definitions.lock().iter() {
            inv.key(k);
        }
        inv.arg(&self.worker_id)
            .arg(HEARTBEAT_STALE.as_millis() as u64)
            .arg((HEARTBEAT_STALE * 3).as_millis() as u64)
            .arg(self.keys.events())
            .arg(self.budget_idle.as_millis() as u64);
        // On a budget: this test stays in the budget's registry of tests (with its weight).
        if self.keys.budget().is_some() {
            inv.key(self.keys.tests())
                .arg(self.keys.test())
                .arg(fair::weight_arg(self.weight))
                .arg(fair::TEST_STALE.as_millis() as u64);
        }
        let v = self.script("the heartbeat", inv).await?;
        let n = scripts::parse_count("the heartbeat", &v)?;
        self.set_workers(n);
        Ok(n)
    }

    /// Leave the fleet: stop the background tasks and deregister. The last worker to leave
    /// deletes every key of the test; a budget's keys are never deleted (other tests may use
    /// them now or later): they expire after the budget's idle time. Returns whether this
    /// worker cleaned up.
    pub async fn leave(self: &Arc<Self>) -> Result<bool, FleetError> {
        self.leaving.store(true, Ordering::Release);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        let mut inv = scripts::LEAVE.key(self.keys.workers());
        if self.keys.budget().is_none() {
            for k in self.known_keys.lock().iter() {
                inv.key(k);
            }
        }
        inv.arg(&self.worker_id)
            .arg(HEARTBEAT_STALE.as_millis() as u64)
            .arg(self.keys.events());
        let mut c = self.conn.clone();
        let v = self
            .run("leaving the fleet", 1, inv.invoke_async(&mut c))
            .await?;
        let left = scripts::parse_count("leaving the fleet", &v)?;
        tracing::info!(workers_left = left, "left the fleet");
        Ok(left == 0)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().drain(..) {
            t.abort();
        }
    }
}

async fn heartbeats(fleet: Weak<Fleet>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(f) = fleet.upgrade() else { return };
        // While Redis fails the prober owns the connection; a heartbeat would only add noise.
        if f.health.lock().failing_since.is_none() {
            let _ = f.heartbeat().await;
        }
    }
}

/// While Redis fails: try it every [`PROBE_EVERY`] until it answers, then re-register.
async fn probe(fleet: Weak<Fleet>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(f) = fleet.upgrade() else { return };
        let ok = f
            .run("PING", 1, async {
                let mut c = f.conn.clone();
                redis::cmd("PING").query_async::<()>(&mut c).await
            })
            .await;
        match ok {
            Ok(()) => {
                f.probing.store(false, Ordering::Release);
                f.record_success();
                let _ = f.heartbeat().await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "Redis still failing");
                f.health.lock().last_error = e.to_string();
            }
        }
    }
}

/// Pub/Sub: pauses and new tokens from the other workers, reconnecting while the test runs.
///
/// The subscription is also the fastest sign that Redis went away: its connection closes at
/// once, so every worker enters safe mode then rather than at its next lease or heartbeat.
async fn listen(fleet: Weak<Fleet>, client: redis::Client, channel: String) {
    let lost = |reason: &str| {
        if let Some(f) = fleet.upgrade() {
            f.record_failure(&FleetError::Redis {
                op: "the event subscription",
                reason: reason.to_string(),
            });
        }
    };
    loop {
        let Some(f) = fleet.upgrade() else { return };
        let timeout = f.op_timeout.max(Duration::from_millis(500));
        let events = f.events.clone();
        drop(f);
        let sub = tokio::time::timeout(timeout * 4, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        match sub {
            Ok(Ok(ps)) => {
                tracing::debug!("subscribed to the fleet's events");
                // Workers that joined before we listened were announced to others only: count
                // them now (stale ones included until pruned: an overcount is the safe side).
                if let Some(f) = fleet.upgrade() {
                    let key = f.keys.workers();
                    if let Ok(n) = f
                        .query::<u64>("counting the workers", 1, |c| {
                            Box::pin(
                                async move { redis::cmd("ZCARD").arg(&key).query_async(c).await },
                            )
                        })
                        .await
                    {
                        f.set_workers(n);
                    }
                }
                let _ = events.send(Event::Subscribed);
                let mut stream = ps.into_on_message();
                while let Some(msg) = stream.next().await {
                    match parse_event(msg.get_payload_bytes()) {
                        Some(Event::Workers(n)) => {
                            if let Some(f) = fleet.upgrade() {
                                f.set_workers(u64::from(n));
                            }
                        }
                        Some(ev) => {
                            let _ = events.send(ev);
                        }
                        None => tracing::warn!("ignored a malformed fleet event from Redis"),
                    }
                }
                tracing::debug!("the fleet's event subscription ended; reconnecting");
                lost("the connection closed");
            }
            // Not a failure of the budget by itself (leases and heartbeats tell): a Redis that
            // refuses SUBSCRIBE must not flap the worker in and out of safe mode.
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to the fleet's events"),
            Err(_) => tracing::debug!("subscribing to the fleet's events timed out"),
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redacted_url("rediss://user:s3cret@redis.example:6380/2?x=1"),
            "rediss://redis.example:6380/2"
        );
        assert_eq!(
            redacted_url("redis://:pw@127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redacted_url("127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn events_parse_strictly() {
        assert_eq!(
            parse_event(b"pause 2000000 per token"),
            Some(Event::Pause {
                limit: "per token".into(),
                remaining: Duration::from_secs(2)
            })
        );
        assert_eq!(
            parse_event(b"token genesys"),
            Some(Event::Token {
                credential: "genesys".into()
            })
        );
        assert_eq!(parse_event(b"workers 8"), Some(Event::Workers(8)));
        assert_eq!(parse_event(b"pause -5 x"), None);
        assert_eq!(parse_event(b"pause 999999999999999 x"), None);
        assert_eq!(parse_event(b"\xff"), None);
        assert_eq!(parse_event(b"other"), None);
    }
}

#[cfg(test)]
mod redis_tests;

#[cfg(test)]
mod fair_tests;
