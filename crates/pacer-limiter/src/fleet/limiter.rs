//! [`FleetLimiter`]: the `scope: fleet` limits of a plan, shared with every worker of the fleet
//! through Redis; `scope: worker` limits stay in this process ([`LocalLimiter`]).
//!
//! A request's fleet limits form its *class* (the set of fleet limits it matches). Per class a
//! worker holds a *lease*: slots of the fleet's GCRA schedule, each a time at which one request
//! may go, granted by `lua/lease.lua` across all the class's limits at once. A request takes
//! the next slot, waits for its time and goes; a slot not used within the class's *hold* of its
//! time lapses (capacity lost, never excess). The hold is 1% of the limit's window, 50 ms to 1 s
//! ([`lease_hold`]). Since every slot is a conforming time of the fleet's GCRA, the fleet's
//! requests obey the accuracy bound with a spread of `D = spread + hold` ([`FLEET_SPREAD`] for
//! windows up to 5 s).
//!
//! A worker asks for about one hold of its own demand (or the requests already waiting),
//! at most [`LEASE_MAX_SPAN`] of the fleet's schedule, and asks again only when its current
//! lease is nearly spent, so Redis sees about one call per lease.
//!
//! Pauses (Retry-After) are held locally, learned from this worker's responses, from Redis
//! Pub/Sub and from lease replies; nothing polls Redis while paused.
//!
//! An adaptive fleet limit is learned once for the fleet ([`learn_turns`], `lua/learn.lua`):
//! every worker adds what it saw to the limit's counters in Redis every [`LEARN_EVERY`], and
//! the one worker whose turn it is runs the [`Learner`] over the fleet's totals, stores it, and
//! writes the learned rate into the limit's state, which every lease is granted at.
//!
//! When Redis fails the worker runs in safe mode: a local GCRA per limit at `max(own recent rate, rate / workers) / 2`
//! (the sum over the fleet stays below the rate) for at most `safe_mode_max`, then requests
//! fail with [`LimiterError::Unavailable`] until Redis answers again. What was sent in safe
//! mode is charged to the fleet's budget at the first lease after Redis is back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use pacer_plan::spec::LimitScope;
use pacer_plan::{Limit, Pacing};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

use super::scripts::{self, FeedbackReply, LeaseReply};
use super::{Event, Fleet, Mode};
use crate::gcra::{DEFAULT_SPREAD, FleetLimitReport};
use crate::learn::{self, Change, Learner};
use crate::lease::{self, Asking, HasAsking, InClass, Pause};
use crate::{
    Feedback, Grant, LimitReport, Limiter, LimiterError, LocalLimiter, PauseOrigin, RequestMeta,
};

/// A slot not used within its limit's *hold* after its own time lapses. The hold is
/// [`LEASE_HOLD_SHARE`] of the limit's window, at least this (windows up to 5 s)...
pub const LEASE_HOLD: Duration = Duration::from_millis(50);
/// ...and at most this.
pub const LEASE_HOLD_MAX: Duration = Duration::from_secs(1);
/// The hold's share of the window: it costs about this share of the limit's rate (it is part
/// of the bound's `D`) and lets a lease cover that much more of a worker's demand, so Redis
/// sees fewer calls.
pub const LEASE_HOLD_SHARE: f64 = 0.01;
/// The spread `D` of the accuracy bound for fleet limits with windows up to 5 s: the lease
/// hold plus the network and queueing allowance of one process ([`DEFAULT_SPREAD`]).
pub const FLEET_SPREAD: Duration = Duration::from_millis(150);
/// A lease covers about one hold of the worker's own demand, and at most this much of the
/// fleet's schedule (so one busy worker cannot hold the fleet's capacity for long).
pub const LEASE_MAX_SPAN: Duration = Duration::from_millis(200);
/// ...and at most this many tokens.
pub const MAX_LEASE: u32 = 1024;
/// No slot is granted further ahead than this: the queue of reserved slots stays short.
pub const LEASE_MAX_AHEAD: Duration = Duration::from_secs(2);
/// Ask for the next lease when the current one has this little left.
const PREFETCH: Duration = Duration::from_millis(10);
/// While Redis is unavailable a request waits this long for it before failing.
const UNAVAILABLE_WAIT: Duration = Duration::from_secs(1);
/// This worker's spend rate (for its safe share) is measured over ticks of this length.
const SPEND_TICK: Duration = Duration::from_secs(1);
/// How often every process adds what it saw of an adaptive limit to the fleet's counters, and
/// the fleet's learner takes its turn ([`learn`]): a tenth of the shortest stretch
/// ([`learn::MIN_STRETCH`]), so the batches cost the measurement at most a few percent, at one
/// Redis call per process per limit every 100 ms.
const LEARN_EVERY: Duration = Duration::from_millis(100);
/// The learning process keeps its turn this long after its last call: a process that died (or
/// stalled) is replaced by the next caller after at most this, and the learner continues from
/// the state it stored last (the answers of its last 100 ms are lost, nothing more).
const LEARN_TURN: Duration = Duration::from_secs(1);
/// A pause learned locally that Redis already holds (within this) is not sent again.
const PAUSE_SLACK: Duration = Duration::from_millis(5);

/// The lease hold of a fleet limit with this window: 1% of it, 50 ms to 1 s.
pub fn lease_hold(window: Duration) -> Duration {
    window
        .mul_f64(LEASE_HOLD_SHARE)
        .clamp(LEASE_HOLD, LEASE_HOLD_MAX)
}

