//! The fleet's budget and tokens served by its controller, for fleets without Redis
//! (docs/distributed.md, "Tokens and limits without Redis"): the worker's side.
//!
//! - [`ServedLimiter`]: a worker's [`Limiter`]. Its `scope: fleet` limits are one GCRA at the
//!   controller ([`LocalLimiter::reserve`]); the worker takes slots of it in leases as the
//!   Redis fleet limiter does, sized by the same rule (`lease::want`: per class of limits,
//!   about one hold of its own demand or the requests waiting, at most
//!   [`crate::fleet::LEASE_MAX_SPAN`] of the schedule; a slot unused within its hold lapses,
//!   capacity lost and never excess), so an idle worker takes nothing and the busy ones use
//!   the whole limit. A 429's pause goes to the controller, which pauses the
//!   limit for every worker. `scope: worker` limits stay in this process.
//! - [`ServedTokens`]: a worker's [`TokenSource`] for the credentials the controller fetches:
//!   the token comes over the session, a 401 asks the controller for a new one (one refresh
//!   for the fleet), and refreshes are pushed. Other credentials go to the process's own
//!   source.
//! - [`TokenFetcher`]: what the controller fetches tokens with (the engine's OAuth client).
//!
//! - [`ServedBudget`]: the controller's side of the served limits: the one GCRA, steered by
//!   what the workers heard of the server's rate-limit headers (each lease request carries the
//!   newest answer's remaining, reset and stated limit per limit, [`Heard`]) through the same
//!   [`crate::headroom`] logic a Redis fleet uses: the controller knows every slot it granted,
//!   so others' traffic is what the server counted beyond the fleet's slots, and the lease
//!   rate of an aligned fixed window leaves others' rate and the reserve.
//!
//! Neither knows gRPC: the worker's session implements [`LeaseLink`] and [`TokenLink`] and
//! delivers the controller's answers through [`ServedLimiter::granted`],
//! [`ServedLimiter::paused`] and [`ServedTokens::delivered`].
//!
//! When the controller is unreachable (the session is being re-established): a request with
//! no slot waits up to [`UNAVAILABLE_WAIT`] and then fails with
//! [`LimiterError::Unavailable`] (never sent unpaced); a worker keeps using the token it has
//! until it expires, and past that a request waits up to [`TOKEN_WAIT`] for a new one and
//! then fails with a token error (never sent without it).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pacer_plan::Limit;
use pacer_plan::spec::LimitScope;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};

use crate::fleet::server::ServerViews;
use crate::fleet::{fleet_pacing, lease_hold};
use crate::gcra::DEFAULT_SPREAD;
use crate::headroom::{HeadroomState, ServerReport};
use crate::lease::{self, Asking, HasAsking, InClass, Pause};
use crate::{
    Feedback, Grant, LimitReport, Limiter, LimiterError, LocalLimiter, RequestMeta, Token,
    TokenError, TokenSource,
};

/// A request with no slot while no lease can be asked for (no session) waits this long for
/// the controller before it fails.
pub const UNAVAILABLE_WAIT: Duration = Duration::from_secs(1);
/// A lease request unanswered for this long is given up and asked again (the session broke
/// meanwhile, or the answer was lost with it). The controller answers in well under a
/// millisecond on a LAN.
pub const LEASE_ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// How long a request waits for a served token before it fails: the controller's fetch with
/// its retries of the token endpoint's 429s (a few seconds), or a reconnect.
pub const TOKEN_WAIT: Duration = Duration::from_secs(30);
/// A worker asks again for a token it is still waiting for after this long (its request may
/// have been lost with a broken session).
const TOKEN_ASK_AGAIN: Duration = Duration::from_secs(1);
/// The longest a served token is believed to live, whatever the controller says: the
/// engine's own cap on a token endpoint's `expires_in` (30 days).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// The worker's way to the controller for leases. Each returns false when there is no
/// session right now (nothing was sent).
pub trait LeaseLink: Send + Sync {
    /// Ask for up to `want` slots of every limit in `limits` (plan bit set), answered with
    /// [`ServedLimiter::granted`] under the same `id`; `heard`: what the server's headers said
    /// since the last request (for the controller's [`ServedBudget::heard`]).
    fn request_lease(&self, id: u64, limits: u64, want: u32, heard: &[Heard]) -> bool;
    /// A 429/503 asked to pause these limits for `pause`: pause them for the fleet.
    fn throttled(&self, limits: u64, pause: Duration) -> bool;
}

/// The worker's way to the controller for tokens.
pub trait TokenLink: Send + Sync {
    /// Ask for `credential`'s token: `failed_generation` 0 when the worker has none, else the
    /// generation a 401 refused.
    fn request_token(&self, credential: u32, failed_generation: u64) -> bool;
}

/// One answer's rate-limit headers about a served limit, as a worker forwards them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heard {
    /// The plan's limit index.
    pub limit: u32,
    pub report: ServerReport,
    /// How long before the answer its request was sent.
    pub sent_ago: Duration,
    /// How long before the lease request the answer came.
    pub age: Duration,
}

/// A token the controller fetched, and how long it lives.
pub struct Fetched {
    pub token: Token,
    pub lifetime: Duration,
}

