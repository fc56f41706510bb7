//! What the server says is left decides the rate: the one place that turns a limit's declared
//! numbers, the server's rate-limit headers (remaining, reset, its stated limit), the plan's
//! `reserve:` and what pacer itself sent into the rate pacer may use for the limit ([`decide`],
//! plain arithmetic), and the small state that feeds it per limit ([`Headroom`]: the server's
//! window end, others' traffic, pacer's own recent grants).
//!
//! Why: a server's counter counts everyone on the limit (an organisation's production traffic
//! too), and a fixed window allows its whole `L` from each reset, which a client pacing at the
//! sliding window's `(L - b)/(W + D)` never uses. With the server's `remaining` and `reset`:
//!
//! - **fixed windows** (`shape: fixed-window`) spend what is left until the reset,
//!   `(remaining − ours in flight − others·T − reserve·W) / T`, holding when nothing is left
//!   until the reset, so each server window is used whole from wherever it started (aligned to
//!   the server's reset, never to our guess of it), less the window's reserve;
//! - **other shapes** run at their paced rate less the reserve, and hold until the reset when
//!   the server says nothing is left;
//! - **others' traffic** (measured on fixed windows, whose count only grows within a window):
//!   between two answers of one window, what the server counted more less what pacer sent
//!   between the two answers' requests, summed over the window (its older half forgotten as
//!   the window goes on) and divided by the time it spans: pacer's share falls within a window
//!   when others rise and comes back when they fall. A sliding window's or a bucket's count
//!   also falls as old requests leave or tokens refill, which the headers do not say, so
//!   there pacer does not guess others' rate.
//! - **in a fleet** a process sees its own answers but the fleet's grants only through its
//!   leases: each lease says how many slots the whole fleet was granted on the limit before it
//!   ([`SlotLog`]), so the fleet's use between two answers is read off its schedule, and
//!   others' traffic is what the server counted beyond it ([`Headroom::in_fleet`]).
//!
//! Every estimate errs on the safe side: a reset in whole seconds is read as an upper bound
//! (servers round it up), so the window is taken to end no earlier than it does; requests
//! granted since the answered one was sent count as not yet seen by the server.
//!
//! Times are nanoseconds of the caller's clock (as in [`crate::learn`]): no clock here.

use std::time::Duration;

use pacer_plan::bounds::MAX_RATE_PER_SEC;
use pacer_plan::{Limit, LimitShape};

/// The reset headers state whole seconds (inin, X-RateLimit, IETF `t`): a window's end is known
/// only within this much from one answer, better from several (see [`Headroom::observe`]).
pub const RESET_GRANULARITY: Duration = Duration::from_secs(1);

/// Others' rate is measured over at least this share of a window: a count over the first
/// instants of a window divided by its tiny length would be noise.
pub const MIN_MEASURE_SHARE: f64 = 0.1;

/// Others' rate is measured over at least this long (for the same reason, on short windows).
pub const MIN_MEASURE: Duration = Duration::from_millis(200);

/// However much others take, pacer keeps sending at this share of its paced rate so it keeps
/// hearing from the server and notices when others fall (one request every 50 intervals). A
/// fixed window that is spent holds instead, until its reset.
pub const PROBE_SHARE: f64 = 0.02;

/// A fixed window's remaining count that grows by more than this share of the limit since the
/// last answer is a new window. Less is answers overtaking each other (concurrent requests):
/// taking those for a new window would forget the window end the earlier answers pinned down.
pub const GREW_SHARE: f64 = 0.1;

/// What the server's headers said about a limit, per answer: [`crate::Feedback::server`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerReport {
    /// Requests the server says may still be sent (everyone's use counted).
    pub remaining: u64,
    /// Until the server's count is full again (a window's end), as a delay from the answer;
    /// an epoch reset converted to a delay. At most [`MAX_RESET`].
    pub reset: Option<Duration>,
    /// The limit the server states (`X-RateLimit-Limit`, `inin-ratelimit-allowed`, IETF `q`).
    pub limit: Option<u64>,
}

/// The longest reset taken from a server: a day (longer limits exist, but pacer's runs are
/// shorter, and a hostile header must not hold a limit for years).
pub const MAX_RESET: Duration = Duration::from_secs(86_400);

/// Everything [`decide`] needs, as numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Inputs {
    pub shape: LimitShape,
    /// The limit's window (seconds).
    pub window: f64,
    /// The rate the shape paces at without headers (`pacer_plan::shape::pace`), per second.
    pub paced: f64,
    /// The reserve as a rate (per second).
    pub reserve: f64,
    /// Others' traffic on the limit (per second), as measured.
    pub others: f64,
    /// What the server said is left, and until when (seconds from now, an upper bound).
    pub remaining: f64,
    pub reset: Option<f64>,
    /// What pacer granted since the answer's request was sent (not yet counted by the server).
    pub ours_since: f64,
}

