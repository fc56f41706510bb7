//! What a worker's leases of a shared budget have in common, whoever grants them (Redis'
//! `fleet/lua/lease.lua` for [`crate::fleet::FleetLimiter`], the controller for
//! [`crate::served::ServedLimiter`]): the demand of a class of requests, the requests waiting
//! and holding a slot, how many slots a lease asks for, and a limit's fleet-wide pause as the
//! worker knows it. One place, so both batch and pause alike.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::fleet::{LEASE_MAX_SPAN, MAX_LEASE};

/// Demand is measured over ticks of this length.
const DEMAND_TICK: Duration = Duration::from_millis(250);
/// The shortest time the first tick's demand is measured over (a first request alone is not
/// a rate of thousands a second).
const FIRST_TICK_MIN: Duration = Duration::from_millis(10);

/// The requests asking for one class's slots.
#[derive(Debug)]
pub(crate) struct Asking {
    /// Requests in `acquire`, and those of them sleeping until their slot.
    pub(crate) waiters: usize,
    pub(crate) holding: usize,
    tick: u64,
    tick_start: Instant,
    rate: f64,
}

impl Asking {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            waiters: 0,
            holding: 0,
            tick: 0,
            tick_start: now,
            rate: 0.0,
        }
    }

    /// Requests per second asking for this class: the last ticks' average, or while the first
    /// tick runs, what it has seen so far (so the first leases grow quickly).
    pub(crate) fn demand(&self, now: Instant) -> f64 {
        if self.rate > 0.0 {
            return self.rate;
        }
        let el = now
            .saturating_duration_since(self.tick_start)
            .max(FIRST_TICK_MIN);
        self.tick as f64 / el.as_secs_f64()
    }

    /// Requests waiting with no slot yet.
    pub(crate) fn need(&self) -> usize {
        self.waiters.saturating_sub(self.holding)
    }

    fn count(&mut self, now: Instant) {
        self.tick += 1;
        let el = now.saturating_duration_since(self.tick_start);
        if el >= DEMAND_TICK {
            let inst = self.tick as f64 / el.as_secs_f64();
            self.rate = if self.rate == 0.0 {
                inst
            } else {
                0.5 * self.rate + 0.5 * inst
            };
            self.tick = 0;
            self.tick_start = now;
        }
    }
}

/// How many slots a lease asks for: about one `hold` of the class's `demand` (requests a
/// second), or the `need` of requests already waiting, at least one and at most
/// [`LEASE_MAX_SPAN`] of the `slowest` limit's rate ([`MAX_LEASE`] at most), so one busy worker
/// cannot hold the fleet's capacity for long.
pub(crate) fn want(demand: f64, hold: Duration, need: usize, slowest: f64) -> u32 {
    let max = (slowest * LEASE_MAX_SPAN.as_secs_f64())
        .floor()
        .clamp(1.0, f64::from(MAX_LEASE));
    (demand * hold.as_secs_f64())
        .max(need as f64)
        .ceil()
        .clamp(1.0, max) as u32
}

/// A class state that counts the requests asking for its slots.
pub(crate) trait HasAsking {
    fn asking(&mut self) -> &mut Asking;
}

/// Counts a request in `acquire` (and, with [`InClass::hold`], one sleeping on its slot)
/// while it lives.
pub(crate) struct InClass<'a, S: HasAsking> {
    st: &'a Mutex<S>,
    holding: bool,
}

impl<'a, S: HasAsking> InClass<'a, S> {
    /// A request enters `acquire` at `now` (its demand counted).
    pub(crate) fn enter(st: &'a Mutex<S>, now: Instant) -> Self {
        {
            let mut g = st.lock();
            let a = g.asking();
            a.waiters += 1;
            a.count(now);
        }
        Self { st, holding: false }
    }

    /// It sleeps on a slot (`true`), or no longer does.
    pub(crate) fn hold(&mut self, on: bool) {
        if self.holding != on {
            let mut g = self.st.lock();
            let a = g.asking();
            if on {
                a.holding += 1;
            } else {
                a.holding = a.holding.saturating_sub(1);
            }
            self.holding = on;
        }
    }
}

impl<S: HasAsking> Drop for InClass<'_, S> {
    fn drop(&mut self) {
        let mut g = self.st.lock();
        let a = g.asking();
        a.waiters = a.waiters.saturating_sub(1);
        if self.holding {
            a.holding = a.holding.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_covers_a_hold_of_demand_or_the_waiting_within_its_span() {
        let hold = Duration::from_millis(50);
        // 200/s for 50 ms: 10 slots; 3 waiting do not lower it; 30 waiting raise it.
        assert_eq!(want(200.0, hold, 3, 1000.0), 10);
        assert_eq!(want(200.0, hold, 30, 1000.0), 30);
        // At most 200 ms of the slowest limit: 20 at 100/s; at least one.
        assert_eq!(want(10_000.0, hold, 0, 100.0), 20);
        assert_eq!(want(0.0, hold, 0, 0.1), 1);
        assert_eq!(want(1e12, hold, 0, 1e12), MAX_LEASE);
    }

    struct St(Asking);
    impl HasAsking for St {
        fn asking(&mut self) -> &mut Asking {
            &mut self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_counted_while_they_ask_and_their_demand_measured() {
        let now = Instant::now();
        let st = Mutex::new(St(Asking::new(now)));
        {
            let mut a = InClass::enter(&st, now);
            let _b = InClass::enter(&st, now);
            a.hold(true);
            assert_eq!(st.lock().0.need(), 1);
        }
        let (waiters, holding) = {
            let g = st.lock();
            (g.0.waiters, g.0.holding)
        };
        assert_eq!((waiters, holding), (0, 0));
        // 2 requests in the first 10 ms: 200/s so far; 101 in the first 250 ms: 404/s.
        assert!((st.lock().0.demand(now) - 200.0).abs() < 1e-9);
        for _ in 0..98 {
            drop(InClass::enter(&st, now));
        }
        tokio::time::advance(Duration::from_millis(250)).await;
        drop(InClass::enter(&st, Instant::now()));
        assert!((st.lock().0.demand(Instant::now()) - 404.0).abs() < 1e-6);
    }
}

/// What a worker knows of a fleet limit's pause (a server's Retry-After, heard from any worker),
/// and its accounting for the report.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pause {
    pub(crate) until: Option<Instant>,
    pub(crate) pauses: u64,
    paused: Duration,
}

impl Pause {
    /// Pause until `until` (only ever extended); true when it was extended.
    pub(crate) fn extend(&mut self, until: Instant, now: Instant) -> bool {
        match self.until.filter(|p| *p > now) {
            Some(p) if p >= until => false,
            Some(p) => {
                self.paused += until - p;
                self.until = Some(until);
                true
            }
            None => {
                self.pauses += 1;
                self.paused += until - now;
                self.until = Some(until);
                true
            }
        }
    }

    /// Time paused so far: a pause still running counts only for the part that passed.
    pub(crate) fn paused(&self, now: Instant) -> Duration {
        let running = self
            .until
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
        self.paused.saturating_sub(running)
    }
}