/// How the controller fetches the tokens it serves (the engine's OAuth2 client).
#[async_trait]
pub trait TokenFetcher: Send + Sync {
    /// The served credentials: index into the plan's `auth`, and how long before expiry a
    /// token is refreshed.
    fn served(&self) -> Vec<(usize, Duration)>;
    /// Fetch a new token of `credential` from its token endpoint.
    async fn fetch(&self, credential: usize) -> Result<Fetched, TokenError>;
}

/// The limits of a plan a controller serves, as a bit set: the `scope: fleet` ones that are
/// not adaptive. An adaptive limit learns the server's rate from every response
/// ([`crate::learn`]), which stays in each worker: each worker keeps its weight's share of it
/// and learns that.
pub fn served_bits(limits: &[Limit]) -> u64 {
    limits
        .iter()
        .enumerate()
        .take(64)
        .filter(|(_, l)| l.scope == LimitScope::Fleet && !l.adaptive)
        .fold(0, |acc, (i, _)| acc | (1 << i))
}

/// The controller's GCRA of a plan's `scope: fleet` limits, paced as a Redis fleet paces them
/// ([`fleet_pacing`]: the lease hold is part of the spread). Indexed like the plan's limits
/// (its `scope: worker` limits are in it but never reserved).
pub fn served_budget(limits: &[Limit]) -> LocalLimiter {
    LocalLimiter::with_pacing(limits, DEFAULT_SPREAD, |l| fleet_pacing(l, DEFAULT_SPREAD))
}

/// How far ahead a controller grants slots of a limit the server's headers steer (instead of
/// [`crate::fleet::LEASE_MAX_AHEAD`]): slots granted are the workers', so a rate the headers
/// lower (others' traffic rose) takes effect only after them. Busy workers keep every request
/// they may have in flight asleep on a slot, which at the full 2 s put the fall a whole window
/// late (measured: production refused at the end of the jump's first window); a controller
/// answers in well under a millisecond, so a quarter second ahead loses no slot.
pub const STEERED_MAX_AHEAD: Duration = Duration::from_millis(250);

/// The controller's side of the served fleet limits (see the module doc): one GCRA for the
/// fleet, whose lease rate per limit follows what the workers heard of the server
/// ([`crate::fleet::server`]'s views, the same decision a Redis fleet makes).
pub struct ServedBudget {
    gcra: LocalLimiter,
    /// The served limits (plan bit set).
    fleet: u64,
    views: ServerViews,
    /// Each limit's rate without headers.
    paced: Vec<f64>,
    /// Each limit's slots granted so far (the fleet's count, as `lease.lua`'s `granted`);
    /// held across a reservation so the counts follow the grants' order.
    slots: Mutex<Vec<u64>>,
    /// Per limit, when the newest answer observed came: the workers' answers arrive out of
    /// order (each forwards its newest with its next lease request), and an older one after a
    /// newer would read a fixed window's count going back.
    newest: Mutex<Vec<Option<Instant>>>,
}

impl std::fmt::Debug for ServedBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedBudget")
            .field("fleet", &format_args!("{:#b}", self.fleet))
            .finish_non_exhaustive()
    }
}

impl ServedBudget {
    /// The plan's served limits ([`served_bits`]); `None` when it has none.
    pub fn new(limits: &[Limit]) -> Option<Self> {
        let limits = &limits[..limits.len().min(64)];
        let fleet = served_bits(limits);
        if fleet == 0 {
            return None;
        }
        let paced: Vec<f64> = limits
            .iter()
            .map(|l| fleet_pacing(l, DEFAULT_SPREAD).rate)
            .collect();
        Some(Self {
            gcra: served_budget(limits),
            fleet,
            views: ServerViews::new(limits.iter().zip(paced.iter().copied())),
            slots: Mutex::new(vec![0; limits.len()]),
            newest: Mutex::new(vec![None; limits.len()]),
            paced,
        })
    }

    /// The served limits (plan bit set).
    pub fn fleet(&self) -> u64 {
        self.fleet
    }

    /// Reserve up to `want` slots of every limit of `bits` ([`LocalLimiter::reserve`]) at the
    /// rate the server's headers allow each now.
    pub fn reserve(&self, bits: u64, want: u32, max_ahead: Duration) -> crate::Reservation {
        let bits = bits & self.fleet;
        let picked = || (0..self.paced.len()).filter(move |i| bits & (1 << i) != 0);
        let mut slots = self.slots.lock();
        let now = Instant::now();
        let mut steered = false;
        for i in picked() {
            let paced = self.paced[i];
            let rate = self.views.lease_rate(i, paced, now);
            // Unsteered (no headers, or a shape they do not steer): the limit's own pacing.
            let by_headers = rate.to_bits() != paced.to_bits();
            steered |= by_headers;
            self.gcra.set_lease_rate(i, by_headers.then_some(rate));
        }
        let max_ahead = if steered {
            max_ahead.min(STEERED_MAX_AHEAD)
        } else {
            max_ahead
        };
        let res = self.gcra.reserve(bits, want, max_ahead);
        let n = res.offsets.len() as u64;
        if n > 0 {
            for i in picked() {
                let before = slots[i];
                self.views.leased(i, before, &res.offsets, now);
                slots[i] = before.saturating_add(n);
            }
        }
        res
    }