/// The rate pacer may use for a limit now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Pace at most this rate (per second).
    Rate(f64),
    /// Nothing is left before the server's reset: send nothing for this long.
    Hold(Duration),
}

/// The rate pacer may use for a limit (see the module doc). Never NaN, never negative, never
/// infinite: every input is clamped first.
pub fn decide(i: &Inputs) -> Decision {
    let fin = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
    let paced = fin(i.paced);
    let others = fin(i.others);
    let reserve = fin(i.reserve);
    let steady = (paced - others - reserve).max(paced * PROBE_SHARE);
    match (i.shape, i.reset) {
        (LimitShape::FixedWindow, Some(t)) => {
            let t = fin(t).min(MAX_RESET.as_secs_f64());
            // The reserve is the window's: what of it is still unused at the reset stays so,
            // and others take their rate for the rest of the window.
            let left = fin(i.remaining) - fin(i.ours_since) - others * t - reserve * fin(i.window);
            if left < 1.0 {
                return Decision::Hold(Duration::from_secs_f64(t));
            }
            // A window that ends within a millisecond is spent at once (the rest of it is
            // at most `left` requests, which the server allows). No faster than any plan may
            // go: a server's huge `remaining` over a tiny reset would otherwise overflow to an
            // infinite rate.
            Decision::Rate((left / t.max(MIN_SPAN_SECS)).min(MAX_RATE_PER_SEC))
        }
        // The server says nothing is left until its reset (its count, whatever its shape).
        (_, Some(t)) if fin(i.remaining) - fin(i.ours_since) < 1.0 => {
            Decision::Hold(Duration::from_secs_f64(fin(t).min(MAX_RESET.as_secs_f64())))
        }
        _ => Decision::Rate(steady.min(paced)),
    }
}

/// The shortest span a fixed window's rest is spread over (seconds): 1 ms.
const MIN_SPAN_SECS: f64 = 0.001;

/// Nanoseconds in a second.
const NS: f64 = 1e9;

/// pacer's own grants of one limit over the last window, in buckets (bounded memory whatever
/// the rate): how many it sent in a span, counting whole buckets (so a little more than sent:
/// the side that makes others' traffic look smaller is the span's far end, a bucket at most).
#[derive(Clone, Debug)]
pub struct GrantLog {
    /// The last [`RECENT_GRANTS`] grant times (and how many each), exactly: spans they cover
    /// (what was sent since an answer's request) are counted exactly, not in whole buckets.
    recent: std::collections::VecDeque<(u64, u32)>,
    bucket_ns: u64,
    /// Counts per bucket, a ring indexed by `time / bucket_ns`.
    counts: Vec<u32>,
    /// The bucket number the ring's newest entry is for.
    newest: u64,
}

/// Buckets per window in a [`GrantLog`] (and at most this many in all).
const LOG_BUCKETS: u64 = 1024;
/// Grant times a [`GrantLog`] keeps exactly: more than one round trip's worth at any rate
/// pacer runs a single limit at in one process.
const RECENT_GRANTS: usize = 4096;
/// The narrowest bucket: 1 ms.
const MIN_BUCKET_NS: u64 = 1_000_000;

impl GrantLog {
    pub fn new(window: Duration) -> Self {
        let w = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let bucket_ns = (w / LOG_BUCKETS).max(MIN_BUCKET_NS);
        // One window plus one bucket of history.
        let n = (w / bucket_ns).saturating_add(2).min(LOG_BUCKETS + 2);
        Self {
            recent: std::collections::VecDeque::new(),
            bucket_ns,
            counts: vec![0; n as usize],
            newest: 0,
        }
    }

    fn roll(&mut self, now: u64) {
        let b = now / self.bucket_ns;
        if b <= self.newest {
            return;
        }
        let len = self.counts.len() as u64;
        let clear = (b - self.newest).min(len);
        for k in 0..clear {
            let idx = ((b - k) % len) as usize;
            self.counts[idx] = 0;
        }
        self.newest = b;
    }

    /// One grant at `now`.
    pub fn add(&mut self, now: u64) {
        self.add_n(now, 1);
    }

    /// `n` grants at `now`.
    pub fn add_n(&mut self, now: u64, n: u32) {
        if self.recent.len() == RECENT_GRANTS {
            self.recent.pop_front();
        }
        self.recent.push_back((now, n));
        self.roll(now);
        let len = self.counts.len() as u64;
        let idx = ((now / self.bucket_ns) % len) as usize;
        self.counts[idx] = self.counts[idx].saturating_add(n);
    }

