//! The shape of a server's limit (`shape:` on a plan limit), and the one function that decides
//! the rate and burst pacer's GCRA runs at for it ([`pace`]): the in-process limiter, the fleet
//! limiter (Redis) and `pacer validate` all call it, so what validate explains is what runs.
//!
//! Why the shape matters: servers count differently, and a client may send what the server's
//! counter allows, not what a stricter reading of the same numbers allows. "5/s burst 5" read as
//! a window of 5 per second leaves nothing for steady traffic after the burst (pacer used to
//! pace it at 0.91/s); read as the token bucket the vendor means, it allows 5/s for ever.
//!
//! # Sliding and fixed windows: `r = (L - b) / (W + D)`
//!
//! A GCRA at rate `r` with burst `b` grants at most `b + r·y` requests in any `y`. A grant may
//! reach the server up to the spread `D` late, so requests the server counts in a window `W`
//! were granted within `W + D`: at most `b + r·(W + D)`, which must stay `<= L`. This is the
//! sliding window's bound, unchanged. A fixed window (counters reset at boundaries) only counts
//! the aligned windows, which are among the sliding ones, so the same rate is safe, and it is
//! what [`pace`] gives a fixed window. It could use more (the whole `L` from each reset) once
//! pacer knows where the server's windows start: when the server sends its remaining count and
//! reset (`X-RateLimit-Reset`, `inin-ratelimit-reset`, IETF `RateLimit`), the limiter aligns to
//! them (`pacer_limiter::headroom`); without them a fixed window is paced exactly like a
//! sliding one. `pacer validate` and docs/rate-limiting.md say which applies.
//!
//! # Token (and leaky) buckets: the rate itself, the burst less the spread's allowance
//!
//! A server's bucket of `B` tokens refilled at `ρ`/s accepts sorted arrivals `a_1 <= a_2 ...`
//! iff every `n` consecutive ones span at least `(n - B)/ρ`. pacer's GCRA at rate `r` with
//! burst `b` grants `n` consecutive requests over at least `(n - b)/r`; with arrivals up to `D`
//! after their grant (in any order), `n` arrivals span at least `(n - b)/r - D`. So pacer is
//! safe iff, for every `n > B`, with `m = n - B` and `k = B - b` tokens of the burst kept back:
//!
//! ```text
//! (m + k) / r - D >= m / ρ   <=>   r <= ρ · (m + k) / (m + ρD)
//! ```
//!
//! If `k >= ρD` the right side is at least `ρ` for every `m`: pacer may run at the bucket's own
//! rate. If `k < ρD` it grows with `m`, so `m = 1` binds: `r = ρ(1 + k)/(1 + ρD)`. Keeping tokens
//! costs only burst (what pacer may send at once after idling), never rate, so [`pace`] keeps
//! `k = ceil(ρD)` tokens when the bucket has them (one token at 5/s with 100 ms: `ρD = 0.5`)
//! and otherwise keeps all but one (`b = 1`) and paces at `ρ·B/(1 + ρD)`. A bucket of 1 with
//! jitter is the costly case: two requests on time `1/ρ` apart can meet one `D` late.
//!
//! On top, a token bucket is paced at [`TOKEN_BUCKET_RATE_SHARE`] of its rate: at exactly `ρ`
//! the slack above never grows, and two clocks that differ by a few hundred parts per million
//! (NTP slews at most 500 ppm) or a server that counts in whole milliseconds would eat it over
//! a long run; 0.5% below the rate, pacer falls behind the server's refill faster than any
//! clock drifts. (Windows need no such term: the window's bound is already a count per window,
//! and its burst and spread terms dwarf drift.)
//!
//! A leaky bucket "of size B leaking r/s" (Shopify; nginx `limit_req` with `nodelay`, whose
//! `burst=N` lets N + 1 through at once) is a token bucket of rate r and burst B: declaring
//! nginx's N is one token on the safe side.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Rate;
use crate::model::Limit;
use crate::spec::LimitSpec;