    /// A worker heard the server about a served limit (checked by the caller: the session
    /// bounds every field). Others' limits are ignored.
    pub fn heard(&self, h: &Heard) {
        let i = h.limit as usize;
        if i >= 64 || self.fleet & (1 << i) == 0 {
            return;
        }
        let at = Instant::now()
            .checked_sub(h.age)
            .unwrap_or_else(Instant::now);
        {
            let mut newest = self.newest.lock();
            let Some(n) = newest.get_mut(i) else { return };
            if n.is_some_and(|n| at < n) {
                return;
            }
            *n = Some(at);
        }
        let _ = self.views.observe(i, &h.report, h.sent_ago, at);
    }

    /// Pause every limit of `bits` for the fleet ([`LocalLimiter::pause`]).
    pub fn pause(&self, bits: u64, pause: Duration) -> Duration {
        self.gcra.pause(bits & self.fleet, pause)
    }

    /// What limit `i` last heard of the server, and others' rate (for logs and reports).
    pub fn server_state(&self, i: usize) -> Option<HeadroomState> {
        self.views.state(i).filter(|s| s.remaining.is_some())
    }

    /// The rate limit `i` is leased at now.
    pub fn rate(&self, i: usize) -> Option<f64> {
        self.gcra.rate(i)
    }
}

/// One class's leased slots (a class: the set of fleet limits a request matches).
struct Class {
    /// Plan bit set.
    bits: u64,
    /// How late a slot may still be used: the shortest hold of its limits.
    hold: Duration,
    /// The rate of its slowest limit (a lease covers at most
    /// [`crate::fleet::LEASE_MAX_SPAN`] of it).
    slowest: f64,
    st: Mutex<ClassState>,
    changed: Notify,
}

struct ClassState {
    slots: VecDeque<Instant>,
    /// The lease asked for and when.
    asked: Option<(u64, Instant)>,
    /// The controller said no room before this.
    retry_at: Option<Instant>,
    /// The requests asking, and their demand (as the Redis fleet limiter counts them).
    asking: Asking,
}

impl HasAsking for ClassState {
    fn asking(&mut self) -> &mut Asking {
        &mut self.asking
    }
}

/// A worker's limiter when its controller serves the fleet's budget (see the module doc).
pub struct ServedLimiter {
    link: Arc<dyn LeaseLink>,
    limits: Vec<Limit>,
    fleet: u64,
    /// `scope: worker` limits (their own index space) and their plan indices.
    local: Option<(LocalLimiter, Vec<usize>)>,
    classes: Mutex<HashMap<u64, Arc<Class>>>,
    /// Lease id -> class bits, for the answers.
    asked: Mutex<HashMap<u64, u64>>,
    next_id: AtomicU64,
    pauses: Mutex<Vec<Pause>>,
    pause_changed: Notify,
    leases: AtomicU64,
    /// Requests that went through the served limits.
    granted: AtomicU64,
    /// The fleet's size, for the summary's limits table.
    workers: u32,
    /// Per plan limit: the newest answer's headers not yet forwarded (report, sent ago, when).
    heard: Mutex<Vec<Option<(ServerReport, Duration, Instant)>>>,
}

impl std::fmt::Debug for ServedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedLimiter")
            .field("limits", &self.limits.len())
            .field("fleet", &format_args!("{:#b}", self.fleet))
            .finish_non_exhaustive()
    }
}

enum Step {
    Slot(Instant),
    Wait(Instant),
    Ask(u64, u32),
}

impl ServedLimiter {
    /// The plan's limits (at most 64, as [`Grant::limits`]): the served ones ([`served_bits`])
    /// leased over `link`, the others kept here as `own` has them (the worker's version of
    /// each plan limit, in plan order: its weight's share of an adaptive fleet limit).
    pub fn new(link: Arc<dyn LeaseLink>, limits: &[Limit], own: &[Limit], workers: u32) -> Self {
        let limits: Vec<Limit> = limits.iter().take(64).cloned().collect();
        let fleet = served_bits(&limits);
        let (local, index): (Vec<Limit>, Vec<usize>) = limits
            .iter()
            .enumerate()
            .filter(|(i, _)| fleet & (1 << i) == 0)
            .map(|(i, l)| (own.get(i).unwrap_or(l).clone(), i))
            .unzip();
        Self {
            link,
            fleet,
            pauses: Mutex::new(vec![Pause::default(); limits.len()]),
            heard: Mutex::new(vec![None; limits.len()]),
            limits,
            local: (!local.is_empty()).then(|| (LocalLimiter::new(&local), index)),
            classes: Mutex::new(HashMap::new()),
            asked: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            pause_changed: Notify::new(),
            leases: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            workers,
        }
    }

    /// Leases asked for so far, and the requests that went through the served limits: the
    /// messages a request costs.
    pub fn leases(&self) -> (u64, u64) {
        (
            self.leases.load(Ordering::Relaxed),
            self.granted.load(Ordering::Relaxed),
        )
    }

    fn fleet_matched(&self, req: &RequestMeta<'_>) -> u64 {
        self.limits
            .iter()
            .enumerate()
            .filter(|(i, l)| {
                self.fleet & (1 << i) != 0 && l.matches(req.method, req.path, req.request)
            })
            .fold(0, |acc, (i, _)| acc | (1 << i))
    }