/// The spread `D` of the accuracy bound for a fleet limit: its own `spread` (or `default`)
/// plus its lease hold.
pub fn fleet_spread(limit: &Limit, default: Duration) -> Duration {
    limit.spread.unwrap_or(default) + lease_hold(limit.window)
}

/// The rate and burst a fleet limit is paced at: the limit's shape
/// ([`pacer_plan::shape::pace`], as in one process) with `D` = [`fleet_spread`].
pub fn fleet_pacing(limit: &Limit, default_spread: Duration) -> Pacing {
    limit.pacing_with_spread(fleet_spread(limit, default_spread))
}

/// The pacing rate of [`fleet_pacing`].
pub fn fleet_pacing_rate(limit: &Limit, default_spread: Duration) -> f64 {
    fleet_pacing(limit, default_spread).rate
}

const _: () = assert!(
    FLEET_SPREAD.as_millis() == DEFAULT_SPREAD.as_millis() + LEASE_HOLD.as_millis(),
    "FLEET_SPREAD = DEFAULT_SPREAD + LEASE_HOLD"
);

/// Tuning of a [`FleetLimiter`].
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Network and queueing allowance of the accuracy bound for limits whose plan sets no
    /// `spread` (default [`DEFAULT_SPREAD`]). [`LEASE_HOLD`] is added to it, or to the plan's
    /// `spread`: `D = spread + LEASE_HOLD` ([`FLEET_SPREAD`] by default).
    pub spread: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            spread: DEFAULT_SPREAD,
        }
    }
}

/// A `scope: fleet` limit as the scripts need it.
#[derive(Debug)]
struct FleetLimit {
    plan_index: usize,
    limit: Limit,
    key: String,
    /// Pacing rate from the accuracy bound (tokens/s), before the adaptive factor.
    ceiling: f64,
    /// The GCRA's burst ([`Pacing::burst`]: a token bucket keeps some for the spread).
    burst: u32,
    window_us: u64,
    /// How late a slot may still be used ([`lease_hold`]).
    hold: Duration,
}

/// What this worker knows of a fleet limit.
#[derive(Debug)]
struct LimitState {
    pause: Pause,
    throttled: u64,
    /// The share of the ceiling paced at and the share measured to pass (0: not measured), as
    /// the fleet's learner last wrote them (fixed limits: 1, 0).
    factor: f64,
    sustained: f64,
    /// Adaptive limits: what this process saw since its last turn ([`LEARN_EVERY`]).
    seen: Seen,
    spent_tick: u64,
    spent_tick_start: Instant,
    /// This worker's recent rate on this limit (tokens/s), for its safe share.
    spent_rate: f64,
    /// Safe mode: a local GCRA, set up once per failure episode (epoch).
    safe_epoch: u64,
    safe_tat: Instant,
    safe_interval: Duration,
    /// Sent in safe mode and not yet charged to the fleet's budget.
    safe_debt: u64,
}

impl LimitState {
    fn new(now: Instant) -> Self {
        Self {
            pause: Pause::default(),
            throttled: 0,
            factor: 1.0,
            sustained: 0.0,
            seen: Seen::default(),
            spent_tick: 0,
            spent_tick_start: now,
            spent_rate: 0.0,
            safe_epoch: 0,
            safe_tat: now,
            safe_interval: Duration::ZERO,
            safe_debt: 0,
        }
    }

    fn roll_spent(&mut self, now: Instant) {
        let el = now - self.spent_tick_start;
        if el >= SPEND_TICK {
            let inst = self.spent_tick as f64 / el.as_secs_f64();
            self.spent_rate = if self.spent_rate == 0.0 {
                inst
            } else {
                0.5 * self.spent_rate + 0.5 * inst
            };
            self.spent_tick = 0;
            self.spent_tick_start = now;
        }
    }
}

/// What one process saw of an adaptive limit between two turns of the fleet's learner.
#[derive(Debug, Default)]
struct Seen {
    accepted: u64,
    refused: u64,
    /// A server's own Retry-After paused the limit (the learner's count is spoiled).
    paused: bool,
    /// The rate a server stated last (IETF `RateLimit-Policy`).
    stated: Option<f64>,
}

/// The fleet's learner of one adaptive limit, while this process is the one that learns.
struct Learning {
    /// The version of the stored learner this one continues.
    version: u64,
    learner: Learner,
    /// What to store at the next turn (the learner has changed since the last).
    pending: Option<Decision>,
}

/// What the learner decided, for Redis to store and apply.
struct Decision {
    encoded: String,
    factor: f64,
    sustained: f64,
    pause: Duration,
}

/// One class's lease.
struct Class {
    /// Fleet-limit indices, ascending.
    limits: Vec<usize>,
    /// The shortest hold of its limits: how late a slot may still be used, and how much of
    /// this worker's demand a lease covers.
    hold: Duration,
    st: Mutex<ClassState>,
    changed: Notify,
}

struct ClassState {
    /// Slot times, ascending, with the mode epoch they were granted in.
    slots: VecDeque<(Instant, u64)>,
    /// The last slot granted (a lease is still running until then).
    reserved_until: Option<(Instant, u64)>,
    fetching: bool,
    /// Redis said there is no room before this.
    retry_at: Option<Instant>,
    /// The requests asking, and their demand.
    asking: Asking,
}

impl HasAsking for ClassState {
    fn asking(&mut self) -> &mut Asking {
        &mut self.asking
    }
}

/// Clears `fetching` even when the fetching request is dropped mid-call.
struct Fetching<'a>(&'a Class);

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.0.st.lock().fetching = false;
        self.0.changed.notify_waiters();
    }
}

