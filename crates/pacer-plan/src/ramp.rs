//! Arrival times of the open model. Arrival `k` (from 0) happens when the integral of the rate
//! reaches `k`: at `k / rate` for a constant rate, and on the solution of a quadratic within a
//! linear ramp. The schedule is a pure function of the plan, so any process computes the same
//! times and the count of arrivals is known before the test starts.

use std::time::Duration;

use crate::Rate;
use crate::model::RateStage;

/// A piecewise-linear rate over time.
#[derive(Clone, Debug)]
pub struct RampSchedule {
    /// (start rate /s, end rate /s, duration s, arrivals before this segment)
    segments: Vec<Segment>,
    total: f64,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    start: f64,
    from: f64,
    to: f64,
    len: f64,
    before: f64,
}

impl Segment {
    fn area(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.len
    }

    /// Time into the segment at which `n` arrivals (0 <= n <= area) have accumulated.
    fn time_for(&self, n: f64) -> f64 {
        if n <= 0.0 {
            return 0.0;
        }
        let a = self.from;
        let slope = (self.to - self.from) / self.len;
        if slope.abs() < 1e-12 {
            return (n / a).min(self.len);
        }
        // a t + slope t^2 / 2 = n  ->  t = 2n / (a + sqrt(a^2 + 2 slope n))
        let disc = (a * a + 2.0 * slope * n).max(0.0);
        let t = 2.0 * n / (a + disc.sqrt());
        t.clamp(0.0, self.len)
    }
}

/// Tolerance for floating-point areas that should be whole numbers (a ramp from 0/s to 10/s
/// over 10 s is 50 arrivals, not 50.000000001).
const EPS: f64 = 1e-6;

impl RampSchedule {
    pub fn new(start: Rate, stages: &[RateStage]) -> Self {
        let mut segments = Vec::with_capacity(stages.len());
        let mut from = start.as_per_sec();
        let mut t = 0.0;
        let mut before = 0.0;
        for st in stages {
            let to = st.target.as_per_sec();
            let len = st.duration.as_secs_f64();
            if len > 0.0 {
                let seg = Segment {
                    start: t,
                    from,
                    to,
                    len,
                    before,
                };
                before += seg.area();
                t += len;
                segments.push(seg);
            }
            from = to;
        }
        Self {
            segments,
            total: before,
        }
    }

    /// A constant rate for `duration`.
    pub fn constant(rate: Rate, duration: Duration) -> Self {
        Self::new(
            rate,
            &[RateStage {
                target: rate,
                duration,
            }],
        )
    }

    /// Arrivals in the whole schedule: the k with `k < area` (so `ceil(area)`).
    pub fn total(&self) -> u64 {
        let rounded = self.total.round();
        if (self.total - rounded).abs() < EPS {
            rounded as u64
        } else {
            self.total.ceil() as u64
        }
    }

    /// Offset of arrival `k` from the scenario's start, or `None` past the end.
    pub fn offset(&self, k: u64) -> Option<Duration> {
        if k >= self.total() {
            return None;
        }
        let n = k as f64;
        // Segments are few (stages), so a linear scan is fine; the executor walks k in order and
        // can use `Cursor` to avoid even that.
        let seg = self
            .segments
            .iter()
            .rev()
            .find(|s| s.before <= n + EPS && s.area() > 0.0)?;
        let t = seg.start + seg.time_for(n - seg.before);
        // Saturating: within crate::bounds a schedule ends within a month; a float past
        // `Duration`'s range (a spec not yet validated) is "never" rather than a panic.
        Some(Duration::try_from_secs_f64(t.max(0.0)).unwrap_or(Duration::MAX))
    }

    /// The rate (per second) at an offset, for progress displays.
    pub fn rate_at(&self, at: Duration) -> f64 {
        let t = at.as_secs_f64();
        self.segments
            .iter()
            .find(|s| t >= s.start && t < s.start + s.len)
            .map(|s| s.from + (s.to - s.from) * (t - s.start) / s.len)
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    #[test]
    fn constant_matches_exact_count() {
        let s = RampSchedule::constant(rate("200/s"), Duration::from_secs(10));
        assert_eq!(s.total(), 2000);
        assert_eq!(s.offset(0), Some(Duration::ZERO));
        let t = s.offset(1999).unwrap().as_secs_f64();
        assert!((t - 9.995).abs() < 1e-6, "{t}");
        assert_eq!(s.offset(2000), None);
    }

    #[test]
    fn ramp_area_and_monotonic() {
        let s = RampSchedule::new(
            rate("0/s"),
            &[
                RateStage {
                    target: rate("10/s"),
                    duration: Duration::from_secs(10),
                },
                RateStage {
                    target: rate("10/s"),
                    duration: Duration::from_secs(5),
                },
                RateStage {
                    target: rate("0/s"),
                    duration: Duration::from_secs(10),
                },
            ],
        );
        assert_eq!(s.total(), 50 + 50 + 50);
        let mut last = Duration::ZERO;
        for k in 0..s.total() {
            let t = s.offset(k).unwrap();
            assert!(t >= last);
            assert!(t <= Duration::from_secs(25));
            last = t;
        }
        // halfway through the first ramp (t=5s) 12.5 arrivals have happened
        let t13 = s.offset(13).unwrap().as_secs_f64();
        assert!(t13 > 5.0 && t13 < 5.3, "{t13}");
    }
}