    fn class(&self, bits: u64) -> Arc<Class> {
        self.classes
            .lock()
            .entry(bits)
            .or_insert_with(|| {
                let picked = || {
                    self.limits
                        .iter()
                        .enumerate()
                        .filter(move |(i, _)| bits & (1 << i) != 0)
                        .map(|(_, l)| l)
                };
                let hold = picked()
                    .map(|l| lease_hold(l.window))
                    .min()
                    .unwrap_or(crate::fleet::LEASE_HOLD);
                let slowest = picked()
                    .map(|l| fleet_pacing(l, DEFAULT_SPREAD).rate)
                    .fold(f64::INFINITY, f64::min);
                Arc::new(Class {
                    bits,
                    hold,
                    slowest,
                    st: Mutex::new(ClassState {
                        slots: VecDeque::new(),
                        asked: None,
                        retry_at: None,
                        asking: Asking::new(Instant::now()),
                    }),
                    changed: Notify::new(),
                })
            })
            .clone()
    }

    fn pause_end(&self, bits: u64, now: Instant) -> Option<Instant> {
        let p = self.pauses.lock();
        p.iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .filter_map(|(_, s)| s.until)
            .filter(|u| *u > now)
            .max()
    }

    /// The controller paused these limits for `remaining` from `received`.
    pub fn paused(&self, limits: u64, remaining: Duration, received: Instant) {
        // A pause no clock can hold is not one anybody meant (the session caps them at a day).
        let Some(until) = received.checked_add(remaining) else {
            return;
        };
        let now = Instant::now();
        let mut extended = false;
        {
            let mut p = self.pauses.lock();
            for (i, s) in p.iter_mut().enumerate() {
                if limits & self.fleet & (1 << i) != 0 {
                    extended |= s.extend(until, now);
                }
            }
        }
        if extended {
            // Slots already leased would be spent inside the pause: drop them.
            for c in self.classes.lock().values() {
                if c.bits & limits != 0 {
                    c.st.lock().slots.clear();
                }
            }
            self.pause_changed.notify_waiters();
        }
    }

    /// The controller's answer to lease `id`: slots at `offsets` from `received`, or (none)
    /// ask again after `wait`; `pauses` per limit of the request, in bit order. An answer to a
    /// lease this worker no longer waits for is dropped.
    pub fn granted(
        &self,
        id: u64,
        offsets: &[Duration],
        wait: Duration,
        pauses: &[Duration],
        received: Instant,
    ) {
        let Some(bits) = self.asked.lock().remove(&id) else {
            return;
        };
        let bit_list = (0..64).filter(|i| bits & (1u64 << i) != 0);
        for (i, p) in bit_list.zip(pauses) {
            if !p.is_zero() {
                self.paused(1 << i, *p, received);
            }
        }
        let Some(class) = self.classes.lock().get(&bits).cloned() else {
            return;
        };
        {
            let mut st = class.st.lock();
            if st.asked.is_some_and(|(a, _)| a == id) {
                st.asked = None;
            }
            // Slots are mapped from the moment the answer arrived: never earlier than the
            // controller meant.
            st.slots
                .extend(offsets.iter().filter_map(|o| received.checked_add(*o)));
            st.retry_at = offsets
                .is_empty()
                .then(|| received.checked_add(wait.max(Duration::from_millis(1))))
                .flatten();
        }
        class.changed.notify_waiters();
    }

    fn next_step(&self, class: &Class, now: Instant) -> Step {
        let mut st = class.st.lock();
        while st.slots.front().is_some_and(|at| *at + class.hold < now) {
            st.slots.pop_front();
        }
        if let Some(at) = st.slots.pop_front() {
            return Step::Slot(at);
        }
        if let Some((_, sent)) = st.asked
            && now < sent + LEASE_ANSWER_WITHIN
        {
            return Step::Wait(sent + LEASE_ANSWER_WITHIN);
        }
        if let Some(r) = st.retry_at.filter(|r| *r > now) {
            return Step::Wait(r);
        }
        let want = lease::want(
            st.asking.demand(now),
            class.hold,
            st.asking.need(),
            class.slowest,
        );
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        st.asked = Some((id, now));
        Step::Ask(id, want)
    }

    async fn acquire_fleet(&self, bits: u64) -> Result<(Duration, Duration), LimiterError> {
        let class = self.class(bits);
        let started = Instant::now();
        let mut paused = Duration::ZERO;
        let mut me = InClass::enter(&class.st, started);
        let mut unreachable_since: Option<Instant> = None;
        loop {
            me.hold(false);
            let now = Instant::now();
            let pause_changed = self.pause_changed.notified();
            if let Some(end) = self.pause_end(bits, now) {
                tokio::select! {
                    _ = sleep_until(end) => {}
                    _ = pause_changed => {}
                }
                paused += now.elapsed();
                continue;
            }
            let changed = class.changed.notified();
            match self.next_step(&class, now) {
                Step::Slot(at) => {
                    me.hold(true);
                    if at > now {
                        tokio::select! {
                            _ = sleep_until(at) => {}
                            _ = pause_changed => continue,
                        }
                    }
                    let late = Instant::now();
                    if self.pause_end(bits, late).is_some() || late > at + class.hold {
                        // Paused meanwhile, or this task woke too late: capacity lost,
                        // never excess.
                        continue;
                    }
                    self.granted.fetch_add(1, Ordering::Relaxed);
                    return Ok((started.elapsed().saturating_sub(paused), paused));
                }
                Step::Wait(until) => {
                    tokio::select! {
                        _ = sleep_until(until) => {}
                        _ = changed => {}
                        _ = pause_changed => {}
                    }
                }
                Step::Ask(id, want) => {
                    self.asked.lock().insert(id, bits);
                    let heard = self.take_heard(now);
                    if self.link.request_lease(id, bits, want, &heard) {
                        self.leases.fetch_add(1, Ordering::Relaxed);
                        unreachable_since = None;
                    } else {
                        self.asked.lock().remove(&id);
                        let since = *unreachable_since.get_or_insert(now);
                        if now >= since + UNAVAILABLE_WAIT {
                            return Err(LimiterError::Unavailable(
                                "the controller that serves the fleet's limits is unreachable"
                                    .into(),
                            ));
                        }
                        let mut st = class.st.lock();
                        st.asked = None;
                        st.retry_at = Some(now + UNAVAILABLE_WAIT / 10);
                    }
                }
            }
        }
    }