enum Step<'a> {
    Slot(Instant),
    Wait(Option<Instant>, tokio::sync::futures::Notified<'a>),
    Fetch(u32),
}

struct Inner {
    fleet: Arc<Fleet>,
    limits: Vec<FleetLimit>,
    state: Mutex<Vec<LimitState>>,
    classes: Mutex<HashMap<u64, Arc<Class>>>,
    /// Notified whenever a pause is set or extended.
    pause_changed: Notify,
    /// How long a state key outlives its last slot (ms).
    keep_ms: u64,
    /// Slots granted and the last 429, noted in Redis for the budget's status.
    notes: super::notes::Notes,
    /// What the server's rate-limit headers say of each limit ([`super::server`]).
    server: super::server::ServerViews,
}

/// The limiter of a fleet worker: `scope: fleet` limits through Redis, `scope: worker` limits
/// in this process.
pub struct FleetLimiter {
    inner: Arc<Inner>,
    plan_limits: Vec<Limit>,
    /// `scope: worker` limits (in their own index space) and their plan indices.
    local: Option<(LocalLimiter, Vec<usize>)>,
    listener: JoinHandle<()>,
    /// The turns at the fleet's learner, when a fleet limit is adaptive.
    learning: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FleetLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLimiter")
            .field("fleet", &self.inner.fleet)
            .field("fleet_limits", &self.inner.limits.len())
            .finish_non_exhaustive()
    }
}

impl Drop for FleetLimiter {
    fn drop(&mut self) {
        self.listener.abort();
        if let Some(t) = &self.learning {
            t.abort();
        }
    }
}

impl FleetLimiter {
    /// The plan's limits: `scope: fleet` ones go through `fleet`, the others stay local. At most
    /// 64 limits (as [`Grant::limits`]).
    pub fn new(fleet: Arc<Fleet>, limits: &[Limit], opts: FleetOptions) -> Self {
        let now = Instant::now();
        let mut fleet_limits = Vec::new();
        let mut local_limits = Vec::new();
        let mut local_index = Vec::new();
        for (i, l) in limits.iter().enumerate().take(64) {
            match l.scope {
                LimitScope::Fleet => {
                    let key = fleet.keys().limit(&l.name);
                    fleet.track_key(key.clone());
                    fleet.track_key(fleet.keys().server(&l.name));
                    let pacing = fleet_pacing(l, opts.spread);
                    fleet_limits.push(FleetLimit {
                        plan_index: i,
                        ceiling: pacing.rate,
                        burst: pacing.burst,
                        window_us: l.window.as_micros().clamp(1, u128::from(u64::MAX)) as u64,
                        hold: lease_hold(l.window),
                        limit: l.clone(),
                        key,
                    });
                }
                LimitScope::Worker => {
                    local_limits.push(l.clone());
                    local_index.push(i);
                }
            }
        }
        let keep_ms = fleet_limits
            .iter()
            .map(|l| (l.window_us / 1000).saturating_mul(2))
            .max()
            .unwrap_or(0)
            .max(60_000);
        // A budget's state outlives its tests by the budget's idle time instead.
        let keep_ms = fleet.budget_keep_ms().unwrap_or(keep_ms);
        let state = fleet_limits.iter().map(|_| LimitState::new(now)).collect();
        let server =
            super::server::ServerViews::new(fleet_limits.iter().map(|l| (&l.limit, l.ceiling)));
        let inner = Arc::new(Inner {
            fleet: fleet.clone(),
            limits: fleet_limits,
            state: Mutex::new(state),
            classes: Mutex::new(HashMap::new()),
            pause_changed: Notify::new(),
            keep_ms,
            notes: super::notes::Notes::default(),
            server,
        });
        let listener = tokio::spawn(listen(Arc::downgrade(&inner), fleet.subscribe()));
        let learning = (inner.adaptive_bits() != 0).then(|| {
            for l in inner.limits.iter().filter(|l| l.limit.adaptive) {
                fleet.track_key(fleet.keys().learner(&l.limit.name));
            }
            tokio::spawn(learn_turns(Arc::downgrade(&inner)))
        });
        Self {
            learning,
            inner,
            plan_limits: limits.to_vec(),
            local: (!local_limits.is_empty())
                .then(|| (LocalLimiter::new(&local_limits), local_index)),
            listener,
        }
    }

    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.inner.fleet
    }

    /// Fleet-limit bits (in `inner.limits` order) and whether any local limit matches.
    fn matched(&self, req: &RequestMeta<'_>) -> (u64, bool) {
        let mut bits = 0u64;
        for (i, l) in self.inner.limits.iter().enumerate() {
            if l.limit.matches(req.method, req.path, req.request) {
                bits |= 1 << i;
            }
        }
        let local = self.local.as_ref().is_some_and(|(_, idx)| {
            idx.iter()
                .any(|&i| self.plan_limits[i].matches(req.method, req.path, req.request))
        });
        (bits, local)
    }

    fn plan_bits(&self, fleet_bits: u64) -> u64 {
        self.inner
            .limits
            .iter()
            .enumerate()
            .filter(|(i, _)| fleet_bits & (1 << i) != 0)
            .fold(0, |acc, (_, l)| acc | (1 << l.plan_index))
    }
}

/// A 429 or a 503: the server refused the request (for a limit, not for a fault).
fn is_refusal(status: u16) -> bool {
    status == 429 || status == 503
}

