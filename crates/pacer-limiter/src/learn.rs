//! Learning an undeclared limit (`adaptive: true` in one process): the one place that decides
//! the adaptive rate from what the server answered.
//!
//! Why not AIMD: cutting by 10% per window and adding 2% of the ceiling per clean window takes
//! minutes to cross a 4x gap and then oscillates around the limit with a 429 every few windows.
//! A server that refuses the excess tells us its rate directly: while we send above its limit
//! it *accepts* at its limit. So the learner measures in stretches (about twenty requests, at least
//! a second and the declared window, at most twenty seconds):
//!
//! - in a stretch with refusals, from the first refusal on the server's budget is spent as soon
//!   as it is granted, so what it accepts from then on is its rate (measured over a declared
//!   window, at least a second, and [`STRETCH_REQUESTS`] accepted): the rate is set to [`HOLD`]
//!   of it (never less than [`MAX_CUT`] of the rate, so one odd stretch cannot collapse it),
//!   and the rate sent becomes the lowest known refused rate (the upper end of the bracket);
//! - a stretch without refusals in which we sent at our rate (not held back by the load) is the
//!   measured sustainable rate (the lower end of the bracket); after [`PROBE_AFTER`] of them the
//!   rate is raised by [`PROBE_STEP`] to notice a raised limit, and only after
//!   [`PROBE_AFTER_BRACKETED`] when that would reach a rate already refused.
//!
//! A server that states its rate (IETF `RateLimit-Policy`) is taken at its word at once
//! ([`Learner::stated`]): [`HOLD`] of it, and the bracket's upper end.
//!
//! Times are nanoseconds of the caller's clock; the learner keeps no clock itself, so it is
//! tested as plain arithmetic.
//!
//! A fleet learns with the same learner: its processes add what they saw into Redis counters,
//! and one of them at a time feeds the fleet's totals in batches ([`Learner::observe`]) on
//! Redis' clock, and stores the learner between batches ([`Learner::encode`],
//! [`Learner::decode`]) so another process can take over from where it stopped.

use std::time::Duration;

/// Hold this share of the rate the server was measured to accept: 5% under it leaves room for
/// the measurement's noise (a count of 20, one request in 20) and the server's own jitter.
pub const HOLD: f64 = 0.95;
/// A stretch with refusals never cuts the rate below this share of it: a server whose window
/// is longer than the declared one can look like it accepts nearly nothing for a while; that
/// is not its rate. A ceiling 5x too high is still found in one stretch.
pub const MAX_CUT: f64 = 0.2;
/// A stretch is at least this long (a rate is not measured from a handful of responses).
pub const MIN_STRETCH: Duration = Duration::from_secs(1);
/// A stretch is at most this long: at 1/s a stretch counts 20 requests (so a slow limit
/// reacts within 20 s); faster ones take [`STRETCH_REQUESTS`] or [`MIN_STRETCH`].
pub const MAX_STRETCH: Duration = Duration::from_secs(20);
/// A stretch spans about this many requests at the current rate: a count of 20 is known to
/// within one request, 5%, half the 10% the rate must be found within.
pub const STRETCH_REQUESTS: f64 = 20.0;
/// Clean stretches at full rate before probing upward.
pub const PROBE_AFTER: u32 = 5;
/// Clean stretches before a probe that would reach a rate the server already refused: probes
/// into the bracket's upper end are rare, since each costs a few refusals.
pub const PROBE_AFTER_BRACKETED: u32 = 20;
/// While the bracket (the rate held clean, the lowest refused) is wider than this share, the
/// probe goes to its middle after each clean stretch: a bisection, for when the rate could not
/// be measured (the server's own pauses were in the way).
pub const BISECT_ABOVE: f64 = 0.10;
/// A probe raises the rate by this factor: small, so a failed probe costs few refusals.
pub const PROBE_STEP: f64 = 1.03;
/// A clean stretch shows the rate is sustainable only if the server accepted at least this
/// share of it (below, the load, not the limiter, set the pace: nothing was learned).
pub const FULL_RATE_SHARE: f64 = 0.9;
/// Never below this share of the ceiling.
pub const MIN_SHARE: f64 = 0.001;
/// After a cut the schedule restarts this many intervals (at the new rate) later: the queued
/// reservations at the old rate are void, and the server's bucket gets a moment to refill.
pub const PAUSE_INTERVALS: f64 = 2.0;