    /// The headers heard since the last lease request, to forward with the next.
    fn take_heard(&self, now: Instant) -> Vec<Heard> {
        self.heard
            .lock()
            .iter_mut()
            .enumerate()
            .filter_map(|(i, h)| {
                let (report, sent_ago, at) = h.take()?;
                Some(Heard {
                    limit: i as u32,
                    report,
                    sent_ago,
                    age: now.saturating_duration_since(at),
                })
            })
            .collect()
    }

    fn report_fleet(&self, i: usize) -> LimitReport {
        let l = &self.limits[i];
        let pacing = fleet_pacing(l, DEFAULT_SPREAD);
        let declared = l.limit.as_per_sec();
        let p = self.pauses.lock()[i];
        LimitReport {
            name: l.name.clone(),
            declared: l.limit.to_string(),
            pacing_rate: pacing.rate,
            margin: if declared > 0.0 {
                1.0 - pacing.rate / declared
            } else {
                0.0
            },
            burst: l.burst,
            adaptive: l.adaptive,
            current_rate: pacing.rate,
            sustainable_rate: None,
            pauses: p.pauses,
            paused: p.paused(Instant::now()),
            // One budget for the fleet (not a share): the summary shows its rate once. No
            // Redis: no Redis calls, no safe mode.
            fleet: Some(crate::FleetLimitReport {
                workers: self.workers,
                redis_calls: 0,
                safe_mode: Duration::ZERO,
                unavailable: Duration::ZERO,
                unavailable_reason: None,
            }),
            server: None,
        }
    }
}

#[async_trait]
impl Limiter for ServedLimiter {
    async fn acquire(&self, req: &RequestMeta<'_>) -> Result<Grant, LimiterError> {
        let mut grant = Grant::default();
        // Local (worker) limits first: a leased slot must not age while we wait on them.
        if let Some((lim, idx)) = &self.local {
            let g = lim.acquire(req).await?;
            grant.waited += g.waited;
            grant.paused += g.paused;
            for (j, &plan) in idx.iter().enumerate() {
                if g.limits & (1 << j) != 0 {
                    grant.limits |= 1 << plan;
                }
            }
        }
        let bits = self.fleet_matched(req);
        if bits != 0 {
            let (waited, paused) = self.acquire_fleet(bits).await?;
            grant.waited += waited;
            grant.paused += paused;
            grant.limits |= bits;
        }
        Ok(grant)
    }

    fn feedback(&self, req: &RequestMeta<'_>, fb: &Feedback) {
        if let Some((lim, _)) = &self.local {
            lim.feedback(req, fb);
        }
        let bits = self.fleet_matched(req);
        if let Some(server) = fb.server
            && bits != 0
        {
            // The newest answer per limit goes to the controller with the next lease request.
            let now = Instant::now();
            let mut heard = self.heard.lock();
            for (i, h) in heard.iter_mut().enumerate() {
                if bits & (1 << i) != 0 {
                    *h = Some((server, fb.sent_ago, now));
                }
            }
        }
        if fb.status != 429 && fb.status != 503 {
            return;
        }
        let Some(pause) = fb.retry_after.filter(|p| !p.is_zero()) else {
            return;
        };
        if bits == 0 {
            return;
        }
        // Paused here at once; the controller pauses every other worker.
        self.paused(bits, pause, Instant::now());
        if !self.link.throttled(bits, pause) {
            tracing::debug!("a pause could not reach the controller (no session)");
        }
    }

    fn report(&self) -> Vec<LimitReport> {
        let local = self.local.as_ref().map(|(lim, idx)| (lim.report(), idx));
        (0..self.limits.len())
            .filter_map(|p| {
                if self.fleet & (1 << p) != 0 {
                    return Some(self.report_fleet(p));
                }
                let (reports, idx) = local.as_ref()?;
                let j = idx.iter().position(|&x| x == p)?;
                reports.get(j).cloned()
            })
            .collect()
    }
}

/// A served credential's token as the worker holds it.
#[derive(Clone)]
enum Held {
    /// None yet (or the one held was refused: waiting for its successor).
    Waiting,
    Token {
        token: Token,
        generation: u64,
        expires_at: Instant,
    },
    /// The controller's fetch failed: why (no secret in it).
    Failed(String),
}