/// Every [`LEARN_EVERY`], this process's turn at each adaptive limit's learner: what it saw
/// goes into the fleet's counters and, when it is the learning process, the learner runs over
/// the fleet's totals. While Redis fails nothing is sent (the counts wait for it); once the
/// worker leaves the fleet, nothing more.
async fn learn_turns(inner: Weak<Inner>) {
    let adaptive: Vec<usize> = match inner.upgrade() {
        Some(i) => (0..i.limits.len())
            .filter(|&j| i.limits[j].limit.adaptive)
            .collect(),
        None => return,
    };
    let mut learning: Vec<Option<Learning>> = adaptive.iter().map(|_| None).collect();
    let mut tick = tokio::time::interval(LEARN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.fleet.is_leaving() {
            return;
        }
        if inner.fleet.mode().0 != Mode::Healthy {
            continue;
        }
        for (slot, &i) in learning.iter_mut().zip(&adaptive) {
            // A change (a cut, a stated rate) is stored and applied at once, not a turn later.
            if inner.learn_turn(i, slot).await {
                inner.learn_turn(i, slot).await;
            }
        }
    }
}

impl Inner {
    /// The fleet limits (as bits) that are adaptive.
    fn adaptive_bits(&self) -> u64 {
        self.limits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.limit.adaptive)
            .fold(0, |acc, (i, _)| acc | (1 << i))
    }

    /// One turn at limit `i`'s learner (`lua/learn.lua`); `slot` holds the learner while this
    /// process is the learning one. True when the learner changed the rate with a pause or a
    /// stated rate (the caller takes another turn at once, to store and apply it).
    async fn learn_turn(&self, i: usize, slot: &mut Option<Learning>) -> bool {
        let l = &self.limits[i];
        let seen = std::mem::take(&mut self.state.lock()[i].seen);
        let (version, pending) = match slot.as_mut() {
            Some(x) => (i64::try_from(x.version).unwrap_or(-1), x.pending.take()),
            None => (-1, None),
        };
        let mut inv = scripts::LEARN.key(self.fleet.keys().learner(&l.limit.name));
        inv.key(&l.key)
            .arg(self.fleet.worker_id())
            .arg(LEARN_TURN.as_millis() as u64)
            .arg(seen.accepted)
            .arg(seen.refused)
            .arg(u8::from(seen.paused))
            .arg(seen.stated.map_or_else(String::new, |r| format!("{r:.6}")))
            .arg(version)
            .arg(pending.as_ref().map_or("", |p| p.encoded.as_str()))
            .arg(format!("{:.6}", pending.as_ref().map_or(0.0, |p| p.factor)))
            .arg(format!(
                "{:.6}",
                pending.as_ref().map_or(0.0, |p| p.sustained)
            ))
            .arg(pending.as_ref().map_or(0, |p| p.pause.as_micros() as u64))
            .arg(self.fleet.keys().events())
            .arg(&l.limit.name)
            .arg(self.keep_ms)
            .arg(format!("{:.6}", l.ceiling))
            .arg(l.burst.max(1));
        let reply = self
            .fleet
            .script("the learner's turn", inv)
            .await
            .and_then(|v| scripts::parse_learn(&v));
        let r = match reply {
            Ok(r) => r,
            Err(e) => {
                // What was seen is not sent again: a call that timed out may still have run in
                // Redis, and counting an answer twice is worse than losing 100 ms of them. The
                // decision is offered again (stored only if the version still matches).
                if let Some(x) = slot.as_mut() {
                    x.pending = x.pending.take().or(pending);
                }
                if matches!(e, super::FleetError::Reply { .. }) {
                    self.fleet.record_failure(&e);
                }
                tracing::debug!(error = %e, limit = %l.limit.name, "the learner's turn failed");
                return false;
            }
        };
        if !r.learner {
            // Another process learns; what this one held is stale from now on.
            *slot = None;
            return false;
        }
        // The fleet's one clock: Redis'.
        let now = r.now_us.saturating_mul(1000);
        let mut learning = match slot.take() {
            Some(mut x) if r.in_step => {
                x.version = r.version;
                x
            }
            _ => {
                let stored = r.stored.as_deref().and_then(|t| match Learner::decode(t) {
                    Ok(found) if (found.ceiling() - l.ceiling).abs() <= 1e-6 * l.ceiling => {
                        Some(found)
                    }
                    Ok(_) => {
                        tracing::info!(limit = %l.limit.name, "the stored learner has another ceiling: learning anew");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(limit = %l.limit.name, error = %e, "the stored learner is unreadable: learning anew");
                        None
                    }
                });
                tracing::debug!(limit = %l.limit.name, resumed = stored.is_some(), "this process learns for the fleet");
                Learning {
                    version: r.version,
                    learner: stored.unwrap_or_else(|| Learner::new(l.ceiling, l.limit.window, now)),
                    pending: None,
                }
            }
        };
        let learner = &mut learning.learner;
        let mut changes = Vec::new();
        if let Some(rate) = r.stated {
            changes.extend(learner.stated(rate, now));
        }
        if r.paused {
            learner.paused();
        }
        learner.observe(r.accepted, r.refused, now);
        changes.extend(learner.tick(now));
        let mut pause = Duration::ZERO;
        for c in &changes {
            match *c {
                Change::Cut {
                    rate,
                    accepted,
                    pause: p,
                } => {
                    tracing::debug!(limit = %l.limit.name, rate, accepted, ?p, "adaptive (fleet): refused, rate cut");
                    pause = pause.max(p);
                }
                Change::Stated { rate, pause: p } => {
                    tracing::debug!(limit = %l.limit.name, rate, "adaptive (fleet): the server stated its rate");
                    pause = pause.max(p);
                }
                Change::Probe { rate } => {
                    tracing::debug!(limit = %l.limit.name, rate, "adaptive (fleet): probing upward");
                }
            }
        }
        let factor = (learner.rate() / l.ceiling).clamp(learn::MIN_SHARE, 1.0);
        let sustained = learner
            .sustained()
            .map_or(0.0, |s| (s / l.ceiling).clamp(0.0, 1.0));
        {
            // This process paces at it at once; the others from their next lease.
            let mut st = self.state.lock();
            st[i].factor = factor;
            st[i].sustained = sustained;
        }
        learning.pending = Some(Decision {
            encoded: learning.learner.encode(),
            factor,
            sustained,
            pause,
        });
        *slot = Some(learning);
        changes
            .iter()
            .any(|c| matches!(c, Change::Cut { .. } | Change::Stated { .. }))
    }

    fn class(&self, bits: u64) -> Arc<Class> {
        self.classes
            .lock()
            .entry(bits)
            .or_insert_with(|| {
                let limits: Vec<usize> = (0..self.limits.len())
                    .filter(|i| bits & (1 << i) != 0)
                    .collect();
                let hold = limits
                    .iter()
                    .map(|&i| self.limits[i].hold)
                    .min()
                    .unwrap_or(LEASE_HOLD);
                Arc::new(Class {
                    limits,
                    hold,
                    st: Mutex::new(ClassState {
                        slots: VecDeque::new(),
                        reserved_until: None,
                        fetching: false,
                        retry_at: None,
                        asking: Asking::new(Instant::now()),
                    }),
                    changed: Notify::new(),
                })
            })
            .clone()
    }

    fn pause_end(&self, limits: &[usize], now: Instant) -> Option<Instant> {
        let st = self.state.lock();
        limits
            .iter()
            .filter_map(|&i| st[i].pause.until)
            .filter(|p| *p > now)
            .max()
    }

    fn pause(&self, limit: usize, until: Instant) {
        let now = Instant::now();
        if self.state.lock()[limit].pause.extend(until, now) {
            self.pause_changed.notify_waiters();
        }
    }

    fn spent(&self, limits: &[usize], now: Instant) {
        self.server.granted(limits, now);
        let mut st = self.state.lock();
        for &i in limits {
            st[i].roll_spent(now);
            st[i].spent_tick += 1;
        }
    }

    /// The current rate of a fleet limit (tokens/s), with the shared adaptive factor.
    fn rate(&self, i: usize, st: &[LimitState]) -> f64 {
        let l = &self.limits[i];
        if l.limit.adaptive {
            l.ceiling * st[i].factor
        } else {
            l.ceiling
        }
    }

    /// Safe mode: reserve an instant at which every limit of the class allows the request at
    /// this worker's safe share.
    fn safe_reserve(&self, limits: &[usize], epoch: u64, now: Instant) -> Instant {
        let workers = f64::from(self.fleet.workers());
        let mut st = self.state.lock();
        let mut at = now;
        for &i in limits {
            if st[i].safe_epoch != epoch {
                st[i].roll_spent(now);
                let share = st[i].spent_rate.max(self.rate(i, &st) / workers) / 2.0;
                let s = &mut st[i];
                s.safe_interval = Duration::from_secs_f64(1.0 / share.max(1e-3));
                // No token at once: the fleet may have spent this window's burst already.
                s.safe_tat = now + s.safe_interval;
                s.safe_epoch = epoch;
                tracing::info!(
                    limit = %self.limits[i].limit.name,
                    safe_rate = share,
                    workers,
                    "safe mode: pacing this limit locally"
                );
            }
            at = at.max(st[i].safe_tat);
        }
        for &i in limits {
            let s = &mut st[i];
            s.safe_tat = s.safe_tat.max(at) + s.safe_interval;
            s.safe_debt += 1;
        }
        at
    }

    /// Safe-mode tokens not yet charged to the fleet, at most one window's worth per limit.
    fn take_debt(&self, limits: &[usize]) -> Vec<u64> {
        let mut st = self.state.lock();
        limits
            .iter()
            .map(|&i| {
                let cap = (self.rate(i, &st) * self.limits[i].limit.window.as_secs_f64()).ceil();
                let d = (st[i].safe_debt as f64).min(cap) as u64;
                st[i].safe_debt = 0;
                d
            })
            .collect()
    }

    fn return_debt(&self, limits: &[usize], debt: &[u64]) {
        let mut st = self.state.lock();
        for (&i, d) in limits.iter().zip(debt) {
            st[i].safe_debt += d;
        }
    }

    /// What to do next for a request of `class` (under the class lock).
    fn next_step<'a>(&self, class: &'a Class, now: Instant, epoch: u64) -> Step<'a> {
        let mut st = class.st.lock();
        while let Some(&(at, e)) = st.slots.front() {
            if e != epoch || at + class.hold < now {
                st.slots.pop_front();
            } else {
                break;
            }
        }
        if let Some((at, _)) = st.slots.pop_front() {
            return Step::Slot(at);
        }
        let notified = class.changed.notified();
        if st.fetching {
            return Step::Wait(None, notified);
        }
        if let Some(r) = st.retry_at.filter(|r| *r > now) {
            return Step::Wait(Some(r), notified);
        }
        if let Some((until, e)) = st.reserved_until
            && e == epoch
            && until > now + PREFETCH
        {
            return Step::Wait(Some(until - PREFETCH), notified);
        }
        st.fetching = true;
        let demand = st.asking.demand(now);
        let need = st.asking.need();
        drop(st);
        let slowest = {
            let ls = self.state.lock();
            class
                .limits
                .iter()
                .map(|&i| self.rate(i, &ls))
                .fold(f64::INFINITY, f64::min)
        };
        Step::Fetch(lease::want(demand, class.hold, need, slowest))
    }

    /// Ask Redis for a lease of `want` tokens for `class`.
    async fn fetch(&self, class: &Class, want: u32, epoch: u64) {
        let _fetching = Fetching(class);
        let debt = self.take_debt(&class.limits);
        let mut inv = scripts::LEASE.prepare_invoke();
        for &i in &class.limits {
            inv.key(&self.limits[i].key);
        }
        inv.arg(want)
            .arg(LEASE_MAX_AHEAD.as_micros() as u64)
            .arg(self.keep_ms);
        let now = Instant::now();
        for (&i, d) in class.limits.iter().zip(&debt) {
            let l = &self.limits[i];
            // The server's headers may steer the rate (the lease's rate is an argument).
            inv.arg(format!("{:.6}", self.server.lease_rate(i, l.ceiling, now)))
                .arg(l.burst.max(1))
                .arg(l.window_us)
                .arg(u8::from(l.limit.adaptive))
                .arg(*d);
        }
        // On a budget the lease keeps to this test's fair share (`fair`): the process says
        // whether its test wants more than it gets (`fair::hungry`).
        if self.fleet.keys().budget().is_some() {
            let hungry = {
                let st = class.st.lock();
                super::fair::hungry(st.asking.need(), want, st.asking.demand(Instant::now()))
            };
            super::fair::lease_tail(
                &mut inv,
                self.fleet.keys(),
                class
                    .limits
                    .iter()
                    .map(|&i| self.limits[i].limit.name.as_str()),
                self.fleet.weight(),
                hungry,
            );
        }
        let reply = self
            .fleet
            .script("a lease", inv)
            .await
            .and_then(|v| scripts::parse_lease(&v, class.limits.len(), want, LEASE_MAX_AHEAD));
        let received = Instant::now();
        match reply {
            Ok(r) => {
                tracing::debug!(
                    want,
                    granted = r.offsets.len(),
                    wait_ms = r.wait.as_secs_f64() * 1e3,
                    ahead_ms = r.offsets.last().map(|o| o.as_secs_f64() * 1e3),
                    "lease"
                );
                self.notes.granted(
                    &self.fleet,
                    self.keep_ms,
                    class
                        .limits
                        .iter()
                        .map(|&i| self.limits[i].limit.name.as_str()),
                    r.offsets.len() as u64,
                );
                for (&i, &before) in class.limits.iter().zip(&r.before) {
                    self.server.leased(i, before, &r.offsets, received);
                }
                self.apply_lease(class, &r, received, epoch)
            }
            Err(e) => {
                self.return_debt(&class.limits, &debt);
                if matches!(e, super::FleetError::Reply { .. }) {
                    self.fleet.record_failure(&e);
                }
                tracing::debug!(error = %e, "lease failed");
            }
        }
    }

    /// Read every fleet limit's pause (a lease of 0 tokens) and hold them locally.
    async fn sync_pauses(&self) {
        if self.limits.is_empty() {
            return;
        }
        let all: Vec<usize> = (0..self.limits.len()).collect();
        let mut inv = scripts::LEASE.prepare_invoke();
        for l in &self.limits {
            inv.key(&l.key);
        }
        inv.arg(0u32)
            .arg(LEASE_MAX_AHEAD.as_micros() as u64)
            .arg(self.keep_ms);
        for l in &self.limits {
            inv.arg(format!("{:.6}", l.ceiling))
                .arg(l.burst.max(1))
                .arg(l.window_us)
                .arg(u8::from(l.limit.adaptive))
                .arg(0u64);
        }
        let reply = self
            .fleet
            .script("reading the pauses", inv)
            .await
            .and_then(|v| scripts::parse_lease(&v, all.len(), 0, LEASE_MAX_AHEAD));
        let received = Instant::now();
        if let Ok(r) = reply {
            for (j, &i) in all.iter().enumerate() {
                if !r.pauses[j].is_zero() {
                    self.pause(i, received + r.pauses[j]);
                }
            }
        }
    }

    fn apply_lease(&self, class: &Class, r: &LeaseReply, received: Instant, epoch: u64) {
        {
            let mut st = self.state.lock();
            for (j, &i) in class.limits.iter().enumerate() {
                st[i].factor = r.factors[j].max(learn::MIN_SHARE);
                st[i].sustained = r.sustained[j];
            }
        }
        for (j, &i) in class.limits.iter().enumerate() {
            if !r.pauses[j].is_zero() {
                self.pause(i, received + r.pauses[j]);
            }
        }
        let mut st = class.st.lock();
        // Slots are mapped from the moment the reply arrived: never earlier than Redis meant.
        for o in &r.offsets {
            st.slots.push_back((received + *o, epoch));
        }
        if let Some(last) = r.offsets.last() {
            st.reserved_until = Some((received + *last, epoch));
            st.retry_at = None;
        } else if r.pauses.iter().all(|p| p.is_zero()) {
            st.retry_at = Some(received + r.wait.max(Duration::from_millis(1)));
        }
    }

    /// Take one fleet token of `bits`. Returns (time waiting for the limits, time paused).
    async fn acquire(&self, bits: u64) -> Result<(Duration, Duration), LimiterError> {
        let class = self.class(bits);
        let started = Instant::now();
        let mut paused = Duration::ZERO;
        let mut me = InClass::enter(&class.st, started);
        let done = |paused: Duration| Ok((started.elapsed().saturating_sub(paused), paused));
        'outer: loop {
            me.hold(false);
            let now = Instant::now();
            // 1. A Retry-After pause: wait here, without asking Redis.
            let pause_changed = self.pause_changed.notified();
            if let Some(end) = self.pause_end(&class.limits, now) {
                tokio::select! {
                    _ = sleep_until(end) => {}
                    _ = pause_changed => {}
                }
                paused += now.elapsed();
                continue;
            }
            drop(pause_changed);
            // 2. Redis' health.
            let mode_changed = self.fleet.mode_changed();
            let (mode, epoch) = self.fleet.mode();
            match mode {
                Mode::Unavailable(reason) => {
                    tokio::select! {
                        _ = sleep(UNAVAILABLE_WAIT) => return Err(LimiterError::Unavailable(reason)),
                        _ = mode_changed => continue,
                    }
                }
                Mode::Safe => {
                    let at = self.safe_reserve(&class.limits, epoch, now);
                    // Safe mode is bounded: a reservation past its end is given up.
                    if let Some(end) = self.fleet.safe_mode_ends()
                        && at >= end
                    {
                        tokio::select! {
                            _ = sleep_until(end) => {}
                            _ = mode_changed => {}
                        }
                        continue;
                    }
                    drop(mode_changed);
                    if !self.wait_for_slot(&class, at, epoch).await {
                        continue;
                    }
                    self.spent(&class.limits, Instant::now());
                    return done(paused);
                }
                Mode::Healthy => drop(mode_changed),
            }
            // 3. A slot of this worker's lease.
            match self.next_step(&class, now, epoch) {
                Step::Slot(at) => {
                    me.hold(true);
                    if !self.wait_for_slot(&class, at, epoch).await {
                        continue 'outer;
                    }
                    self.spent(&class.limits, Instant::now());
                    return done(paused);
                }
                Step::Wait(until, notified) => {
                    // `fetching` waits are bounded by the response timeout of the fetch.
                    let until = until.unwrap_or(now + Duration::from_secs(1));
                    let mode_changed = self.fleet.mode_changed();
                    let pause_changed = self.pause_changed.notified();
                    tokio::select! {
                        _ = sleep_until(until) => {}
                        _ = notified => {}
                        _ = mode_changed => {}
                        _ = pause_changed => {}
                    }
                }
                Step::Fetch(want) => self.fetch(&class, want, epoch).await,
            }
        }
    }

    /// Sleep until a slot's time. False when the slot was given up: the scope got paused,
    /// Redis' health changed meanwhile, or this task woke up later than the slot's hold (an
    /// overloaded process must not send late slots in a bunch: capacity lost, never excess).
    async fn wait_for_slot(&self, class: &Class, at: Instant, epoch: u64) -> bool {
        loop {
            let pause_changed = self.pause_changed.notified();
            let mode_changed = self.fleet.mode_changed();
            let now = Instant::now();
            if self.pause_end(&class.limits, now).is_some()
                || self.fleet.mode().1 != epoch
                || now > at + class.hold
            {
                return false;
            }
            if now >= at {
                return true;
            }
            tokio::select! {
                _ = sleep_until(at) => {}
                _ = pause_changed => {}
                _ = mode_changed => {}
            }
        }
    }

    fn feedback(self: &Arc<Self>, bits: u64, fb: &Feedback) {
        let limits: Vec<usize> = (0..self.limits.len())
            .filter(|i| bits & (1 << i) != 0)
            .collect();
        let now = Instant::now();
        let refused = is_refusal(fb.status);
        let mut tell_redis = false;
        let mut extended = false;
        if let Some(server) = &fb.server {
            for &i in &limits {
                if let Some(st) = self.server.observe(i, server, fb.sent_ago, now) {
                    super::server::note(&self.fleet, &self.limits[i].limit.name, st, self.keep_ms);
                }
            }
        }
        {
            let mut st = self.state.lock();
            for &i in &limits {
                let s = &mut st[i];
                let adaptive = self.limits[i].limit.adaptive;
                if fb.status == 429 {
                    s.throttled += 1;
                }
                if adaptive {
                    // For the fleet's learner, at this process's next turn.
                    if refused {
                        s.seen.refused += 1;
                    } else {
                        s.seen.accepted += 1;
                    }
                    if let Some(rate) = fb.stated_rate {
                        s.seen.stated = Some(rate);
                    }
                }
                if !refused {
                    continue;
                }
                // An adaptive limit pauses (briefly) when the learner cuts its rate: the plan's
                // blunt default would stop the fleet for seconds on a refusal it acts on.
                if adaptive && fb.pause_origin == PauseOrigin::PlanDefault {
                    continue;
                }
                if let Some(ra) = fb.retry_after.filter(|ra| !ra.is_zero()) {
                    if adaptive {
                        s.seen.paused = true;
                    }
                    let until = now + ra;
                    // Redis already holds this pause (we learned it from there): do not resend.
                    if s.pause.until.is_none_or(|p| p + PAUSE_SLACK < until) {
                        tell_redis = true;
                    }
                    extended |= s.pause.extend(until, now);
                }
            }
        }
        if extended {
            self.pause_changed.notify_waiters();
        }
        if fb.status == 429 && !limits.is_empty() {
            self.notes.throttled(
                &self.fleet,
                self.keep_ms,
                limits
                    .iter()
                    .map(|&i| self.limits[i].limit.name.clone())
                    .collect(),
                fb.retry_after,
                fb.server.and_then(|s| s.limit),
            );
        }
        // Tried even in safe mode: Redis may be slow rather than gone, and the other workers
        // can only learn the pause from it (the call runs on its own task, bounded).
        if !tell_redis {
            return;
        }
        let inner = self.clone();
        let fb = *fb;
        tokio::spawn(async move { inner.send_feedback(limits, fb).await });
    }

    async fn send_feedback(&self, limits: Vec<usize>, fb: Feedback) {
        let mut inv = scripts::FEEDBACK.prepare_invoke();
        for &i in &limits {
            inv.key(&self.limits[i].key);
        }
        inv.arg(self.fleet.keys().events())
            .arg(fb.retry_after.map_or(0, |d| d.as_micros() as u64))
            .arg(self.keep_ms);
        for &i in &limits {
            let l = &self.limits[i];
            inv.arg(&l.limit.name)
                .arg(format!("{:.6}", l.ceiling))
                .arg(l.burst.max(1))
                .arg(u8::from(l.limit.adaptive));
        }
        let reply: Result<FeedbackReply, _> = self
            .fleet
            .script("the feedback script", inv)
            .await
            .and_then(|v| scripts::parse_feedback(&v, limits.len()));
        let received = Instant::now();
        match reply {
            Ok(r) => {
                for (j, &i) in limits.iter().enumerate() {
                    if !r.pauses[j].is_zero() {
                        self.pause(i, received + r.pauses[j]);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "feedback to the fleet failed"),
        }
    }

    fn report(&self, i: usize) -> LimitReport {
        let l = &self.limits[i];
        let st = self.state.lock();
        let s = &st[i];
        let declared = l.limit.limit.as_per_sec();
        let stats = self.fleet.stats();
        LimitReport {
            name: l.limit.name.clone(),
            declared: l.limit.limit.to_string(),
            pacing_rate: l.ceiling,
            margin: if declared > 0.0 {
                1.0 - l.ceiling / declared
            } else {
                0.0
            },
            burst: l.limit.burst,
            adaptive: l.limit.adaptive,
            current_rate: self.rate(i, &st),
            sustainable_rate: l
                .limit
                .adaptive
                .then_some(l.ceiling * s.sustained)
                .filter(|r| *r > 0.0),
            pauses: s.pause.pauses,
            paused: s.pause.paused(Instant::now()),
            fleet: Some(FleetLimitReport {
                workers: stats.workers,
                redis_calls: stats.redis_calls,
                safe_mode: stats.safe_mode,
                unavailable: stats.unavailable,
                unavailable_reason: stats.unavailable_reason,
            }),
            server: self.server.state(i).filter(|h| h.remaining.is_some()),
        }
    }
}

/// Pauses other workers announced.
async fn listen(inner: Weak<Inner>, mut events: tokio::sync::broadcast::Receiver<Event>) {
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        match ev {
            Event::Pause { limit, remaining } => {
                if let Some(i) = inner.limits.iter().position(|l| l.limit.name == limit) {
                    tracing::debug!(%limit, ?remaining, "the fleet paused a limit");
                    inner.pause(i, Instant::now() + remaining);
                }
            }
            // Pauses announced while we were not listening: ask Redis (slots already leased
            // would otherwise be spent inside such a pause).
            Event::Subscribed => inner.sync_pauses().await,
            _ => {}
        }
    }
}