/// How the server counts a limit. The plan's `shape:` (kebab-case).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LimitShape {
    /// At most `limit` requests in any window of `window` ("300 requests within 60 seconds").
    #[default]
    SlidingWindow,
    /// Counters reset at window boundaries ("5000 per hour, resets at X"). Aligned to the
    /// server's windows when its headers say what is left and when it resets; paced like a
    /// sliding window without them.
    FixedWindow,
    /// A bucket of `burst` tokens refilled at `limit` ("rate r, burst b"; a leaky bucket "of
    /// size B leaking r/s" is burst B). pacer runs at the rate itself.
    TokenBucket,
}

impl LimitShape {
    /// The name a plan uses (`sliding-window`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LimitShape::SlidingWindow => "sliding-window",
            LimitShape::FixedWindow => "fixed-window",
            LimitShape::TokenBucket => "token-bucket",
        }
    }

    /// Does the server count in windows (so `window` and "burst within a window" mean
    /// something)?
    pub fn is_window(self) -> bool {
        !matches!(self, LimitShape::TokenBucket)
    }
}

/// A token bucket is paced at this share of its rate: 0.5% below it, pacer falls behind the
/// server's refill faster than clocks drift apart (NTP: at most 500 ppm) or a server counting
/// whole milliseconds rounds (see the module doc).
pub const TOKEN_BUCKET_RATE_SHARE: f64 = 0.995;

/// A window limit is never paced below one request per window plus spread, even when its burst
/// takes the whole window (`validate` warns about that case).
const MIN_REQUESTS_PER_WINDOW: f64 = 1.0;

/// What pacer's GCRA runs at for one limit, and what the margin below the declared rate is
/// made of (each cost a share of the declared rate, as it stands alone).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pacing {
    pub shape: LimitShape,
    /// The declared rate (per second).
    pub declared: f64,
    /// The GCRA's rate (per second).
    pub rate: f64,
    /// The GCRA's burst: the declared one, less what a token bucket keeps for the spread.
    pub burst: u32,
    /// The spread `D` the rate allows for.
    pub spread: Duration,
    /// Share of the declared rate lost to the burst (windows: `b / L`).
    pub burst_cost: f64,
    /// Share lost to the spread (windows: `D / (W + D)`; buckets too small for the spread:
    /// `1 - B / (1 + ρD)`).
    pub spread_cost: f64,
    /// Share lost to clock drift (token buckets: `1 - TOKEN_BUCKET_RATE_SHARE`).
    pub drift_cost: f64,
    /// Tokens of a bucket's burst kept back as the spread's allowance.
    pub kept: u32,
}

impl Pacing {
    /// `1 - rate / declared`: the share of the declared rate pacer leaves unused.
    pub fn margin(&self) -> f64 {
        if self.declared > 0.0 {
            (1.0 - self.rate / self.declared).max(0.0)
        } else {
            0.0
        }
    }

    /// The most requests the GCRA can grant in any `y` (`b + r·y`).
    pub fn most_granted_in(&self, y: Duration) -> f64 {
        f64::from(self.burst) + self.rate * y.as_secs_f64()
    }
}

/// The rate and burst pacer's GCRA runs at for a limit of this shape, `limit` per `window`,
/// declared `burst`, when grants may reach the server up to `spread` late. The one place this is
/// decided (see the module doc for why each shape gets what it gets).
pub fn pace(
    shape: LimitShape,
    limit: Rate,
    window: Duration,
    burst: u32,
    spread: Duration,
) -> Pacing {
    let declared = limit.as_per_sec();
    let d = spread.as_secs_f64();
    let burst = burst.max(1);
    match shape {
        LimitShape::SlidingWindow | LimitShape::FixedWindow => {
            let w = window.as_secs_f64();
            let l = declared * w;
            let b = f64::from(burst);
            let rate = (l - b).max(MIN_REQUESTS_PER_WINDOW) / (w + d);
            Pacing {
                shape,
                declared,
                rate,
                burst,
                spread,
                burst_cost: if l > 0.0 { (b / l).min(1.0) } else { 0.0 },
                spread_cost: d / (w + d),
                drift_cost: 0.0,
                kept: 0,
            }
        }
        LimitShape::TokenBucket => {
            let rho_d = declared * d;
            // ceil of a finite, non-negative f64 saturates into u32 with `as`.
            let needed = rho_d.ceil() as u32;
            let kept = needed.min(burst - 1);
            let spread_share = (f64::from(1 + kept) / (1.0 + rho_d)).min(1.0);
            let rate = declared * spread_share.min(TOKEN_BUCKET_RATE_SHARE);
            Pacing {
                shape,
                declared,
                rate,
                burst: burst - kept,
                spread,
                burst_cost: 0.0,
                spread_cost: 1.0 - spread_share,
                drift_cost: 1.0 - TOKEN_BUCKET_RATE_SHARE,
                kept,
            }
        }
    }
}