struct ServedCred {
    name: String,
    held: watch::Sender<Held>,
    /// When this worker last asked, to ask again only now and then.
    asked: Mutex<Option<Instant>>,
    /// The newest generation a 401 refused (asked about once).
    refused: AtomicU64,
}

/// A worker's token source when its controller serves some credentials' tokens (see the
/// module doc). Its `Debug` shows no token.
pub struct ServedTokens {
    link: Arc<dyn TokenLink>,
    /// Per credential of the plan: served, or `None` (then `own` answers).
    creds: Vec<Option<ServedCred>>,
    own: Arc<dyn TokenSource>,
}

impl std::fmt::Debug for ServedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedTokens")
            .field("served", &self.creds.iter().filter(|c| c.is_some()).count())
            .finish_non_exhaustive()
    }
}

impl ServedTokens {
    /// `names`: the plan's credentials by name; `served`: the indices the controller serves;
    /// `own`: this process's source for the others.
    pub fn new(
        link: Arc<dyn TokenLink>,
        names: &[String],
        served: &[u32],
        own: Arc<dyn TokenSource>,
    ) -> Self {
        let creds = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                served.iter().any(|&s| s as usize == i).then(|| ServedCred {
                    name: name.clone(),
                    held: watch::channel(Held::Waiting).0,
                    asked: Mutex::new(None),
                    refused: AtomicU64::new(0),
                })
            })
            .collect();
        Self { link, creds, own }
    }

    /// The controller sent `credential`'s token (pushed at a refresh, or answering a
    /// request): good for `expires_in` from `received`. `Err`: its fetch failed, and why.
    pub fn delivered(
        &self,
        credential: usize,
        generation: u64,
        token: Result<Token, String>,
        expires_in: Duration,
        received: Instant,
    ) {
        let Some(Some(c)) = self.creds.get(credential) else {
            tracing::debug!(
                credential,
                "a token for a credential this worker does not serve"
            );
            return;
        };
        *c.asked.lock() = None;
        c.held.send_modify(|held| match token {
            Ok(token) => {
                // An older token (a late answer) never replaces a newer one.
                if let Held::Token { generation: g, .. } = held
                    && *g > generation
                {
                    return;
                }
                *held = Held::Token {
                    token,
                    generation,
                    expires_at: received + expires_in.min(MAX_TOKEN_LIFETIME),
                };
            }
            Err(reason) => {
                if !matches!(held, Held::Token { expires_at, .. } if *expires_at > received) {
                    *held = Held::Failed(reason);
                }
            }
        });
    }

    fn ask(&self, credential: usize, c: &ServedCred, failed_generation: u64) {
        let now = Instant::now();
        let mut asked = c.asked.lock();
        if failed_generation == 0 && asked.is_some_and(|a| now < a + TOKEN_ASK_AGAIN) {
            return;
        }
        if self
            .link
            .request_token(credential as u32, failed_generation)
        {
            *asked = Some(now);
        }
    }

    async fn served_token(&self, credential: usize, c: &ServedCred) -> Result<Token, TokenError> {
        let deadline = Instant::now() + TOKEN_WAIT;
        let mut rx = c.held.subscribe();
        loop {
            let held = rx.borrow_and_update().clone();
            let now = Instant::now();
            match held {
                Held::Token {
                    token, expires_at, ..
                } if expires_at > now => return Ok(token),
                Held::Failed(reason) => {
                    // Asked again by the next request after a while, not by every one.
                    c.held.send_replace(Held::Waiting);
                    return Err(TokenError::Fetch {
                        credential: c.name.clone(),
                        reason: format!("the controller's fetch failed: {reason}"),
                    });
                }
                _ => self.ask(credential, c, 0),
            }
            let wake = (now + TOKEN_ASK_AGAIN).min(deadline);
            tokio::select! {
                _ = rx.changed() => {}
                _ = sleep_until(wake) => {}
            }
            if Instant::now() >= deadline {
                return Err(TokenError::Fetch {
                    credential: c.name.clone(),
                    reason: format!(
                        "no token from the controller within {TOKEN_WAIT:?} (is it reachable?)"
                    ),
                });
            }
        }
    }
}

#[async_trait]
impl TokenSource for ServedTokens {
    async fn token(&self, credential: usize) -> Result<Token, TokenError> {
        match self.creds.get(credential) {
            Some(Some(c)) => self.served_token(credential, c).await,
            _ => self.own.token(credential).await,
        }
    }

