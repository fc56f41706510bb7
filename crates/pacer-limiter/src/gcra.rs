//! In-process GCRA over all the plan's limits, with atomic multi-limit grants, Retry-After
//! pauses that empty the bucket, and adaptive limits that learn the server's rate
//! ([`crate::learn`]).
//!
//! Why not `governor`: a request must take a token from every limit it matches at once, or
//! from none (a token burnt in one bucket while another refuses is capacity lost, and with
//! waits it reorders requests). governor checks one limiter at a time, so we keep one small
//! GCRA state per limit under one lock and reserve a common instant across all of them.

use std::time::Duration;

use async_trait::async_trait;
use pacer_plan::{Limit, Pacing};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::headroom::{Decision, Headroom};
use crate::learn::{Change, Learner};
use crate::{Feedback, Grant, Limiter, LimiterError, PauseOrigin, RequestMeta};

/// Spread between our grant and the server's count of the request (network and queueing
/// jitter) assumed when deriving the pacing rate from the server's limit. See
/// docs/rate-limiting.md ("accuracy bound").
pub const DEFAULT_SPREAD: Duration = Duration::from_millis(100);

/// The rate and burst this process's GCRA runs at for a limit, by its shape
/// ([`pacer_plan::shape::pace`], the one place that decides them): for windows
/// `r = (L - b) / (W + D)`; for a token bucket its own rate, less what the spread needs.
pub fn pacing(limit: &Limit, default_spread: Duration) -> Pacing {
    limit.pacing(default_spread)
}

/// The pacing rate (per second) of [`pacing`].
pub fn pacing_rate(limit: &Limit, default_spread: Duration) -> f64 {
    pacing(limit, default_spread).rate
}

/// The most a GCRA at `rate` with the limit's pacing burst can admit in any window `W` seen
/// `spread` late (the window shapes' accuracy bound).
pub fn worst_case_in_window(rate: f64, limit: &Limit, default_spread: Duration) -> f64 {
    let p = pacing(limit, default_spread);
    f64::from(p.burst) + rate * (limit.window.as_secs_f64() + p.spread.as_secs_f64())
}

/// A rate the server's headers move below this share of the rate before, or above it by as
/// much, voids the reservations queued at the old rate: they would otherwise go out at it,
/// too fast for what is left or too slow to spend a fixed window before its reset.
const VOID_ON_CHANGE: f64 = 0.9;
/// At most this many such voids per window: each makes every waiting request queue again, and
/// a rate recomputed at every answer would otherwise keep them queuing.
const VOID_PER_WINDOW: u64 = 20;

#[derive(Debug)]
struct State {
    limit: Limit,
    /// Ceiling rate (per second) from the accuracy bound.
    ceiling: f64,
    /// The GCRA's burst ([`Pacing::burst`]: a token bucket keeps some for the spread).
    burst: u32,
    /// Adaptive limits: what was learned of the server's rate; `None` for declared limits.
    learner: Option<Learner>,
    /// What the server's headers say is left ([`crate::headroom`]).
    headroom: Headroom,
    /// The rate the server's headers allow now (`None`: they do not steer this limit, or said
    /// nothing yet), and until when nothing is left (ns since `epoch`; 0: not held).
    server_rate: Option<f64>,
    /// A controller serving the limit to a fleet sets the rate it leases at from what the
    /// workers heard of the server ([`LocalLimiter::set_lease_rate`]); it wins over the rest.
    lease_rate: Option<f64>,
    hold_until: u64,
    /// When the server's view last voided the queued reservations (ns since `epoch`).
    last_void: u64,
    /// Theoretical arrival time, ns since `epoch`.
    tat: u64,
    /// Sending is paused until then (ns since `epoch`); 0 when never paused.
    pause_until: u64,
    /// Bumped whenever a pause is set, so sleepers know to look again.
    pause_epoch: u64,
    /// Accounting.
    pauses: u64,
    paused_ns: u64,
    throttled: u64,
}