const NS: f64 = 1e9;

/// The first word of [`Learner::encode`]'s text: a record of another format (an older or
/// newer pacer sharing the Redis) is refused by [`Learner::decode`], not misread.
pub const ENCODING: &str = "learn1";
/// The number of fields [`Learner::encode`] writes after [`ENCODING`].
const ENCODED_FIELDS: usize = 17;

/// Why an encoded learner was not read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("the learner's record is not {ENCODING:?} (it starts with {0:?})")]
    Format(String),
    #[error("the learner's record has {0} fields instead of {ENCODED_FIELDS}")]
    Fields(usize),
    #[error("the learner's record field {field} is {value:?}: {why}")]
    Field {
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

/// What the learner decided at the end of a stretch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// The server stated its rate: the rate was set to [`HOLD`] of it (at most the ceiling),
    /// and the schedule pauses for `pause` when that is a cut.
    Stated { rate: f64, pause: Duration },
    /// Refusals: the rate is cut to `rate` (the server was measured to accept `accepted`/s),
    /// and the schedule pauses for `pause`.
    Cut {
        rate: f64,
        accepted: f64,
        pause: Duration,
    },
    /// A probe upward to this rate.
    Probe { rate: f64 },
}

/// The adaptive state of one limit.
#[derive(Clone, Debug)]
pub struct Learner {
    ceiling: f64,
    rate: f64,
    /// The declared window: the server's window is likely the same, so a stretch spans it.
    window_ns: u64,
    stretch_start: u64,
    accepted: u64,
    refused: u64,
    clean: u32,
    /// The accepted rate of the latest clean stretch at full rate.
    sustained: Option<f64>,
    /// The lowest rate sent in a stretch that was refused (the bracket's upper end).
    refused_at: Option<f64>,
    /// The rate paced at in the latest clean stretch at full rate (the bracket's lower end):
    /// where a failed probe returns to.
    good: Option<f64>,
    /// When the stretch's first refusal was answered, and what was accepted since.
    first_refusal: Option<u64>,
    accepted_since_refusal: u64,
    /// The current stretch is a probe: its first refusal ends it (a failed probe costs the
    /// refusals in flight, not a stretch of them).
    probing: bool,
    /// The stretch just ended was a probe (read by the decision on it).
    probing_ended: bool,
    /// The server paused us (Retry-After) during the stretch: its count since the first
    /// refusal includes time nobody sent in, so it is not the server's rate.
    distorted: bool,
    /// Answers before this (after a cut) are not counted ([`Learner::settle_ns`]).
    settle_until: u64,
    /// The rate the server last stated (IETF `RateLimit-Policy`).
    stated: Option<f64>,
}

impl Learner {
    /// Starts at the ceiling (tokens/s), measuring from `now`.
    pub fn new(ceiling: f64, window: Duration, now: u64) -> Self {
        Self {
            ceiling,
            rate: ceiling,
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            stretch_start: now,
            accepted: 0,
            refused: 0,
            clean: 0,
            sustained: None,
            refused_at: None,
            good: None,
            first_refusal: None,
            accepted_since_refusal: 0,
            probing: false,
            probing_ended: false,
            distorted: false,
            settle_until: 0,
            stated: None,
        }
    }

    /// The rate to pace at now (tokens/s).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The rate measured to pass without refusals, if one was.
    pub fn sustained(&self) -> Option<f64> {
        self.sustained
    }