impl Limit {
    /// [`pace`] for this limit, its own `spread` replacing `default_spread`.
    pub fn pacing(&self, default_spread: Duration) -> Pacing {
        self.pacing_with_spread(self.spread.unwrap_or(default_spread))
    }

    /// [`pace`] for this limit with exactly this spread (a fleet adds its lease hold).
    ///
    /// An adaptive token bucket's `limit` is a ceiling and its `burst` a guess, so the rate the
    /// spread would cost a bucket of the guessed size is not the server's: the ceiling's rate
    /// is kept whole (the burst still keeps its tokens for the spread) and the learner
    /// (pacer_limiter::learn) measures what the server accepts, lateness included, and holds
    /// 95% of it. Cutting the ceiling for the spread put `40/s` burst 1 at 8/s, under nginx's
    /// 10/s: nothing was refused, so nothing was learned.
    pub fn pacing_with_spread(&self, spread: Duration) -> Pacing {
        let mut p = pace(self.shape, self.limit, self.window, self.burst, spread);
        if self.adaptive && self.shape == LimitShape::TokenBucket {
            p.rate = p.declared * TOKEN_BUCKET_RATE_SHARE;
            p.spread_cost = 0.0;
        }
        p
    }
}

/// The shape's checks of a limit as written: `(field, message)` pairs, the field relative to
/// the limit (`burst`, `window`). Called by [`crate::validate`] for every limit.
pub fn check(l: &LimitSpec) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    let burst = l.burst.unwrap_or(1);
    match l.shape {
        LimitShape::TokenBucket => {
            if l.window.is_some() {
                errors.push((
                    "window",
                    "a token bucket has no counting window: its rate is `limit` and its size \
                     `burst`; remove `window` (or say shape: sliding-window if the server counts \
                     requests per window)"
                        .to_string(),
                ));
            }
        }
        LimitShape::SlidingWindow | LimitShape::FixedWindow => {
            // Requests per window, as the pacing math counts them (a `window` longer than the
            // rate's period holds more).
            let window = l.window.map_or(l.limit.per(), crate::HumanDuration::get);
            let per_window = (l.limit.as_per_sec() * window.as_secs_f64())
                .floor()
                .max(1.0);
            if f64::from(burst) > per_window {
                errors.push((
                    "burst",
                    format!(
                        "{burst} requests at once is more than the limit allows in a whole window \
                         ({per_window:.0} per {} for a {shape} of {}): the server would refuse the \
                         rest. A server that states a rate and a separate burst is a token or leaky \
                         bucket (nginx limit_req, AWS API Gateway, Shopify): say shape: \
                         token-bucket. Otherwise lower burst to at most {per_window:.0} (burst: 1 \
                         uses the most of the limit)",
                        humantime::format_duration(window),
                        l.limit,
                        shape = l.shape.as_str(),
                    ),
                ));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPREAD: Duration = Duration::from_millis(100);

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    fn bucket(r: &str, burst: u32, spread: Duration) -> Pacing {
        let r = rate(r);
        pace(LimitShape::TokenBucket, r, r.per(), burst, spread)
    }

    #[test]
    fn a_token_bucket_of_5_per_second_burst_5_is_paced_at_its_rate() {
        let p = bucket("5/s", 5, SPREAD);
        assert!(p.rate >= 0.97 * 5.0, "{p:?}");
        assert!(p.rate < 5.0, "{p:?}");
        assert_eq!(
            (p.burst, p.kept),
            (4, 1),
            "one token kept for 0.5 token of spread"
        );
        assert!(p.margin() < 0.01, "{}", p.margin());
    }

    #[test]
    fn sliding_windows_are_paced_as_before() {
        for (r, burst, spread, expect) in [
            ("300/min", 5, SPREAD, 295.0 / 60.1),
            ("600/10s", 1, SPREAD, 599.0 / 10.1),
            ("10/s", 1, SPREAD, 9.0 / 1.1),
            ("5/s", 5, SPREAD, 1.0 / 1.1),
            ("300/min", 5, Duration::from_secs(1), 295.0 / 61.0),
        ] {
            let r = rate(r);
            for shape in [LimitShape::SlidingWindow, LimitShape::FixedWindow] {
                let p = pace(shape, r, r.per(), burst, spread);
                assert!((p.rate - expect).abs() < 1e-9, "{shape:?} {r}: {p:?}");
                assert_eq!(p.burst, burst);
            }
        }
    }

    #[test]
    fn a_window_limit_counts_its_own_window() {
        // 10/s counted over 10 s: 100 per window.
        let p = pace(
            LimitShape::SlidingWindow,
            rate("10/s"),
            Duration::from_secs(10),
            5,
            SPREAD,
        );
        assert!((p.rate - 95.0 / 10.1).abs() < 1e-9, "{p:?}");
        assert!((p.burst_cost - 0.05).abs() < 1e-9);
    }

    #[test]
    fn a_bucket_too_small_for_the_spread_keeps_all_but_one_token_and_slows_down() {
        // 100/s with 100 ms of spread: 10 tokens of jitter, a bucket of 4.
        let p = bucket("100/s", 4, SPREAD);
        assert_eq!((p.burst, p.kept), (1, 3));
        assert!((p.rate - 100.0 * 4.0 / 11.0).abs() < 1e-9, "{p:?}");
        // A bucket of 1: the gap between two grants must cover the spread.
        let p = bucket("5/s", 1, SPREAD);
        assert!((p.rate - 5.0 / 1.5).abs() < 1e-9, "{p:?}");
        assert!(p.spread_cost > 0.3);
    }

    #[test]
    fn a_bucket_without_spread_keeps_nothing() {
        let p = bucket("5/s", 5, Duration::ZERO);
        assert_eq!((p.burst, p.kept), (5, 0));
        assert!((p.rate - 5.0 * TOKEN_BUCKET_RATE_SHARE).abs() < 1e-9);
    }

    /// A server's token bucket (capacity `b`, refill `rho`/s, full at the start): how many of
    /// these arrivals (seconds, any order) it refuses.
    fn refused_by_bucket(mut arrivals: Vec<f64>, rho: f64, b: f64) -> usize {
        arrivals.sort_by(f64::total_cmp);
        let (mut tokens, mut last, mut refused) = (b, arrivals[0], 0);
        for a in arrivals {
            tokens = (tokens + (a - last) * rho).min(b);
            last = a;
            // A hair of tolerance for float rounding, far below any real clock's resolution.
            if tokens >= 1.0 - 1e-9 {
                tokens -= 1.0;
            } else {
                refused += 1;
            }
        }
        refused
    }

    /// The grants of a GCRA at `p.rate` with burst `p.burst` when requests always wait: the
    /// densest schedule pacer can produce.
    fn densest_grants(p: &Pacing, n: usize) -> Vec<f64> {
        let t = 1.0 / p.rate;
        let tau = t * f64::from(p.burst - 1);
        let (mut tat, mut out) = (0.0f64, Vec::with_capacity(n));
        for _ in 0..n {
            let at = (tat - tau).max(0.0);
            out.push(at);
            tat = tat.max(at) + t;
        }
        out
    }

    #[test]
    fn a_paced_token_bucket_is_never_refused_with_grants_up_to_the_spread_late() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for (r, burst, spread_ms) in [
            ("5/s", 5, 100),
            ("5/s", 6, 100),
            ("10/s", 2, 100),
            ("100/s", 4, 100),
            ("100/s", 20, 150),
            ("2/s", 40, 700),
            ("5/s", 1, 100),
            ("1000/s", 50, 10),
        ] {
            let d = Duration::from_millis(spread_ms).as_secs_f64();
            let p = bucket(r, burst, Duration::from_millis(spread_ms));
            let grants = densest_grants(&p, 2000);
            let n = grants.len();
            // Adversarial delays: a prefix late by D then the rest on time (compresses the
            // schedule the most at the switch), for many switch points; then random delays.
            for switch in (0..n).step_by(97).chain([1, 2, 3, n / 2]) {
                let arrivals = grants
                    .iter()
                    .enumerate()
                    .map(|(i, g)| if i < switch { g + d } else { *g })
                    .collect();
                let refused = refused_by_bucket(arrivals, p.declared, f64::from(burst));
                assert_eq!(refused, 0, "{r} burst {burst}: switch {switch}: {p:?}");
            }
            let arrivals = grants.iter().map(|g| g + next() * d).collect();
            assert_eq!(
                refused_by_bucket(arrivals, p.declared, f64::from(burst)),
                0,
                "{r} burst {burst} random: {p:?}"
            );
        }
    }

    #[test]
    fn the_old_window_pacing_of_a_bucket_would_use_a_fifth_of_it() {
        let r = rate("5/s");
        let window = pace(LimitShape::SlidingWindow, r, r.per(), 5, SPREAD);
        let bucket = pace(LimitShape::TokenBucket, r, r.per(), 5, SPREAD);
        assert!(window.rate < 0.2 * 5.0, "{window:?}");
        assert!(bucket.rate / window.rate > 5.0);
    }

    fn spec(v: serde_json::Value) -> LimitSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_windows_burst_above_its_limit_is_explained_with_the_token_bucket_hint() {
        let e = check(&spec(
            serde_json::json!({"name": "l", "limit": "2/s", "burst": 40}),
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "burst");
        for words in [
            "40 requests at once",
            "2 per 1s",
            "shape: token-bucket",
            "at most 2",
        ] {
            assert!(e[0].1.contains(words), "{words}: {}", e[0].1);
        }
        // A bucket of 40 leaking 2/s is what Shopify states: fine as a token bucket.
        let ok = spec(
            serde_json::json!({"name": "l", "limit": "2/s", "burst": 40, "shape": "token-bucket"}),
        );
        assert!(check(&ok).is_empty());
        // A longer window holds more: 10/s counted over 10 s allows a burst of 50.
        let ok =
            spec(serde_json::json!({"name": "l", "limit": "10/s", "window": "10s", "burst": 50}));
        assert!(check(&ok).is_empty());
    }

    #[test]
    fn a_token_bucket_with_a_window_is_refused_naming_the_field() {
        let e = check(&spec(serde_json::json!(
            {"name": "l", "limit": "5/s", "window": "10s", "shape": "token-bucket"}
        )));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "window");
        assert!(e[0].1.contains("no counting window"), "{}", e[0].1);
    }

    #[test]
    fn shapes_are_written_in_kebab_case() {
        for (s, shape) in [
            ("sliding-window", LimitShape::SlidingWindow),
            ("fixed-window", LimitShape::FixedWindow),
            ("token-bucket", LimitShape::TokenBucket),
        ] {
            let v: LimitShape = serde_json::from_value(serde_json::json!(s)).unwrap();
            assert_eq!(v, shape);
            assert_eq!(shape.as_str(), s);
            assert_eq!(serde_json::to_value(shape).unwrap(), serde_json::json!(s));
        }
    }
}

#[cfg(test)]
mod adaptive_tests {
    use super::*;

    fn limit(decl: &str) -> Limit {
        let text = format!(
            "name: p\ntarget: http://127.0.0.1:1\nlimits:\n  - {decl}\nscenarios:\n  - name: s\n    \
             executor: constant-vus\n    vus: 1\n    duration: 1s\n    requests: [{{name: r, path: /}}]\n"
        );
        let plan = crate::load_str(&text, "p.yaml", &Default::default()).unwrap();
        plan.limits[0].clone()
    }

    #[test]
    fn an_adaptive_token_buckets_ceiling_is_paced_whole_and_a_declared_one_for_its_spread() {
        let spread = Duration::from_millis(100);
        let adaptive =
            limit("{name: g, limit: 40/s, adaptive: true, shape: token-bucket}").pacing(spread);
        assert!(adaptive.rate >= 0.99 * 40.0, "{adaptive:?}");
        assert_eq!(adaptive.spread, spread);
        let declared = limit("{name: g, limit: 40/s, shape: token-bucket}").pacing(spread);
        assert!((declared.rate - 8.0).abs() < 0.01, "{declared:?}");
    }
}