    /// This process's own grants in the last `span` (each once, whatever it counts for in a
    /// fleet): what it has in flight. Exact while the recent times cover the span.
    pub fn own_since(&mut self, now: u64, span: u64) -> u64 {
        let from = now.saturating_sub(span);
        let covered = self.recent.len() < RECENT_GRANTS
            || self.recent.front().is_some_and(|&(t, _)| t <= from);
        if !covered {
            return self.since(now, span);
        }
        let first = self.recent.partition_point(|&(t, _)| t <= from);
        let last = self.recent.partition_point(|&(t, _)| t <= now);
        last.saturating_sub(first) as u64
    }

    /// Grants in the last `span` before `now` (after `now - span`): exact while the recent
    /// times cover the span, else in whole buckets (at most the log's length).
    pub fn since(&mut self, now: u64, span: u64) -> u64 {
        let from = now.saturating_sub(span);
        let covered = self.recent.len() < RECENT_GRANTS
            || self.recent.front().is_some_and(|&(t, _)| t <= from);
        if covered {
            let first = self.recent.partition_point(|&(t, _)| t <= from);
            let last = self.recent.partition_point(|&(t, _)| t <= now);
            return self
                .recent
                .range(first..last.max(first))
                .map(|&(_, n)| u64::from(n))
                .sum();
        }
        self.roll(now);
        let len = self.counts.len() as u64;
        let newest = now / self.bucket_ns;
        let first = now.saturating_sub(span) / self.bucket_ns;
        let n = (newest - first + 1).min(len);
        (0..n)
            .map(|k| u64::from(self.counts[((newest - k) % len) as usize]))
            .sum()
    }
}

/// A fleet's schedule as one process learns it from its leases: points (time, the fleet's slots
/// on the limit up to and including that time), from which the fleet's use between two
/// instants is interpolated. Each lease adds its first and last slot: its slots are consecutive
/// in the fleet's count, and the other processes' fall between two of this process's leases,
/// counted there as spread evenly (their sum over a window is exact, only its split in time is
/// not). Bounded: points older than [`SLOT_HISTORY_WINDOWS`] windows, or beyond
/// [`MAX_SLOT_POINTS`], are forgotten.
#[derive(Clone, Debug, Default)]
pub struct SlotLog {
    /// (ns of the caller's clock, cumulative slots), in the fleet's count order.
    points: std::collections::VecDeque<(u64, u64)>,
}

/// How many windows of a fleet's schedule a [`SlotLog`] keeps: the two answers between which
/// the fleet's use is read are at most a window apart (an answer of an older window starts a
/// new one), and the lease horizon adds at most a couple of seconds ahead.
const SLOT_HISTORY_WINDOWS: u64 = 2;
/// The most points a [`SlotLog`] keeps (two per lease; a busy process leases a few times a
/// second per class, so this is minutes of leases).
const MAX_SLOT_POINTS: usize = 4096;

impl SlotLog {
    /// The fleet's slot number `n` is at `at` (ns), as a lease said.
    pub fn add(&mut self, at: u64, n: u64) {
        // Leases of different classes sharing the limit may answer out of order: keep the
        // count's order (the times follow it up to the clock mapping's jitter).
        let pos = self.points.partition_point(|&(_, m)| m <= n);
        if pos > 0 && self.points[pos - 1].1 == n {
            return;
        }
        self.points.insert(pos, (at, n));
        while self.points.len() > MAX_SLOT_POINTS {
            self.points.pop_front();
        }
    }

    /// Forget points older than `keep_ns` before `now`, keeping the newest old one (the start
    /// of the interpolation to the next).
    fn trim(&mut self, now: u64, keep_ns: u64) {
        let from = now.saturating_sub(keep_ns);
        while self.points.len() > 2 && self.points.get(1).is_some_and(|&(t, _)| t < from) {
            self.points.pop_front();
        }
    }

    /// The fleet's slots up to `t` (interpolated between the points around it), or `None`
    /// when `t` is outside what the points cover (before the first, after the last: the fleet
    /// may have been granted slots there that this process has not heard of yet).
    pub fn at(&self, t: u64) -> Option<f64> {
        let first = *self.points.front()?;
        let last = *self.points.back()?;
        if t < first.0 || t > last.0 {
            return None;
        }
        let i = self.points.partition_point(|&(pt, _)| pt <= t);
        if i == 0 || i >= self.points.len() {
            return Some(last.1 as f64);
        }
        let (t0, n0) = self.points[i - 1];
        let (t1, n1) = self.points[i];
        if t1 <= t0 {
            return Some(n1 as f64);
        }
        let f = (t - t0) as f64 / (t1 - t0) as f64;
        Some(n0 as f64 + f * (n1 as f64 - n0 as f64))
    }
}