impl State {
    /// The rate paced at now: the learned one for adaptive limits; where the server's headers
    /// steer the limit, what they allow (an aligned fixed window may go above the sliding
    /// window's rate; anything else only below it).
    fn rate(&self) -> f64 {
        if let Some(r) = self.lease_rate {
            return r;
        }
        let own = self.learner.as_ref().map_or(self.ceiling, Learner::rate);
        match self.server_rate {
            Some(r) if self.headroom.aligned() => r,
            Some(r) => own.min(r),
            None => own,
        }
    }
    /// Asks the server's view for the rate now. A rate that moves by more than
    /// [`VOID_ON_CHANGE`] (or a hold) voids the reservations made at the old one, as a pause does.
    fn steer(&mut self, now: u64) {
        if !self.headroom.steers() {
            return;
        }
        let before = self.rate();
        match self.headroom.decision(now) {
            None => self.server_rate = None,
            Some(Decision::Rate(r)) => self.server_rate = Some(r),
            Some(Decision::Hold(d)) => {
                self.server_rate = None;
                let until = now.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                if until > self.hold_until {
                    self.hold_until = until;
                    self.pause_epoch += 1;
                    self.tat = until;
                }
                return;
            }
        }
        let after = self.rate();
        let window_ns = u64::try_from(self.limit.window.as_nanos()).unwrap_or(u64::MAX);
        let settled = now.saturating_sub(self.last_void) >= window_ns / VOID_PER_WINDOW;
        if settled && (after < before * VOID_ON_CHANGE || after * VOID_ON_CHANGE > before) {
            self.last_void = now;
            self.pause_epoch += 1;
            self.tat = now;
        }
    }
    fn interval_ns(&self) -> u64 {
        (1e9 / self.rate().max(1e-6)) as u64
    }
    fn tau_ns(&self) -> u64 {
        self.interval_ns() * u64::from(self.burst.saturating_sub(1))
    }
    /// Lets an adaptive limit end its stretch and act on what it learned.
    fn learn(&mut self, now: u64) {
        let change = self.learner.as_mut().and_then(|l| l.tick(now));
        self.apply(change, now);
    }
    /// Acts on what an adaptive limit decided.
    fn apply(&mut self, change: Option<Change>, now: u64) {
        let Some(change) = change else {
            return;
        };
        match change {
            Change::Cut {
                rate,
                accepted,
                pause,
            } => {
                tracing::debug!(limit = %self.limit.name, rate, accepted, ?pause, "adaptive: refused, rate cut");
                self.pause(now, u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX));
            }
            Change::Stated { rate, pause } => {
                tracing::debug!(limit = %self.limit.name, rate, "adaptive: the server stated its rate");
                if !pause.is_zero() {
                    self.pause(now, u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX));
                }
            }
            Change::Probe { rate } => {
                tracing::debug!(limit = %self.limit.name, rate, "adaptive: probing upward");
            }
        }
    }
    /// Pauses sending for `ns` from `now` (only ever extends a pause), counting it.
    fn pause(&mut self, now: u64, ns: u64) {
        let until = now.saturating_add(ns);
        if until > self.pause_until {
            // only ever extended; count the extra time paused
            self.paused_ns += until - self.pause_until.max(now);
            if self.pause_until <= now {
                self.pauses += 1;
            }
            self.pause_until = until;
            self.pause_epoch += 1;
            // Empty the bucket: after the pause traffic resumes at the rate, no burst.
            // Every reservation still waiting is void (its sleeper sees the new epoch
            // and queues again), so the schedule restarts at the pause's end instead of
            // after slots nobody will use.
            self.tat = until + self.tau_ns();
        }
    }
}

/// What a limit did during the run, for the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitReport {
    pub name: String,
    /// The server's limit as declared, e.g. `600/10s`.
    pub declared: String,
    /// The rate (per second) pacer paced to, from the accuracy bound.
    pub pacing_rate: f64,
    /// Share of the declared rate kept as margin (1 - pacing / declared).
    pub margin: f64,
    pub burst: u32,
    pub adaptive: bool,
    /// Adaptive limits: the current rate, and the rate measured to pass without refusals over
    /// a recent stretch (`None`: nothing was learned, e.g. the load never reached the limit).
    pub current_rate: f64,
    pub sustainable_rate: Option<f64>,
    pub pauses: u64,
    pub paused: Duration,
    /// `scope: fleet` limits kept through Redis: this worker's view of the shared budget.
    pub fleet: Option<FleetLimitReport>,
    /// What the server's rate-limit headers last said ([`crate::headroom`]); `None`: nothing.
    pub server: Option<crate::headroom::HeadroomState>,
}