#[async_trait]
impl Limiter for FleetLimiter {
    async fn acquire(&self, req: &RequestMeta<'_>) -> Result<Grant, LimiterError> {
        let (bits, local) = self.matched(req);
        let mut grant = Grant::default();
        // Local (worker) limits first: a fleet slot must not age while we wait on them.
        if local && let Some((lim, idx)) = &self.local {
            let g = lim.acquire(req).await?;
            grant.waited += g.waited;
            grant.paused += g.paused;
            for (j, &plan) in idx.iter().enumerate() {
                if g.limits & (1 << j) != 0 {
                    grant.limits |= 1 << plan;
                }
            }
        }
        if bits != 0 {
            let (waited, paused) = self.inner.acquire(bits).await?;
            grant.waited += waited;
            grant.paused += paused;
            grant.limits |= self.plan_bits(bits);
        }
        Ok(grant)
    }

    fn feedback(&self, req: &RequestMeta<'_>, fb: &Feedback) {
        let (bits, local) = self.matched(req);
        // Every answer teaches an adaptive limit (a worker's own, or the fleet's learner);
        // a declared limit reacts to refusals and to the server's rate-limit headers.
        if local && let Some((lim, _)) = &self.local {
            lim.feedback(req, fb);
        }
        if bits != 0
            && (is_refusal(fb.status)
                || fb.server.is_some()
                || bits & self.inner.adaptive_bits() != 0)
        {
            self.inner.feedback(bits, fb);
        }
    }

    fn report(&self) -> Vec<LimitReport> {
        let local = self.local.as_ref().map(|(lim, idx)| (lim.report(), idx));
        (0..self.plan_limits.len().min(64))
            .filter_map(|p| {
                if let Some(i) = self.inner.limits.iter().position(|l| l.plan_index == p) {
                    return Some(self.inner.report(i));
                }
                let (reports, idx) = local.as_ref()?;
                let j = idx.iter().position(|&x| x == p)?;
                reports.get(j).cloned()
            })
            .collect()
    }
}