/// One limit's view of the server: fed every answer's [`ServerReport`] and every grant, asked
/// for a [`Decision`].
#[derive(Clone, Debug)]
pub struct Headroom {
    shape: LimitShape,
    window_ns: u64,
    /// Requests per window as declared.
    declared: f64,
    /// The shape's paced rate as declared.
    paced: f64,
    reserve: f64,
    grants: GrantLog,
    /// The last answer's numbers and when it came (`None`: the server sent no headers yet).
    last: Option<Seen>,
    /// The server's current window end (ns), the least upper bound answers gave.
    window_end: Option<u64>,
    /// Others' rate (per second), as last measured.
    others: f64,
    /// Others' requests and the time they were counted over, in the current window.
    acc_others: f64,
    acc_ns: u64,
    /// How long others were measured over in the current window (not halved).
    window_measured_ns: u64,
    /// Others' rate as measured at the end of the last window measured over at least half its
    /// length: what reports show ([`Headroom::state`]). The current estimate also moves with
    /// the end of a run (a fleet's processes leave with slots leased and unused, which count
    /// as the fleet's), which a report must not take for others' traffic.
    whole_others: Option<f64>,
    /// In a fleet ([`Headroom::in_fleet`]): the fleet's schedule, whose use between two answers
    /// is pacer's; `None`: this process is pacer.
    fleet: Option<SlotLog>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Seen {
    at: u64,
    /// When the answered request was sent.
    sent_at: u64,
    remaining: f64,
    ours_since: f64,
    limit: Option<u64>,
}

/// What [`Headroom`] last knew, for reports and the fleet's server state.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeadroomState {
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
    /// The server's window end, ns of the caller's clock.
    pub reset_at: Option<u64>,
    /// Others' rate (per second) at the end of the last window measured over at least half its
    /// length; before one, the current estimate.
    pub others_rate: f64,
}

impl Headroom {
    /// For `limit`, paced at `paced` per second without headers.
    pub fn new(limit: &Limit, paced: f64) -> Self {
        let declared = limit.limit.as_per_sec() * limit.window.as_secs_f64();
        Self {
            shape: limit.shape,
            window_ns: u64::try_from(limit.window.as_nanos()).unwrap_or(u64::MAX),
            declared,
            paced,
            reserve: limit
                .reserve
                .map_or(0.0, |r| r.per_sec(limit.limit.as_per_sec())),
            grants: GrantLog::new(limit.window),
            last: None,
            window_end: None,
            others: 0.0,
            acc_others: 0.0,
            acc_ns: 0,
            window_measured_ns: 0,
            whole_others: None,
            fleet: None,
        }
    }

    /// Does the limit care about the server's headers at all? (It always records them, for
    /// the report; only fixed windows and reserves change the rate.)
    pub fn steers(&self) -> bool {
        self.shape == LimitShape::FixedWindow || self.reserve > 0.0
    }

    /// Is the limit's schedule aligned to the server's window (a fixed window whose reset the
    /// server told)? Then the server's rest decides the rate, above the sliding window's too.
    pub fn aligned(&self) -> bool {
        self.shape == LimitShape::FixedWindow && self.window_end.is_some()
    }

    /// pacer granted a request of this limit at `now`.
    pub fn granted(&mut self, now: u64) {
        self.grants.add(now);
    }

    /// A fleet process: pacer's use is the fleet's, as its leases tell ([`Headroom::fleet_slots`]);
    /// others' traffic is what the server counted beyond it, and the fleet's lease rate leaves it
    /// ([`Headroom::fleet_rate`]).
    pub fn in_fleet(mut self) -> Self {
        self.fleet = Some(SlotLog::default());
        self
    }

    /// A lease granted this process the fleet's slots `first..=last` (cumulative numbers) at
    /// `first_at` and `last_at` (ns).
    pub fn fleet_slots(&mut self, first: (u64, u64), last: (u64, u64)) {
        let keep = self.window_ns.saturating_mul(SLOT_HISTORY_WINDOWS);
        if let Some(log) = self.fleet.as_mut() {
            log.add(first.0, first.1);
            log.add(last.0, last.1);
            log.trim(first.0, keep);
        }
    }

    /// pacer's requests of the limit sent in `(from, to]` (ns): the fleet's (from its schedule;
    /// `None` while the schedule does not cover both ends) or this process's own.
    fn ours_between(&mut self, from: u64, to: u64, now: u64) -> Option<f64> {
        match &self.fleet {
            Some(log) => Some(log.at(to)? - log.at(from)?),
            None => Some(
                self.grants.since(now, now.saturating_sub(from)) as f64
                    - self.grants.since(now, now.saturating_sub(to)) as f64,
            ),
        }
    }