    fn invalidate(&self, credential: usize, failed: &Token) {
        let Some(Some(c)) = self.creds.get(credential) else {
            self.own.invalidate(credential, failed);
            return;
        };
        let mut refused = None;
        c.held.send_if_modified(|held| match held {
            Held::Token {
                token, generation, ..
            } if token == failed => {
                refused = Some(*generation);
                *held = Held::Waiting;
                true
            }
            _ => false,
        });
        // Said once per generation: the controller refreshes once for the whole fleet.
        if let Some(g) = refused
            && c.refused.fetch_max(g, Ordering::Relaxed) < g
        {
            tracing::info!(credential = %c.name, generation = g, "the served token was refused (401): asking the controller for a new one");
            self.ask(credential, c, g);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::StaticTokens;

    #[derive(Default)]
    struct FakeLink {
        up: std::sync::atomic::AtomicBool,
        leases: Mutex<Vec<(u64, u64, u32)>>,
        tokens: Mutex<Vec<(u32, u64)>>,
        pauses: Mutex<Vec<(u64, Duration)>>,
        heard: Mutex<Vec<Heard>>,
    }

    impl LeaseLink for FakeLink {
        fn request_lease(&self, id: u64, limits: u64, want: u32, heard: &[Heard]) -> bool {
            self.leases.lock().push((id, limits, want));
            self.heard.lock().extend_from_slice(heard);
            self.up.load(Ordering::Relaxed)
        }
        fn throttled(&self, limits: u64, pause: Duration) -> bool {
            self.pauses.lock().push((limits, pause));
            self.up.load(Ordering::Relaxed)
        }
    }

    impl TokenLink for FakeLink {
        fn request_token(&self, credential: u32, failed_generation: u64) -> bool {
            self.tokens.lock().push((credential, failed_generation));
            self.up.load(Ordering::Relaxed)
        }
    }

    fn fleet_limit() -> Limit {
        let r: pacer_plan::Rate = "100/s".parse().unwrap();
        Limit {
            name: "f".into(),
            limit: r,
            shape: pacer_plan::LimitShape::SlidingWindow,
            burst: 1,
            window: r.per(),
            scope: LimitScope::Fleet,
            method_in: vec![],
            path_prefix: None,
            request_in: vec![],
            adaptive: false,
            spread: None,
            reserve: None,
        }
    }

    const META: RequestMeta<'static> = RequestMeta {
        method: "GET",
        path: "/x",
        request: "x",
    };

    /// A request asks for a lease, goes at its slot, and a lapsed answer is never used; with
    /// no session it fails after UNAVAILABLE_WAIT instead of going unpaced.
    #[tokio::test(start_paused = true)]
    async fn requests_go_at_their_leased_slots_and_fail_without_a_controller() {
        let link = Arc::new(FakeLink::default());
        link.up.store(true, Ordering::Relaxed);
        let lim = Arc::new(ServedLimiter::new(link.clone(), &[fleet_limit()], &[], 2));
        let l2 = lim.clone();
        let t = tokio::spawn(async move { l2.acquire(&META).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (id, bits, want) = link.leases.lock()[0];
        // One request so far: about a hold (50 ms) of 1 per 10 ms, as the first lease of the
        // Redis fleet limiter.
        assert_eq!((bits, want), (1, 5));
        let now = Instant::now();
        lim.granted(
            id,
            &[Duration::from_millis(30)],
            Duration::ZERO,
            &[Duration::ZERO],
            now,
        );
        let g = t.await.unwrap().unwrap();
        assert_eq!(g.limits, 1);
        assert!(g.waited >= Duration::from_millis(30), "{g:?}");
        // The controller is gone: no slot, and after a second the request fails.
        link.up.store(false, Ordering::Relaxed);
        let started = Instant::now();
        let e = lim.acquire(&META).await.unwrap_err();
        assert!(matches!(e, LimiterError::Unavailable(_)), "{e}");
        assert!(started.elapsed() >= UNAVAILABLE_WAIT);
    }

    /// Numbers no clock can hold (a broken or hostile controller) are never a panic.
    #[tokio::test(start_paused = true)]
    async fn answers_no_clock_can_hold_are_dropped_not_a_panic() {
        let link = Arc::new(FakeLink::default());
        link.up.store(true, Ordering::Relaxed);
        let lim = ServedLimiter::new(link.clone(), &[fleet_limit()], &[], 2);
        let huge = Duration::from_secs(u64::MAX);
        lim.paused(1, huge, Instant::now());
        lim.granted(1, &[huge], huge, &[huge], Instant::now());
        let own = Arc::new(StaticTokens::default());
        let tokens = ServedTokens::new(link, &["oauth".into()], &[0], own);
        tokens.delivered(0, 1, Ok(Token::new("t")), huge, Instant::now());
        assert_eq!(tokens.token(0).await.unwrap().expose(), "t");
    }

    /// An adaptive fleet limit stays in the worker, at the worker's own share of it: no lease.
    #[tokio::test(start_paused = true)]
    async fn an_adaptive_fleet_limit_is_kept_here_at_the_workers_share() {
        let link = Arc::new(FakeLink::default());
        link.up.store(true, Ordering::Relaxed);
        let mut adaptive = fleet_limit();
        adaptive.adaptive = true;
        let mut share = adaptive.clone();
        share.limit = "50/s".parse().unwrap();
        let lim = ServedLimiter::new(link.clone(), &[adaptive], &[share], 2);
        let g = lim.acquire(&META).await.unwrap();
        assert_eq!(g.limits, 1);
        assert!(link.leases.lock().is_empty());
        let r = &lim.report()[0];
        assert_eq!(r.declared, "50/s");
        assert!(r.fleet.is_none());
    }

    /// A 429's pause holds here at once and goes to the controller; a pause the controller
    /// sends drops slots already leased.
    #[tokio::test(start_paused = true)]
    async fn a_pause_is_told_to_the_controller_and_one_from_it_holds_every_request() {
        let link = Arc::new(FakeLink::default());
        link.up.store(true, Ordering::Relaxed);
        let lim = Arc::new(ServedLimiter::new(link.clone(), &[fleet_limit()], &[], 2));
        lim.feedback(
            &META,
            &Feedback {
                status: 429,
                retry_after: Some(Duration::from_secs(2)),
                pause_origin: crate::PauseOrigin::Server,
                stated_rate: None,
                server: None,
                sent_ago: Duration::ZERO,
            },
        );
        assert_eq!(link.pauses.lock()[0], (1, Duration::from_secs(2)));
        let l2 = lim.clone();
        let started = Instant::now();
        let t = tokio::spawn(async move { l2.acquire(&META).await });
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let (id, _, _) = *link.leases.lock().last().unwrap();
        lim.granted(
            id,
            &[Duration::ZERO],
            Duration::ZERO,
            &[Duration::ZERO],
            Instant::now(),
        );
        let g = t.await.unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert!(g.paused >= Duration::from_millis(1900), "{g:?}");
        assert_eq!(lim.report()[0].pauses, 1);
    }

    /// What the server's headers said goes to the controller with the next lease request: the
    /// newest answer per limit, once, with how long ago it came.
    #[tokio::test(start_paused = true)]
    async fn the_servers_headers_go_to_the_controller_with_the_next_lease() {
        let link = Arc::new(FakeLink::default());
        link.up.store(true, Ordering::Relaxed);
        let lim = Arc::new(ServedLimiter::new(link.clone(), &[fleet_limit()], &[], 2));
        let said = |remaining| Feedback {
            status: 200,
            retry_after: None,
            pause_origin: crate::PauseOrigin::Server,
            stated_rate: None,
            server: Some(ServerReport {
                remaining,
                reset: Some(Duration::from_secs(1)),
                limit: Some(100),
            }),
            sent_ago: Duration::from_millis(3),
        };
        lim.feedback(&META, &said(50));
        lim.feedback(&META, &said(49));
        tokio::time::advance(Duration::from_millis(20)).await;
        let l2 = lim.clone();
        let t = tokio::spawn(async move { l2.acquire(&META).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let heard = link.heard.lock().clone();
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert_eq!((heard[0].limit, heard[0].report.remaining), (0, 49));
        assert_eq!(heard[0].sent_ago, Duration::from_millis(3));
        assert!(heard[0].age >= Duration::from_millis(20), "{heard:?}");
        let (id, _, _) = link.leases.lock()[0];
        lim.granted(
            id,
            &[Duration::ZERO, Duration::from_millis(1)],
            Duration::ZERO,
            &[Duration::ZERO],
            Instant::now(),
        );
        t.await.unwrap().unwrap();
        // Said once: the next lease carries nothing new.
        tokio::time::advance(Duration::from_millis(100)).await;
        let l2 = lim.clone();
        let t = tokio::spawn(async move { l2.acquire(&META).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(link.leases.lock().len(), 2);
        assert_eq!(link.heard.lock().len(), 1);
        t.abort();
    }

    /// A served token is asked for once, used until it expires, refused once per generation
    /// (one request to the controller for many 401s), and past its expiry with no controller
    /// a request waits TOKEN_WAIT and fails instead of going without it.
    #[tokio::test(start_paused = true)]
    async fn a_served_token_is_asked_once_refreshed_once_and_never_used_expired() {
        let link = Arc::new(FakeLink::default());
        link.up.store(true, Ordering::Relaxed);
        let own = Arc::new(StaticTokens::new(vec![None, Some(Token::new("static"))]));
        let tokens = Arc::new(ServedTokens::new(
            link.clone(),
            &["oauth".into(), "fixed".into()],
            &[0],
            own,
        ));
        assert_eq!(tokens.token(1).await.unwrap().expose(), "static");
        let t2 = tokens.clone();
        let waiting = tokio::spawn(async move { t2.token(0).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*link.tokens.lock(), [(0, 0)]);
        tokens.delivered(
            0,
            1,
            Ok(Token::new("tok-1")),
            Duration::from_secs(60),
            Instant::now(),
        );
        let t = waiting.await.unwrap().unwrap();
        assert_eq!(t.expose(), "tok-1");
        assert!(!format!("{tokens:?}").contains("tok-1"));
        // Three requests see a 401 on it: one question to the controller.
        for _ in 0..3 {
            tokens.invalidate(0, &t);
        }
        assert_eq!(*link.tokens.lock(), [(0, 0), (0, 1)]);
        tokens.delivered(
            0,
            2,
            Ok(Token::new("tok-2")),
            Duration::from_secs(5),
            Instant::now(),
        );
        assert_eq!(tokens.token(0).await.unwrap().expose(), "tok-2");
        // A late answer of an older generation does not replace it.
        tokens.delivered(
            0,
            1,
            Ok(Token::new("tok-1")),
            Duration::from_secs(60),
            Instant::now(),
        );
        assert_eq!(tokens.token(0).await.unwrap().expose(), "tok-2");
        // The controller is gone: the token is used until it expires, then not at all.
        link.up.store(false, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(tokens.token(0).await.unwrap().expose(), "tok-2");
        tokio::time::advance(Duration::from_secs(2)).await;
        let e = tokens.token(0).await.unwrap_err();
        assert!(
            e.to_string().contains("no token from the controller"),
            "{e}"
        );
        assert!(!e.to_string().contains("tok-"), "{e}");
    }
}