/// What a fleet worker saw of the shared budget (the same for every fleet limit of a worker).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetLimitReport {
    /// The most workers seen live at once.
    pub workers: u32,
    /// Commands this worker sent to Redis (a script counts as one).
    pub redis_calls: u64,
    /// Time in safe mode (Redis failing; local limiter at a safe share).
    pub safe_mode: Duration,
    /// Time sending was paused because Redis failed for longer than the safe-mode bound.
    pub unavailable: Duration,
    /// Why sending paused, if it did.
    pub unavailable_reason: Option<String>,
}

pub struct LocalLimiter {
    states: Mutex<Vec<State>>,
    epoch: Instant,
    spread: Duration,
}

impl LocalLimiter {
    pub fn new(limits: &[Limit]) -> Self {
        Self::with_spread(limits, DEFAULT_SPREAD)
    }

    pub fn with_spread(limits: &[Limit], spread: Duration) -> Self {
        Self::with_pacing(limits, spread, |l| pacing(l, spread))
    }

    /// Each limit paced at `pace(limit)` (a fleet's limits are paced with the lease hold in
    /// their spread: `crate::fleet::fleet_pacing`); `spread` is what [`LocalLimiter::spread`]
    /// reports.
    pub fn with_pacing(
        limits: &[Limit],
        spread: Duration,
        pace: impl Fn(&Limit) -> Pacing,
    ) -> Self {
        let epoch = Instant::now();
        let states = limits
            .iter()
            .map(|l| {
                let pacing = pace(l);
                State {
                    ceiling: pacing.rate,
                    burst: pacing.burst,
                    learner: l.adaptive.then(|| Learner::new(pacing.rate, l.window, 0)),
                    headroom: Headroom::new(l, pacing.rate),
                    server_rate: None,
                    lease_rate: None,
                    hold_until: 0,
                    last_void: 0,
                    limit: l.clone(),
                    tat: 0,
                    pause_until: 0,
                    pause_epoch: 0,
                    pauses: 0,
                    paused_ns: 0,
                    throttled: 0,
                }
            })
            .collect();
        Self {
            states: Mutex::new(states),
            epoch,
            spread,
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn matched(&self, req: &RequestMeta<'_>) -> u64 {
        let states = self.states.lock();
        let mut bits = 0u64;
        for (i, s) in states.iter().enumerate().take(64) {
            if s.limit.matches(req.method, req.path, req.request) {
                bits |= 1 << i;
            }
        }
        bits
    }

    pub fn report(&self) -> Vec<LimitReport> {
        let now = self.now_ns();
        let mut states = self.states.lock();
        states
            .iter_mut()
            .map(|s| {
                s.learn(now);
                let declared = s.limit.limit.as_per_sec();
                LimitReport {
                    name: s.limit.name.clone(),
                    declared: s.limit.limit.to_string(),
                    pacing_rate: s.ceiling,
                    margin: if declared > 0.0 {
                        1.0 - s.ceiling / declared
                    } else {
                        0.0
                    },
                    burst: s.limit.burst,
                    adaptive: s.limit.adaptive,
                    current_rate: s.rate(),
                    sustainable_rate: s.learner.as_ref().and_then(Learner::sustained),
                    pauses: s.pauses,
                    paused: Duration::from_nanos(s.paused_ns),
                    fleet: None,
                    server: Some(s.headroom.state()).filter(|h| h.remaining.is_some()),
                }
            })
            .collect()
    }

    pub fn spread(&self) -> Duration {
        self.spread
    }

    /// Reserve up to `want` instants at which every limit of `bits` allows a request, none
    /// later than `max_ahead` from now, without waiting: what a controller grants a worker's
    /// lease (`crate::served`), as `fleet/lua/lease.lua` does in Redis. While any of the limits
    /// is paused nothing is granted and the pauses are returned.
    pub fn reserve(&self, bits: u64, want: u32, max_ahead: Duration) -> Reservation {
        let mut states = self.states.lock();
        let now = self.now_ns();
        let max_ahead_ns = u64::try_from(max_ahead.as_nanos()).unwrap_or(u64::MAX);
        let mut out = Reservation::default();
        let picked = |i: usize| i < 64 && bits & (1 << i) != 0;
        let mut paused = 0u64;
        for (i, s) in states.iter_mut().enumerate() {
            if !picked(i) {
                continue;
            }
            s.learn(now);
            let left = s.pause_until.saturating_sub(now);
            paused = paused.max(left);
            out.pauses.push(Duration::from_nanos(left));
        }
        if paused > 0 {
            out.wait = Duration::from_nanos(paused);
            return out;
        }
        while (out.offsets.len() as u64) < u64::from(want) {
            let at = states
                .iter()
                .enumerate()
                .filter(|(i, _)| picked(*i))
                .fold(now, |at, (_, s)| at.max(s.tat.saturating_sub(s.tau_ns())));
            let ahead = at - now;
            if ahead > max_ahead_ns {
                if out.offsets.is_empty() {
                    out.wait = Duration::from_nanos(ahead - max_ahead_ns);
                }
                break;
            }
            for (i, s) in states.iter_mut().enumerate() {
                if picked(i) {
                    s.tat = s.tat.max(at) + s.interval_ns();
                }
            }
            out.offsets.push(Duration::from_nanos(ahead));
        }
        out
    }

    /// Lease limit `i` at `rate` per second from now on (`None`: its own pacing again): what a
    /// controller serving a fleet limit decides from the server's headers
    /// (`crate::served::ServedBudget`). A rate that is not finite and positive is ignored.
    pub fn set_lease_rate(&self, i: usize, rate: Option<f64>) {
        if let Some(s) = self.states.lock().get_mut(i) {
            s.lease_rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        }
    }

    /// The rate limit `i` is paced at now (per second).
    pub fn rate(&self, i: usize) -> Option<f64> {
        self.states.lock().get(i).map(State::rate)
    }

    /// Pause every limit of `bits` for `pause` from now (a pause is only ever extended, and it
    /// empties the bucket, as a 429 seen in this process does). Returns the longest pause now
    /// in force among them.
    pub fn pause(&self, bits: u64, pause: Duration) -> Duration {
        let mut states = self.states.lock();
        let now = self.now_ns();
        let ns = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX);
        let mut longest = 0u64;
        for (i, s) in states.iter_mut().enumerate().take(64) {
            if bits & (1 << i) != 0 {
                if ns > 0 {
                    s.pause(now, ns);
                }
                longest = longest.max(s.pause_until.saturating_sub(now));
            }
        }
        Duration::from_nanos(longest)
    }
}

/// What [`LocalLimiter::reserve`] granted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reservation {
    /// The granted instants as delays from the reservation, ascending.
    pub offsets: Vec<Duration>,
    /// Nothing granted: how long until a slot fits (or the pauses end).
    pub wait: Duration,
    /// Per limit of the request (in bit order), how long its pause still holds.
    pub pauses: Vec<Duration>,
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn acquire(&self, req: &RequestMeta<'_>) -> Result<Grant, LimiterError> {
        let bits = self.matched(req);
        if bits == 0 {
            return Ok(Grant::default());
        }
        let started = self.now_ns();
        let mut paused_ns = 0u64;
        loop {
            // Reserve one instant at which every matched limit allows the request.
            let (at, pause_end, epochs) = {
                let mut states = self.states.lock();
                let now = self.now_ns();
                let mut at = now;
                let mut pause_end = 0;
                for (i, s) in states.iter_mut().enumerate() {
                    if bits & (1 << i) == 0 {
                        continue;
                    }
                    s.learn(now);
                    s.steer(now);
                    pause_end = pause_end.max(s.pause_until);
                    at = at
                        .max(s.pause_until)
                        .max(s.hold_until)
                        .max(s.tat.saturating_sub(s.tau_ns()));
                }
                let mut epochs = 0u64;
                for (i, s) in states.iter_mut().enumerate() {
                    if bits & (1 << i) == 0 {
                        continue;
                    }
                    s.tat = s.tat.max(at) + s.interval_ns();
                    epochs = epochs.wrapping_add(s.pause_epoch);
                }
                (at, pause_end, epochs)
            };
            let now = self.now_ns();
            if pause_end > now {
                paused_ns += pause_end.min(at) - now;
            }
            if at > now {
                tokio::time::sleep_until(self.epoch + Duration::from_nanos(at)).await;
            }
            // A 429 elsewhere may have paused the scope while we slept: then our slot is
            // given up (capacity lost, never excess) and we queue again after the pause.
            let changed = {
                let mut states = self.states.lock();
                let e: u64 = states
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| bits & (1 << i) != 0)
                    .fold(0u64, |acc, (_, s)| acc.wrapping_add(s.pause_epoch));
                if e == epochs {
                    // Sent now: what the server's next answers may not have counted yet.
                    let now = self.now_ns();
                    for (i, s) in states.iter_mut().enumerate() {
                        if bits & (1 << i) != 0 {
                            s.headroom.granted(now);
                        }
                    }
                }
                e != epochs
            };
            if !changed {
                let total = self.now_ns() - started;
                return Ok(Grant {
                    waited: Duration::from_nanos(total.saturating_sub(paused_ns)),
                    paused: Duration::from_nanos(paused_ns),
                    limits: bits,
                });
            }
        }
    }

    fn report(&self) -> Vec<LimitReport> {
        LocalLimiter::report(self)
    }

    fn feedback(&self, req: &RequestMeta<'_>, fb: &Feedback) {
        let refused = fb.status == 429 || fb.status == 503;
        let bits = self.matched(req);
        if bits == 0 {
            return;
        }
        let now = self.now_ns();
        let mut states = self.states.lock();
        for (i, s) in states.iter_mut().enumerate() {
            if bits & (1 << i) == 0 {
                continue;
            }
            if let Some(server) = &fb.server {
                s.headroom.observe(server, fb.sent_ago, now);
                s.steer(now);
            }
            if !(refused || s.learner.is_some()) {
                continue;
            }
            if fb.status == 429 {
                s.throttled += 1;
            }
            if let (Some(l), Some(rate)) = (s.learner.as_mut(), fb.stated_rate) {
                let change = l.stated(rate, now);
                s.apply(change, now);
            }
            if let Some(l) = s.learner.as_mut() {
                if refused {
                    l.refused(now);
                } else {
                    l.accepted(now);
                }
            }
            s.learn(now);
            match (fb.retry_after, fb.pause_origin) {
                // An adaptive limit paused (briefly) when it cut its rate: the plan's blunt
                // default would stop everything for seconds on a refusal it already acted on.
                (Some(_), PauseOrigin::PlanDefault) if s.learner.is_some() => {}
                (Some(ra), _) => {
                    if let Some(l) = s.learner.as_mut() {
                        l.paused();
                    }
                    s.pause(now, u64::try_from(ra.as_nanos()).unwrap_or(u64::MAX));
                }
                (None, _) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacer_plan::spec::LimitScope;

    fn limit(rate: &str, burst: u32) -> Limit {
        let r: pacer_plan::Rate = rate.parse().unwrap();
        Limit {
            name: "l".into(),
            limit: r,
            shape: pacer_plan::LimitShape::SlidingWindow,
            burst,
            window: r.per(),
            scope: LimitScope::Worker,
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

    #[test]
    fn pacing_rate_follows_the_bound() {
        let l = limit("300/min", 5);
        let r = pacing_rate(&l, Duration::from_secs(1));
        assert!((r - 4.836).abs() < 0.01, "{r}");
        assert!(worst_case_in_window(r, &l, Duration::from_secs(1)) <= 300.0 + 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate() {
        let lim = LocalLimiter::with_spread(&[limit("100/s", 1)], Duration::ZERO);
        let start = Instant::now();
        for _ in 0..101 {
            lim.acquire(&META).await.unwrap();
        }
        let el = start.elapsed().as_secs_f64();
        // 100 intervals of (1/99 s) since burst 1 leaves 99 in the window
        assert!((el - 100.0 / 99.0).abs() < 0.01, "{el}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_bucket_is_paced_at_its_rate_with_its_burst_less_the_spreads_token() {
        let mut l = limit("5/s", 5);
        l.shape = pacer_plan::LimitShape::TokenBucket;
        let lim = LocalLimiter::new(&[l]);
        let start = Instant::now();
        // The first 4 at once (burst 5, one token kept for the 100 ms spread)...
        for _ in 0..4 {
            lim.acquire(&META).await.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "{:?}",
            start.elapsed()
        );
        // ...then the rate: 100 more take 100 intervals at 99.5% of 5/s.
        for _ in 0..100 {
            lim.acquire(&META).await.unwrap();
        }
        let rate = 100.0 / start.elapsed().as_secs_f64();
        assert!((0.97 * 5.0..5.0).contains(&rate), "{rate}");
        let rep = lim.report();
        assert!(rep[0].margin < 0.03, "{:?}", rep[0]);
        // The sliding-window reading of the same numbers, for contrast: 0.91/s.
        assert!(pacing_rate(&limit("5/s", 5), DEFAULT_SPREAD) < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_and_resumes_without_burst() {
        let lim = LocalLimiter::with_spread(&[limit("10/s", 5)], Duration::ZERO);
        lim.acquire(&META).await.unwrap();
        lim.feedback(
            &META,
            &Feedback {
                status: 429,
                retry_after: Some(Duration::from_secs(2)),
                pause_origin: PauseOrigin::Server,
                stated_rate: None,
                server: None,
                sent_ago: Duration::ZERO,
            },
        );
        let t0 = Instant::now();
        let g = lim.acquire(&META).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(2));
        assert!(g.paused >= Duration::from_millis(1900), "{g:?}");
        let t1 = Instant::now();
        for _ in 0..5 {
            lim.acquire(&META).await.unwrap();
        }
        // no burst after the pause: 5 more take 5 intervals (1/5.. s each at 5/s... rate 9/s -> ~0.55s)
        assert!(
            t1.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t1.elapsed()
        );
        let rep = lim.report();
        assert_eq!(rep[0].pauses, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_voids_queued_reservations_instead_of_waiting_them_out() {
        let lim = std::sync::Arc::new(LocalLimiter::with_spread(
            &[limit("10/s", 1)],
            Duration::ZERO,
        ));
        // 50 requests queue up: their slots reach ~5.5 s into the future.
        let mut waiters = Vec::new();
        for _ in 0..50 {
            let l = lim.clone();
            waiters.push(tokio::spawn(async move {
                l.acquire(&META).await.map(|_| Instant::now())
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let paused_at = Instant::now();
        lim.feedback(
            &META,
            &Feedback {
                status: 429,
                retry_after: Some(Duration::from_secs(1)),
                pause_origin: PauseOrigin::Server,
                stated_rate: None,
                server: None,
                sent_ago: Duration::ZERO,
            },
        );
        let mut after = Vec::new();
        for w in waiters {
            let t = w.await.unwrap().unwrap();
            if t > paused_at {
                after.push(t - paused_at);
            }
        }
        after.sort();
        // the first request after the pause goes when it ends, and the queue drains at the
        // rate from there: not after the voided slots
        assert!(after[0] >= Duration::from_secs(1), "{:?}", after[0]);
        assert!(after[0] < Duration::from_millis(1200), "{:?}", after[0]);
        let last = *after.last().unwrap();
        let expected =
            Duration::from_secs(1) + Duration::from_secs_f64((after.len() - 1) as f64 / 9.0);
        assert!(
            last < expected + Duration::from_millis(300),
            "{last:?} vs {expected:?}"
        );
    }

    /// A lease's reservation: slots at the rate across every limit of the request, none past
    /// the horizon, nothing while paused (and the pause said), then at the rate again.
    #[tokio::test(start_paused = true)]
    async fn a_reservation_grants_slots_at_the_rate_up_to_the_horizon() {
        // Paced at (L - b) / W with no spread: a at 9/s, b at 4/s.
        let mut a = limit("10/s", 1);
        a.name = "a".into();
        let mut b = limit("5/s", 1);
        b.name = "b".into();
        let lim = LocalLimiter::with_spread(&[a, b], Duration::ZERO);
        let ms =
            |r: &Reservation| -> Vec<u128> { r.offsets.iter().map(|o| o.as_millis()).collect() };
        let r = lim.reserve(0b01, 4, Duration::from_secs(2));
        assert_eq!(ms(&r), [0, 111, 222, 333]);
        // Both limits at once: the slower one decides, after the slots `a` gave already.
        let r = lim.reserve(0b11, 3, Duration::from_secs(2));
        assert_eq!(ms(&r), [444, 694, 944]);
        // The horizon: no slot of b further than 2 s ahead, then a wait.
        let r = lim.reserve(0b10, 100, Duration::from_secs(2));
        assert!(
            r.offsets
                .last()
                .is_some_and(|o| *o <= Duration::from_secs(2)),
            "{r:?}"
        );
        let r = lim.reserve(0b10, 1, Duration::from_secs(2));
        assert!(r.offsets.is_empty() && r.wait > Duration::ZERO, "{r:?}");
        // A pause: nothing granted, the pause said per limit.
        assert_eq!(
            lim.pause(0b01, Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        let r = lim.reserve(0b01, 1, Duration::from_secs(2));
        assert!(r.offsets.is_empty());
        assert_eq!(r.pauses, [Duration::from_secs(3)]);
        assert_eq!(r.wait, Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(3)).await;
        // After it, at the rate again and without a burst.
        let r = lim.reserve(0b01, 2, Duration::from_secs(2));
        assert_eq!(ms(&r), [0, 111]);
    }

    /// 100 requests at `lim` from now: the rate they went at (per second).
    async fn rate_of_100(lim: &LocalLimiter) -> f64 {
        let start = Instant::now();
        lim.acquire(&META).await.unwrap();
        for _ in 0..100 {
            lim.acquire(&META).await.unwrap();
        }
        100.0 / start.elapsed().as_secs_f64()
    }

    fn answer(remaining: u64, reset: Duration) -> Feedback {
        Feedback {
            status: 200,
            retry_after: None,
            pause_origin: PauseOrigin::Server,
            stated_rate: None,
            server: Some(crate::headroom::ServerReport {
                remaining,
                reset: Some(reset),
                limit: Some(200),
            }),
            sent_ago: Duration::ZERO,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_adaptive_fixed_window_goes_at_once_to_what_the_server_says_is_left() {
        // A ceiling of 200 per 10 s; the server says 60 are left for the next 6 s.
        let mut l = limit("200/10s", 1);
        (l.shape, l.adaptive) = (pacer_plan::LimitShape::FixedWindow, true);
        let lim = LocalLimiter::with_spread(&[l], Duration::ZERO);
        lim.feedback(&META, &answer(60, Duration::from_secs(6)));
        // 60 over 6 s (10/s, not the ceiling's 19.9/s), then the window is spent: a hold
        // until its reset, and the paced rate until the next answer.
        let start = Instant::now();
        for _ in 0..60 {
            lim.acquire(&META).await.unwrap();
        }
        let rate = 59.0 / start.elapsed().as_secs_f64();
        assert!((9.5..=10.5).contains(&rate), "{rate}");
        lim.acquire(&META).await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(6),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reserve_is_left_unused() {
        // 200 per 10 s (20/s), reserve 25%: at most 15/s with the server's headers.
        let mut l = limit("200/10s", 1);
        l.reserve = Some("25%".parse().unwrap());
        let lim = LocalLimiter::with_spread(&[l], Duration::ZERO);
        lim.feedback(&META, &answer(200, Duration::from_secs(10)));
        let rate = rate_of_100(&lim).await;
        assert!((14.5..=15.01).contains(&rate), "{rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn all_matched_limits_or_none() {
        let mut a = limit("10/s", 1);
        a.name = "a".into();
        let mut b = limit("1/s", 1);
        b.name = "b".into();
        b.path_prefix = Some("/slow".into());
        let lim = LocalLimiter::with_spread(&[a, b], Duration::ZERO);
        let slow = RequestMeta {
            method: "GET",
            path: "/slow/1",
            request: "s",
        };
        let g = lim.acquire(&slow).await.unwrap();
        assert_eq!(g.limits, 0b11);
        let g = lim.acquire(&META).await.unwrap();
        assert_eq!(g.limits, 0b01);
    }
}