    /// An answer at `now` to a request sent `sent_ago` before, with the server's headers.
    pub fn observe(&mut self, r: &ServerReport, sent_ago: Duration, now: u64) {
        let sent_ns = u64::try_from(sent_ago.as_nanos()).unwrap_or(u64::MAX);
        let sent_at = now.saturating_sub(sent_ns);
        let ours_since = self.grants.own_since(now, sent_ns) as f64;
        let remaining = r.remaining as f64;
        let limit = r.limit.map_or(self.declared, |l| l as f64);
        let mut new_window = self.last.is_none();
        if let Some(reset) = r.reset {
            let reset_ns = u64::try_from(reset.min(MAX_RESET).as_nanos()).unwrap_or(u64::MAX);
            let end = now.saturating_add(reset_ns);
            // The next window: the last one ended, an end later by more than half a window
            // (and the granularity), or (a fixed window's count only grows within a window)
            // more left than the last answer said. Otherwise the same window: keep the
            // earliest end any answer allowed.
            let granularity = u64::try_from(RESET_GRANULARITY.as_nanos()).unwrap_or(0);
            let slack = (limit * GREW_SHARE).max(1.0);
            let grew = self.shape == LimitShape::FixedWindow
                && self.last.is_some_and(|l| remaining > l.remaining + slack);
            self.window_end = Some(match self.window_end {
                Some(e)
                    if !grew
                        && now < e
                        && end <= e.saturating_add(self.window_ns / 2 + granularity) =>
                {
                    e.min(end)
                }
                _ => {
                    new_window = true;
                    end
                }
            });
        }
        // Others' traffic (fixed windows, whose count only grows within a window): between two
        // answers of one window the server counted `last.remaining - remaining` more, of which
        // ours are what we sent between the two answers' requests; the rest is others'. Summed
        // over the window and divided by the time it spans, it does not depend on where the
        // window started (which pacer knows only within the reset's granularity).
        if self.shape == LimitShape::FixedWindow
            && let Some(last) = self.last
            && !new_window
            && now > last.at
        {
            // Signed: answers may come back out of their requests' order.
            let ours = if sent_at >= last.sent_at {
                self.ours_between(last.sent_at, sent_at, now)
            } else {
                self.ours_between(sent_at, last.sent_at, now).map(|o| -o)
            };
            if let Some(ours) = ours {
                self.acc_others += (last.remaining - remaining) - ours;
                self.acc_ns += now - last.at;
                self.window_measured_ns += now - last.at;
            }
            let min_span =
                (self.window_ns as f64 * MIN_MEASURE_SHARE).max(MIN_MEASURE.as_nanos() as f64);
            if self.acc_ns as f64 >= min_span {
                self.others = (self.acc_others / (self.acc_ns as f64 / NS)).max(0.0);
            }
            // Forget the oldest half of a long sum: the estimate follows others within a
            // window.
            if self.acc_ns > self.window_ns / 2 {
                self.acc_others /= 2.0;
                self.acc_ns /= 2;
            }
        }
        if new_window {
            if self.window_measured_ns >= self.window_ns / 2 {
                self.whole_others = Some(self.others);
            }
            (self.acc_others, self.acc_ns, self.window_measured_ns) = (0.0, 0, 0);
        }
        self.last = Some(Seen {
            at: now,
            sent_at,
            remaining,
            ours_since,
            limit: r.limit,
        });
    }

    /// The rate a fleet leases the limit at ([`crate::fleet`]: the rate is an argument of the
    /// shared schedule, which hands out slots up to about a second ahead, so it must not swing
    /// with every answer: each process hears a fraction of the answers, later): for an aligned
    /// fixed window the window's own rate `(L - 1)/W` less the reserve, never below the
    /// shape's paced rate less the reserve (a window the server says is spent holds instead:
    /// [`Headroom::decision`]); otherwise the paced rate less the reserve. A fleet that measures
    /// others ([`Headroom::in_fleet`]) leaves their rate too: a steady rate, which uses the
    /// window's rest as evenly as others do. Never below [`PROBE_SHARE`] of the paced rate: a
    /// slot at a crawl would push the shared schedule far ahead for every process.
    pub fn fleet_rate(&mut self, now: u64) -> f64 {
        let least = self.paced * PROBE_SHARE;
        let others = if self.fleet.is_some() {
            self.others
        } else {
            0.0
        };
        let floor = (self.paced - self.reserve - others).max(least);
        // One request of the window kept for the boundary: the last slot of a window at
        // exactly `L/W` would meet the server's reset.
        let window_rate =
            (self.declared - 1.0).max(0.0) / (self.window_ns as f64 / NS).max(MIN_SPAN_SECS);
        let aligned = self.aligned();
        match self.decision(now) {
            Some(Decision::Rate(_)) if aligned => (window_rate - self.reserve - others).max(floor),
            Some(Decision::Rate(r)) => r.min(floor).max(least),
            Some(Decision::Hold(_)) | None => floor,
        }
    }

