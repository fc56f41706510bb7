//! Retry decisions: which outcomes are retried, how long to wait (exponential backoff with full
//! jitter, Retry-After as a floor), and how to read Retry-After without trusting it blindly.

use std::time::{Duration, SystemTime};

use pacer_plan::RetryPolicy;
use pacer_plan::spec::Jitter;
use rand::Rng;

/// A Retry-After header as understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// A usable wait, already clamped to the policy's maximum.
    Wait { wait: Duration, clamped: bool },
    /// Present but unusable (unparsable, negative). Counted and reported.
    Malformed,
}

/// Parse `Retry-After` (delta-seconds or an HTTP-date) relative to `now`.
/// Values above `max` are clamped to `max`; a date in the past means no wait. Any input (a
/// hostile server's) gives an answer, never a panic, and never a wait above `max`.
pub fn parse_retry_after(value: &[u8], now: SystemTime, max: Duration) -> RetryAfter {
    let Ok(s) = std::str::from_utf8(value) else {
        return RetryAfter::Malformed;
    };
    let s = s.trim();
    let wait = if let Ok(secs) = s.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(f) = s.parse::<f64>() {
        // Not in RFC 9110, but some servers send fractions; negative or NaN is malformed.
        if !(f.is_finite() && f >= 0.0) {
            return RetryAfter::Malformed;
        }
        // Beyond what a Duration holds: clamped to `max` below like any long wait.
        Duration::try_from_secs_f64(f).unwrap_or(Duration::MAX)
    } else if let Ok(at) = httpdate::parse_http_date(s) {
        at.duration_since(now).unwrap_or(Duration::ZERO)
    } else {
        return RetryAfter::Malformed;
    };
    if wait > max {
        RetryAfter::Wait {
            wait: max,
            clamped: true,
        }
    } else {
        RetryAfter::Wait {
            wait,
            clamped: false,
        }
    }
}

/// The wait before retry number `retry` (1 for the first retry).
pub fn backoff_delay(policy: &RetryPolicy, retry: u32, retry_after: Option<Duration>) -> Duration {
    let exp = retry.saturating_sub(1).min(30);
    let ceiling = policy
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(policy.backoff_max);
    let backoff = match policy.jitter {
        Jitter::Full => {
            let nanos = ceiling.as_nanos() as u64;
            Duration::from_nanos(if nanos == 0 {
                0
            } else {
                rand::rng().random_range(0..=nanos)
            })
        }
        Jitter::None => ceiling,
    };
    match retry_after {
        Some(ra) if policy.honor_retry_after => backoff.max(ra),
        _ => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::now();
        let max = Duration::from_secs(120);
        assert_eq!(
            parse_retry_after(b"2", now, max),
            RetryAfter::Wait {
                wait: Duration::from_secs(2),
                clamped: false
            }
        );
        assert_eq!(
            parse_retry_after(b"99999999999", now, max),
            RetryAfter::Wait {
                wait: max,
                clamped: true
            }
        );
        assert_eq!(parse_retry_after(b"soon", now, max), RetryAfter::Malformed);
        assert_eq!(parse_retry_after(b"-5", now, max), RetryAfter::Malformed);
        assert_eq!(parse_retry_after(b"\xff", now, max), RetryAfter::Malformed);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(10));
        match parse_retry_after(later.as_bytes(), now, max) {
            RetryAfter::Wait { wait, .. } => {
                assert!(wait <= Duration::from_secs(10) && wait >= Duration::from_secs(9))
            }
            other => panic!("{other:?}"),
        }
        let past = httpdate::fmt_http_date(now - Duration::from_secs(10));
        assert_eq!(
            parse_retry_after(past.as_bytes(), now, max),
            RetryAfter::Wait {
                wait: Duration::ZERO,
                clamped: false
            }
        );
    }

    #[test]
    fn full_jitter_stays_under_the_cap_and_retry_after_is_a_floor() {
        let p = RetryPolicy {
            max_attempts: 5,
            ..RetryPolicy::default()
        };
        for retry in 1..10 {
            let d = backoff_delay(&p, retry, None);
            assert!(d <= p.backoff_max);
            assert!(d <= p.backoff_base * (1 << (retry - 1)));
        }
        let d = backoff_delay(&p, 1, Some(Duration::from_secs(2)));
        assert!(d >= Duration::from_secs(2));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A policy's Retry-After cap: from zero to far beyond any plan's.
        fn any_max() -> impl Strategy<Value = Duration> {
            prop_oneof![
                (0u64..=86_400).prop_map(Duration::from_secs),
                Just(Duration::MAX),
            ]
        }

        fn wait_at_most(r: RetryAfter, max: Duration) -> bool {
            match r {
                RetryAfter::Wait { wait, clamped } => wait <= max && (!clamped || wait == max),
                RetryAfter::Malformed => true,
            }
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_and_never_wait_past_the_cap(
                value in proptest::collection::vec(any::<u8>(), 0..64),
                max in any_max(),
            ) {
                let r = parse_retry_after(&value, SystemTime::now(), max);
                prop_assert!(wait_at_most(r, max), "{r:?}");
            }

            #[test]
            fn header_like_text_never_panics_and_never_waits_past_the_cap(
                value in r"[ 0-9a-zA-Z,.:+\-eE]{0,40}",
                max in any_max(),
            ) {
                let r = parse_retry_after(value.as_bytes(), SystemTime::now(), max);
                prop_assert!(wait_at_most(r, max), "{value:?}: {r:?}");
            }

            #[test]
            fn delta_seconds_of_any_size_wait_that_long_or_the_cap(
                secs in any::<u64>(),
                max in any_max(),
            ) {
                let r = parse_retry_after(secs.to_string().as_bytes(), SystemTime::now(), max);
                let want = Duration::from_secs(secs).min(max);
                prop_assert_eq!(r, RetryAfter::Wait { wait: want, clamped: Duration::from_secs(secs) > max });
            }

            #[test]
            fn huge_and_fractional_numbers_are_clamped_or_malformed(
                f in prop_oneof![any::<f64>(), 0.0f64..1e30],
                max in any_max(),
            ) {
                let r = parse_retry_after(f.to_string().as_bytes(), SystemTime::now(), max);
                if f.is_finite() && f >= 0.0 {
                    prop_assert!(matches!(r, RetryAfter::Wait { .. }), "{f}: {r:?}");
                }
                prop_assert!(wait_at_most(r, max), "{f}: {r:?}");
            }

            #[test]
            fn http_dates_wait_until_then_within_the_cap(
                offset in -400_000_000i64..400_000_000,
                max in any_max(),
            ) {
                let now = SystemTime::now();
                let at = if offset >= 0 {
                    now + Duration::from_secs(offset as u64)
                } else {
                    now - Duration::from_secs(offset.unsigned_abs())
                };
                let r = parse_retry_after(httpdate::fmt_http_date(at).as_bytes(), now, max);
                match r {
                    RetryAfter::Wait { wait, .. } => {
                        let expected = Duration::from_secs(offset.max(0) as u64).min(max);
                        // An HTTP date has whole seconds: `now`'s fraction is lost.
                        prop_assert!(wait <= expected && expected - wait <= Duration::from_secs(1), "{offset}: {r:?}");
                    }
                    RetryAfter::Malformed => prop_assert!(false, "{offset}: malformed"),
                }
            }
        }
    }
}