    /// The ceiling it was created with (tokens/s).
    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// A batch of answers counted elsewhere (a fleet's processes, between two of the learning
    /// process's turns), taken as answered at `now`. A refusal in the batch starts the span
    /// the server's rate is measured over at `now`, so the batch's own accepted answers (some
    /// of them answered before the refusal) are not counted in it: span and count start
    /// together.
    pub fn observe(&mut self, accepted: u64, refused: u64, now: u64) {
        if now < self.settle_until {
            return;
        }
        self.accepted = self.accepted.saturating_add(accepted);
        if self.first_refusal.is_some_and(|f| now > f) {
            self.accepted_since_refusal = self.accepted_since_refusal.saturating_add(accepted);
        }
        if refused > 0 {
            self.refused = self.refused.saturating_add(refused);
            self.first_refusal.get_or_insert(now);
        }
    }

    /// The learner as one line of text (see [`Learner::decode`]), to be stored between turns.
    pub fn encode(&self) -> String {
        fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map_or_else(|| "-".to_string(), |v| v.to_string())
        }
        format!(
            "{ENCODING} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
            self.ceiling,
            self.rate,
            self.window_ns,
            self.stretch_start,
            self.accepted,
            self.refused,
            self.clean,
            opt(self.sustained),
            opt(self.refused_at),
            opt(self.good),
            opt(self.first_refusal),
            self.accepted_since_refusal,
            u8::from(self.probing),
            u8::from(self.probing_ended),
            u8::from(self.distorted),
            self.settle_until,
            opt(self.stated),
        )
    }

    /// Reads [`Learner::encode`]'s text strictly: it comes from a shared store, so every
    /// field is checked (rates finite and positive, the rate within the ceiling).
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let mut words = text.split_ascii_whitespace();
        let tag = words.next().unwrap_or_default();
        if tag != ENCODING {
            return Err(DecodeError::Format(tag.chars().take(16).collect()));
        }
        let f: Vec<&str> = words.collect();
        if f.len() != ENCODED_FIELDS {
            return Err(DecodeError::Fields(f.len()));
        }
        let bad = |field: &'static str, value: &str, why: &'static str| DecodeError::Field {
            field,
            value: value.chars().take(32).collect(),
            why,
        };
        let rate = |field: &'static str, v: &str| -> Result<f64, DecodeError> {
            v.parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| bad(field, v, "not a positive rate"))
        };
        let opt_rate = |field: &'static str, v: &str| -> Result<Option<f64>, DecodeError> {
            if v == "-" {
                Ok(None)
            } else {
                rate(field, v).map(Some)
            }
        };
        let int = |field: &'static str, v: &str| -> Result<u64, DecodeError> {
            v.parse::<u64>()
                .map_err(|_| bad(field, v, "not a non-negative integer"))
        };
        let opt_int = |field: &'static str, v: &str| -> Result<Option<u64>, DecodeError> {
            if v == "-" {
                Ok(None)
            } else {
                int(field, v).map(Some)
            }
        };
        let flag = |field: &'static str, v: &str| -> Result<bool, DecodeError> {
            match v {
                "0" => Ok(false),
                "1" => Ok(true),
                _ => Err(bad(field, v, "not 0 or 1")),
            }
        };
        let ceiling = rate("ceiling", f[0])?;
        let r = rate("rate", f[1])?;
        // Rounding in text never moves a rate by more than this share.
        const SLACK: f64 = 1e-9;
        if r > ceiling * (1.0 + SLACK) {
            return Err(bad("rate", f[1], "above the ceiling"));
        }
        Ok(Self {
            ceiling,
            rate: r.min(ceiling),
            window_ns: int("window_ns", f[2])?,
            stretch_start: int("stretch_start", f[3])?,
            accepted: int("accepted", f[4])?,
            refused: int("refused", f[5])?,
            clean: u32::try_from(int("clean", f[6])?)
                .map_err(|_| bad("clean", f[6], "too large"))?,
            sustained: opt_rate("sustained", f[7])?,
            refused_at: opt_rate("refused_at", f[8])?,
            good: opt_rate("good", f[9])?,
            first_refusal: opt_int("first_refusal", f[10])?,
            accepted_since_refusal: int("accepted_since_refusal", f[11])?,
            probing: flag("probing", f[12])?,
            probing_ended: flag("probing_ended", f[13])?,
            distorted: flag("distorted", f[14])?,
            settle_until: int("settle_until", f[15])?,
            stated: opt_rate("stated", f[16])?,
        })
    }

    /// The length of a stretch at the current rate.
    fn stretch_ns(&self) -> u64 {
        let by_count =
            (STRETCH_REQUESTS / self.rate.max(f64::MIN_POSITIVE) * NS).min(u64::MAX as f64) as u64;
        let min = MIN_STRETCH.as_nanos() as u64;
        let max = MAX_STRETCH.as_nanos() as u64;
        by_count.max(self.window_ns.min(max)).clamp(min, max)
    }

    /// A response that was not a refusal, answered at `now`.
    pub fn accepted(&mut self, now: u64) {
        if now < self.settle_until {
            return;
        }
        self.accepted = self.accepted.saturating_add(1);
        if self.first_refusal.is_some_and(|f| now >= f) {
            self.accepted_since_refusal = self.accepted_since_refusal.saturating_add(1);
        }
    }

    /// A refusal (429, 503), answered at `now`.
    pub fn refused(&mut self, now: u64) {
        if now < self.settle_until {
            return;
        }
        self.refused = self.refused.saturating_add(1);
        self.first_refusal.get_or_insert(now);
    }

    /// How long after a cut answers are not counted: the server still counts what was sent
    /// at the old rate for a window (a fixed window opened by it refuses the new rate too).
    fn settle_ns(&self) -> u64 {
        let max = MAX_STRETCH.as_nanos() as u64;
        (MIN_STRETCH.as_nanos() as u64).max(self.window_ns).min(max)
    }

    /// The server stated the rate it enforces (per second): go to [`HOLD`] of it at once (at
    /// most the ceiling); it is the bracket's upper end. `None` when it is the one stated last
    /// (or not a usable rate).
    pub fn stated(&mut self, rate: f64, now: u64) -> Option<Change> {
        if !(rate.is_finite() && rate > 0.0) || self.stated == Some(rate) {
            return None;
        }
        self.stated = Some(rate);
        let old = self.rate;
        self.rate = (rate * HOLD)
            .min(self.ceiling)
            .max(self.ceiling * MIN_SHARE);
        self.refused_at = Some(rate);
        self.good = None;
        self.clean = 0;
        self.probing = false;
        self.stretch_start = now;
        self.accepted = 0;
        self.refused = 0;
        self.first_refusal = None;
        self.accepted_since_refusal = 0;
        // The refusals of what was sent before at the old rate are no news.
        self.settle_until = now.saturating_add(self.settle_ns());
        let pause = if self.rate < old {
            Duration::from_secs_f64(PAUSE_INTERVALS / self.rate)
        } else {
            Duration::ZERO
        };
        Some(Change::Stated {
            rate: self.rate,
            pause,
        })
    }

    /// The server asked for a pause (Retry-After), which the caller honours.
    pub fn paused(&mut self) {
        self.distorted = true;
    }

    /// Whether a stretch with refusals has measured long enough since its first refusal: a
    /// whole declared window (a fixed window refuses in bursts), and [`STRETCH_REQUESTS`]
    /// accepted (or [`MAX_STRETCH`]).
    fn measured_refusals(&self, now: u64) -> bool {
        let Some(f) = self.first_refusal else {
            return false;
        };
        let since = now.saturating_sub(f);
        let max = MAX_STRETCH.as_nanos() as u64;
        let min = (MIN_STRETCH.as_nanos() as u64).max(self.window_ns).min(max);
        since >= min && (self.accepted_since_refusal as f64 >= STRETCH_REQUESTS || since >= max)
    }

    /// Ends the stretch if it is over and decides; call on every event.
    pub fn tick(&mut self, now: u64) -> Option<Change> {
        if self.accepted == 0 && self.refused == 0 || now < self.settle_until {
            // Nothing answered yet (or for a while): the stretch starts with the traffic.
            self.stretch_start = now;
            return None;
        }
        let elapsed = now.saturating_sub(self.stretch_start);
        let refused = self.refused > 0;
        let over = if refused {
            self.probing || self.measured_refusals(now)
        } else {
            elapsed >= self.stretch_ns()
        };
        if !over {
            return None;
        }
        // With refusals, what the server accepted since the first one: from then on the
        // server's budget is spent as it is granted, so this is its rate (a bucket's burst
        // or a window's unused part before it is not).
        let measured = match self.first_refusal {
            Some(f) if now > f => self.accepted_since_refusal as f64 / ((now - f) as f64 / NS),
            _ => self.accepted as f64 / (elapsed.max(1) as f64 / NS),
        };
        self.stretch_start = now;
        self.probing_ended = std::mem::take(&mut self.probing);
        self.accepted = 0;
        self.refused = 0;
        self.first_refusal = None;
        self.accepted_since_refusal = 0;
        let distorted = std::mem::take(&mut self.distorted);
        let floor = self.ceiling * MIN_SHARE;
        if refused {
            let sent = self.rate;
            // The bracket's upper end: the server's rate as measured, when the measurement
            // is sound; the rate sent when it is not (a probe's single refusal, or pauses the
            // server asked for inside the span, which no sending filled).
            self.refused_at = Some(if self.probing_ended || distorted {
                self.refused_at.map_or(sent, |r| r.min(sent))
            } else {
                measured.min(sent)
            });
            self.probing_ended = false;
            let measured_rate = measured;
            let measured = (measured * HOLD).clamp(sent * MAX_CUT, sent * HOLD);
            // A failed probe goes back to the rate held clean just before it (the count of one
            // stretch is coarser than that); a second refusal there trusts the count.
            let good = self.good.take().filter(|g| *g < sent).unwrap_or(0.0);
            self.rate = measured.max(good).max(floor);
            self.clean = 0;
            // What was held before is sustainable only as far as it is below what was refused.
            self.sustained = self.sustained.map(|s| s.min(self.rate));
            let pause = Duration::from_secs_f64(PAUSE_INTERVALS / self.rate);
            self.settle_until = now.saturating_add(self.settle_ns());
            return Some(Change::Cut {
                rate: self.rate,
                accepted: measured_rate,
                pause,
            });
        }
        if measured < self.rate * FULL_RATE_SHARE {
            // The load set the pace: nothing learned about the limit.
            return None;
        }
        // A count within one request of the full rate is the full rate: at 1/s a stretch
        // counts about 20, and one request short is 5% the limit was not short of.
        let one_more = 1.0 / (elapsed.max(1) as f64 / NS);
        self.sustained = Some(if measured + one_more >= self.rate {
            self.rate
        } else {
            measured
        });
        self.good = Some(self.rate);
        if self.refused_at.is_some_and(|r| self.rate >= r) {
            // The limit was raised: what was refused before passes now.
            self.refused_at = None;
        }
        self.probing_ended = false;
        self.clean += 1;
        let (next, wait) = match self.refused_at {
            // A wide bracket (the measurement was unsound): halve it, one clean stretch apart.
            Some(r) if r > self.rate * (1.0 + BISECT_ABOVE) => ((self.rate + r) / 2.0, 1),
            Some(r) if self.rate * PROBE_STEP >= r => {
                (self.rate * PROBE_STEP, PROBE_AFTER_BRACKETED)
            }
            _ => (self.rate * PROBE_STEP, PROBE_AFTER),
        };
        let next = next.min(self.ceiling);
        if self.clean >= wait && next > self.rate {
            self.clean = 0;
            self.rate = next;
            self.probing = true;
            return Some(Change::Probe { rate: next });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts `limit` per second of whatever is sent above it (a drained token
    /// bucket), driven at the learner's rate with time steps of 10 ms; returns the learner's
    /// rate after `secs` and the refusals after `settle` seconds.
    fn drive(limit: f64, ceiling: f64, secs: f64, settle: f64) -> (Learner, u64, u64) {
        let mut l = Learner::new(ceiling, Duration::from_secs(1), 0);
        let step = 10_000_000u64;
        let (mut sent_credit, mut tokens) = (0.0f64, limit);
        let (mut late_refused, mut late_sent) = (0, 0);
        let mut t = 0u64;
        while (t as f64) < secs * NS {
            t += step;
            tokens = (tokens + limit * 0.01).min(limit);
            sent_credit += l.rate() * 0.01;
            while sent_credit >= 1.0 {
                sent_credit -= 1.0;
                let late = t as f64 > settle * NS;
                late_sent += u64::from(late);
                if tokens >= 1.0 - 1e-9 {
                    tokens -= 1.0;
                    l.accepted(t);
                } else {
                    late_refused += u64::from(late);
                    l.refused(t);
                }
            }
            l.tick(t);
        }
        (l, late_refused, late_sent)
    }

    #[test]
    fn finds_a_limit_four_times_under_the_ceiling_and_holds_it_with_rare_refusals() {
        for limit in [1.0, 5.0, 50.0, 1000.0] {
            let (l, refused, sent) = drive(limit, 4.0 * limit, 300.0, 30.0);
            let r = l.rate();
            assert!((r - limit).abs() / limit <= 0.10, "limit {limit}: rate {r}");
            let s = l.sustained().unwrap();
            assert!(
                (s - limit).abs() / limit <= 0.10,
                "limit {limit}: sustained {s}"
            );
            assert!(
                refused as f64 <= 0.01 * sent as f64,
                "limit {limit}: {refused} of {sent} refused after 30 s"
            );
        }
    }

    #[test]
    fn a_stated_rate_is_held_at_once_and_only_once() {
        let mut l = Learner::new(200.0, Duration::from_secs(1), 0);
        let Some(Change::Stated { rate, pause }) = l.stated(50.0, 1) else {
            panic!("not taken")
        };
        assert!((rate - 47.5).abs() < 1e-9, "{rate}");
        assert_eq!(pause, Duration::from_secs_f64(2.0 / 47.5));
        assert_eq!(l.stated(50.0, 2), None);
        assert_eq!(l.stated(f64::INFINITY, 3), None);
        // Above the ceiling: the ceiling.
        assert!(matches!(l.stated(1000.0, 4), Some(Change::Stated { rate, .. }) if rate == 200.0));
    }

    #[test]
    fn a_stretch_held_back_by_the_load_learns_nothing() {
        let mut l = Learner::new(100.0, Duration::from_secs(1), 0);
        for _ in 0..10 {
            l.accepted(1);
        }
        assert_eq!(l.tick(2_000_000_000), None);
        assert_eq!(l.sustained(), None);
        assert_eq!(l.rate(), 100.0);
    }

    #[test]
    fn a_cut_pauses_two_intervals_at_the_new_rate() {
        let mut l = Learner::new(20.0, Duration::from_secs(1), 0);
        l.accepted(1);
        l.refused(1);
        // A second after the first refusal, 20 accepted: the server's rate is 20/s... but
        // one second is not a stretch yet at 18 accepted.
        for i in 0..20 {
            assert_eq!(l.tick(1 + i * 50_000_000), None);
            l.accepted(1 + i * 50_000_000);
        }
        let Some(Change::Cut { rate, pause, .. }) = l.tick(1_000_000_001) else {
            panic!("no cut")
        };
        // Held 5% under the 20/s accepted since the first refusal (of a ceiling of 20/s).
        assert!((rate - 19.0).abs() < 1e-9, "{rate}");
        assert_eq!(pause, Duration::from_secs_f64(2.0 / 19.0));
    }

    #[test]
    fn an_encoded_learner_reads_back_the_same_and_a_bad_record_is_an_error() {
        let (l, _, _) = drive(10.0, 40.0, 12.0, 30.0);
        let text = l.encode();
        let back = Learner::decode(&text).unwrap();
        assert_eq!(back.encode(), text);
        assert_eq!(back.rate(), l.rate());
        for bad in [
            "",
            "v1 1 2 3",
            "learn1 1 2",
            "learn0 40 10 1 0 0 0 0 - - - - 0 0 0 0 0 -",
            // rate above the ceiling
            "learn1 40 50 1 0 0 0 0 - - - - 0 0 0 0 0 -",
            "learn1 40 NaN 1 0 0 0 0 - - - - 0 0 0 0 0 -",
            "learn1 40 10 1 0 -3 0 0 - - - - 0 0 0 0 0 -",
            "learn1 40 10 1 0 0 0 0 - - - - 0 2 0 0 0 -",
            "learn1 40 10 1 0 0 0 0 inf - - - 0 0 0 0 0 -",
        ] {
            assert!(Learner::decode(bad).is_err(), "{bad}");
        }
        let e = Learner::decode("learn1 40 10 1 0 0 0 0 - - - - 0 0 0 7 0 -").unwrap_err();
        assert!(e.to_string().contains("distorted"), "{e}");
    }

    /// The same server as [`drive`], but the answers reach the learner in batches every
    /// 100 ms (a fleet's turns), and the learner is stored and read back at every turn.
    #[test]
    fn batches_of_answers_learn_the_limit_as_single_answers_do() {
        for limit in [2.0, 50.0, 500.0] {
            let ceiling = 4.0 * limit;
            let mut l = Learner::new(ceiling, Duration::from_secs(1), 0);
            let step = 10_000_000u64;
            let (mut credit, mut tokens) = (0.0f64, limit);
            let (mut acc, mut refd) = (0u64, 0u64);
            let (mut late_refused, mut late_sent) = (0u64, 0u64);
            let mut t = 0u64;
            while t < 120 * 1_000_000_000 {
                t += step;
                tokens = (tokens + limit * 0.01).min(limit);
                credit += l.rate() * 0.01;
                while credit >= 1.0 {
                    credit -= 1.0;
                    let late = t > 30 * 1_000_000_000;
                    late_sent += u64::from(late);
                    if tokens >= 1.0 - 1e-9 {
                        tokens -= 1.0;
                        acc += 1;
                    } else {
                        late_refused += u64::from(late);
                        refd += 1;
                    }
                }
                if t.is_multiple_of(100_000_000) {
                    l = Learner::decode(&l.encode()).unwrap();
                    l.observe(std::mem::take(&mut acc), std::mem::take(&mut refd), t);
                    l.tick(t);
                }
            }
            let r = l.rate();
            assert!((r - limit).abs() / limit <= 0.10, "limit {limit}: rate {r}");
            assert!(
                late_refused as f64 <= 0.01 * late_sent as f64,
                "limit {limit}: {late_refused} of {late_sent} refused after 30 s"
            );
        }
    }

    #[test]
    fn a_raised_limit_is_found_by_probing() {
        let (mut l, _, _) = drive(10.0, 40.0, 30.0, 30.0);
        assert!((l.rate() - 10.0).abs() < 1.0, "{}", l.rate());
        // The limit doubles: the probes climb 3% at a time, past the old refusal.
        let (mut t, mut credit) = (30_000_000_000u64, 0.0f64);
        for _ in 0..2000 {
            t += 100_000_000;
            credit += l.rate() / 10.0;
            while credit >= 1.0 {
                credit -= 1.0;
                l.accepted(t);
            }
            l.tick(t);
        }
        assert!(l.rate() > 15.0, "{}", l.rate());
    }
}