    /// The rate to use now, or `None` when the server has said nothing (pace as declared).
    pub fn decision(&mut self, now: u64) -> Option<Decision> {
        let seen = self.last?;
        let reset = self.window_end.and_then(|end| {
            // After the window's end the server has reset: a fresh window, until an answer says.
            (end > now).then(|| (end - now) as f64 / NS)
        });
        let fresh = self.window_end.is_some_and(|end| end <= now);
        // Ours since the last answer's request was sent, and since that answer.
        let ours_since =
            seen.ours_since + self.grants.own_since(now, now - seen.at.min(now)) as f64;
        let remaining = if fresh {
            seen.limit.map_or(self.declared, |l| l as f64)
        } else {
            seen.remaining
        };
        let reset = if fresh {
            Some(self.window_ns as f64 / NS)
        } else {
            reset
        };
        let i = Inputs {
            shape: self.shape,
            window: self.window_ns as f64 / NS,
            paced: self.paced,
            reserve: self.reserve,
            others: self.others,
            remaining,
            reset,
            ours_since: if fresh { 0.0 } else { ours_since },
        };
        Some(match decide(&i) {
            // Right after a reset pacer does not know where the new window started: the
            // shape's paced rate until an answer says, and never a hold (only answers tell
            // what is left, and a hold would get none).
            Decision::Rate(r) if fresh => Decision::Rate(r.min(self.paced)),
            Decision::Hold(_) if fresh => Decision::Rate(self.paced * PROBE_SHARE),
            d => d,
        })
    }

    /// What the server last said, and others' rate.
    pub fn state(&self) -> HeadroomState {
        HeadroomState {
            remaining: self.last.map(|s| s.remaining as u64),
            limit: self.last.and_then(|s| s.limit),
            reset_at: self.window_end,
            others_rate: self.whole_others.unwrap_or(self.others),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inputs(shape: LimitShape) -> Inputs {
        Inputs {
            shape,
            window: 10.0,
            paced: 9.9,
            reserve: 0.0,
            others: 0.0,
            remaining: 100.0,
            reset: Some(10.0),
            ours_since: 0.0,
        }
    }

    #[test]
    fn a_fixed_window_spends_what_is_left_until_its_reset() {
        let mut i = inputs(LimitShape::FixedWindow);
        // 100 left over 10 s: 10/s, above the sliding window's 9.9/s.
        assert_eq!(decide(&i), Decision::Rate(10.0));
        // Behind (60 left, 4 s to go): catch up.
        (i.remaining, i.reset) = (60.0, Some(4.0));
        assert_eq!(decide(&i), Decision::Rate(15.0));
        // Spent: hold until the reset.
        (i.remaining, i.ours_since) = (3.0, 3.0);
        assert_eq!(decide(&i), Decision::Hold(Duration::from_secs(4)));
        // Others take their rate of the rest, the reserve its share of the window (10 s).
        (i.remaining, i.ours_since, i.others, i.reserve) = (60.0, 0.0, 3.0, 1.0);
        assert_eq!(decide(&i), Decision::Rate(9.5));
    }

    #[test]
    fn without_a_reset_or_for_other_shapes_the_paced_rate_less_others_and_the_reserve() {
        for shape in [
            LimitShape::SlidingWindow,
            LimitShape::TokenBucket,
            LimitShape::FixedWindow,
        ] {
            let mut i = inputs(shape);
            i.reset = None;
            (i.others, i.reserve) = (3.0, 1.0);
            let Decision::Rate(r) = decide(&i) else {
                panic!("{shape:?}")
            };
            assert!((r - 5.9).abs() < 1e-9, "{shape:?} {r}");
            // Others take it all: a trickle to keep hearing from the server.
            i.others = 100.0;
            assert_eq!(decide(&i), Decision::Rate(9.9 * PROBE_SHARE));
        }
    }

    fn limit(shape: LimitShape, reserve: Option<&str>) -> Limit {
        let r: pacer_plan::Rate = "100/10s".parse().unwrap();
        Limit {
            name: "l".into(),
            limit: r,
            shape,
            burst: 1,
            window: r.per(),
            scope: pacer_plan::spec::LimitScope::Worker,
            method_in: vec![],
            path_prefix: None,
            request_in: vec![],
            adaptive: false,
            spread: None,
            reserve: reserve.map(|s| s.parse().unwrap()),
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn others_are_what_the_server_counted_less_ours() {
        let mut h = Headroom::new(&limit(LimitShape::FixedWindow, Some("10%")), 9.0);
        assert_eq!(h.decision(0), None, "no headers yet: pace as declared");
        // A 10 s window of 100: we send 4/s (one every 250 ms, each answered 1 ms later),
        // others 5/s; each answer says what is left.
        for k in 0..20u64 {
            let t = k * S / 4;
            h.granted(t);
            let rep = ServerReport {
                remaining: 100 - (9 * (k + 1)) / 4,
                reset: Some(Duration::from_secs(10 - t / S)),
                limit: Some(100),
            };
            h.observe(&rep, Duration::from_millis(1), t + S / 1000);
        }
        let st = h.state();
        assert!((st.others_rate - 5.0).abs() < 0.6, "{st:?}");
        // Left at 4.75 s: 100 - 42 = 58, less others' 5/s for the 5.25 s to the reset and the
        // window's reserve of 10: ~22 over 5.25 s.
        let Some(Decision::Rate(r)) = h.decision(19 * S / 4 + S / 1000) else {
            panic!()
        };
        assert!((3.5..5.0).contains(&r), "{r}");
        // After the reset: a fresh window at no more than the paced rate.
        let Some(Decision::Rate(r)) = h.decision(11 * S) else {
            panic!()
        };
        assert!(r <= 9.0, "{r}");
    }

    #[test]
    fn a_fleet_leases_an_aligned_window_at_its_own_rate_less_the_reserve() {
        // 100/10s, reserve 10% (1/s), paced at 9/s without headers.
        let mut h = Headroom::new(&limit(LimitShape::FixedWindow, Some("10%")), 9.0).in_fleet();
        assert!(
            (h.fleet_rate(0) - 8.0).abs() < 1e-9,
            "no headers: paced less the reserve"
        );
        let rep = ServerReport {
            remaining: 90,
            reset: Some(Duration::from_secs(9)),
            limit: Some(100),
        };
        h.observe(&rep, Duration::ZERO, S);
        // (100 - 1)/10 - 1 = 8.9/s, above the paced rate less the reserve.
        assert!((h.fleet_rate(S) - 8.9).abs() < 1e-9, "{}", h.fleet_rate(S));
        // A sliding window is only ever slowed by its reserve.
        let mut h = Headroom::new(&limit(LimitShape::SlidingWindow, Some("10%")), 9.0);
        h.observe(&rep, Duration::ZERO, S);
        assert!((h.fleet_rate(S) - 8.0).abs() < 1e-9);
    }

    #[test]
    fn a_fleet_tells_its_own_use_from_others_by_its_schedule() {
        // 100/10s, reserve 10% (1/s). The fleet sends 4/s, one slot of each four this
        // process's (its leases say the fleet's count before them); others outside pacer send
        // 3/s, so the server counts 7/s, as this process's answers say.
        let mut h = Headroom::new(&limit(LimitShape::FixedWindow, Some("10%")), 9.0).in_fleet();
        for k in 0..36u64 {
            let t = k * S / 4;
            if k % 4 == 0 {
                // Our lease: the fleet's slot k + 1 is at t.
                h.fleet_slots((t, k + 1), (t, k + 1));
                h.granted(t);
                let rep = ServerReport {
                    remaining: 100 - (7 * (k + 1)) / 4,
                    reset: Some(Duration::from_secs(10 - t / S)),
                    limit: Some(100),
                };
                h.observe(&rep, Duration::from_millis(1), t + S / 1000);
            }
        }
        let st = h.state();
        assert!((st.others_rate - 3.0).abs() < 0.5, "{st:?}");
        // The lease rate leaves others' rate and the reserve: (100 - 1)/10 - 1 - 3 = 5.9/s.
        let r = h.fleet_rate(8 * S + S / 1000);
        assert!((r - 5.9).abs() < 0.5, "{r}");
        // Without a schedule covering the answers, others are not guessed.
        let mut h = Headroom::new(&limit(LimitShape::FixedWindow, None), 9.0).in_fleet();
        for k in 0..8u64 {
            let rep = ServerReport {
                remaining: 100 - 5 * k,
                reset: Some(Duration::from_secs(9)),
                limit: Some(100),
            };
            h.observe(&rep, Duration::ZERO, k * S / 10);
        }
        assert_eq!(h.state().others_rate, 0.0);
    }

    #[test]
    fn the_slot_log_interpolates_between_leases_and_knows_its_bounds() {
        let mut log = SlotLog::default();
        assert_eq!(log.at(5), None);
        log.add(100, 11);
        log.add(200, 21);
        // Out of order (another class's lease): kept in the count's order.
        log.add(150, 15);
        assert_eq!(log.at(100), Some(11.0));
        assert_eq!(log.at(125), Some(13.0));
        assert_eq!(log.at(175), Some(18.0));
        assert_eq!(log.at(99), None);
        assert_eq!(log.at(201), None);
    }

    #[test]
    fn a_reset_in_whole_seconds_narrows_to_the_earliest_end_answers_allowed() {
        let mut h = Headroom::new(&limit(LimitShape::FixedWindow, None), 9.0);
        let rep = |reset| ServerReport {
            remaining: 50,
            reset: Some(Duration::from_secs(reset)),
            limit: Some(100),
        };
        h.observe(&rep(5), Duration::ZERO, S / 2); // ends by 5.5 s
        h.observe(&rep(5), Duration::ZERO, S / 5 * 2); // by 5.4 s: earlier, kept
        assert_eq!(h.state().reset_at, Some(5 * S + 2 * S / 5));
        h.observe(&rep(10), Duration::ZERO, 6 * S); // a new window
        assert_eq!(h.state().reset_at, Some(16 * S));
    }

    #[test]
    fn the_grant_log_counts_a_span_in_whole_buckets() {
        let mut g = GrantLog::new(Duration::from_secs(1));
        for k in 0..100 {
            g.add(k * 10_000_000 + 1_000_000);
        }
        assert_eq!(g.since(991_000_000, 1_000_000_000), 100);
        // Recent spans are exact: (941, 991] ms holds 951..=991.
        assert_eq!(g.since(991_000_000, 50_000_000), 5);
        // Old grants fall out.
        assert_eq!(g.since(5 * S, S), 0);
        // Past the exact times, whole buckets.
        for k in 0..(RECENT_GRANTS as u64 + 10) {
            g.add(6 * S + k * 100_000);
        }
        // (6.0, 6.1] s holds 1000 grants; whole 1 ms buckets add up to one bucket's 10.
        let n = g.since(6 * S + S / 10, S / 10);
        assert!((1000..=1010).contains(&n), "{n}");
    }

    proptest! {
        #[test]
        fn decide_is_finite_and_never_negative(
            shape in prop_oneof![Just(LimitShape::FixedWindow), Just(LimitShape::SlidingWindow), Just(LimitShape::TokenBucket)],
            paced in prop_oneof![any::<f64>(), 0.0..1e6],
            reserve in prop_oneof![any::<f64>(), 0.0..1e3],
            others in prop_oneof![any::<f64>(), 0.0..1e6],
            remaining in prop_oneof![any::<f64>(), 0.0..1e7],
            reset in proptest::option::of(prop_oneof![any::<f64>(), 0.0..1e5]),
            ours_since in prop_oneof![any::<f64>(), 0.0..1e4],
        ) {
            let i = Inputs { shape, window: 10.0, paced, reserve, others, remaining, reset, ours_since };
            match decide(&i) {
                Decision::Rate(r) => {
                    prop_assert!(r.is_finite() && r >= 0.0, "{r}");
                    if shape != LimitShape::FixedWindow || reset.is_none() {
                        prop_assert!(r <= paced.max(0.0) + 1e-9 || !paced.is_finite());
                    }
                }
                Decision::Hold(d) => prop_assert!(d <= MAX_RESET),
            }
        }

        /// A fixed window's rest spent at the decided rate until the reset never exceeds what
        /// is left less what others and the reserve take.
        #[test]
        fn a_fixed_windows_rest_is_never_overspent(
            remaining in 0.0f64..10_000.0,
            reset in 0.01f64..3600.0,
            others in 0.0f64..100.0,
            reserve in 0.0f64..10.0,
            ours_since in 0.0f64..100.0,
        ) {
            let mut i = inputs(LimitShape::FixedWindow);
            (i.remaining, i.reset, i.others, i.reserve, i.ours_since) =
                (remaining, Some(reset), others, reserve, ours_since);
            if let Decision::Rate(r) = decide(&i) {
                prop_assert!(r * reset + ours_since + others * reset + reserve * i.window <= remaining + 1e-6);
            }
        }

        #[test]
        fn any_server_report_keeps_the_state_finite(
            remaining in any::<u64>(),
            reset in proptest::option::of(0u64..u64::MAX / 2),
            limit in proptest::option::of(any::<u64>()),
            sent_ago in 0u64..10_000_000_000,
            now in 0u64..u64::MAX / 4,
        ) {
            let mut h = Headroom::new(&limit_for_props(), 9.0);
            h.granted(now);
            let rep = ServerReport { remaining, reset: reset.map(Duration::from_nanos), limit };
            h.observe(&rep, Duration::from_nanos(sent_ago), now);
            prop_assert!(h.state().others_rate.is_finite());
            if let Some(Decision::Rate(r)) = h.decision(now) {
                prop_assert!(r.is_finite() && r >= 0.0);
            }
        }
    }

    fn limit_for_props() -> Limit {
        limit(LimitShape::FixedWindow, Some("10%"))
    }
}
