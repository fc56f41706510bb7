//! Retry decisions: which outcomes are retried, how long to wait (exponential backoff with full
//! jitter, Retry-After as a floor), how to read Retry-After without trusting it blindly, how
//! long the limiter pauses a scope after an answer, and how a request's retries ended. All pure:
//! the sending around them is in `send.rs`.

use std::time::{Duration, SystemTime};

use pacer_plan::RetryPolicy;
use pacer_plan::spec::Jitter;
use pacer_stats::{ErrorKind, RetryOutcome};
use rand::Rng;

/// A Retry-After header as understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryAfter {
    /// A usable wait, already clamped to the policy's maximum.
    Wait { wait: Duration, clamped: bool },
    /// Present but unusable (unparsable, negative). Counted and reported.
    Malformed,
}

impl RetryAfter {
    /// The wait it asks for (`None` when malformed).
    pub(crate) fn wait(self) -> Option<Duration> {
        match self {
            RetryAfter::Wait { wait, .. } => Some(wait),
            RetryAfter::Malformed => None,
        }
    }
}

/// How an attempt's exchange ended, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exchange {
    /// The server answered `status`, with this Retry-After (read on a 429 or a 503 only).
    Answered {
        status: u16,
        retry_after: Option<RetryAfter>,
    },
    /// No answer: the transport failed this way.
    Failed(ErrorKind),
}

/// What follows an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The policy does not retry this outcome.
    NotRetryable,
    /// The policy would retry it, but the attempts are used up.
    OutOfAttempts,
    /// Retry after a backoff no shorter than `floor`: the server's Retry-After, or the
    /// policy's default after a 429 without a usable one.
    Retry { floor: Option<Duration> },
}

/// Decide what follows attempt number `attempt` (from 1) of at most `max_attempts`.
/// `adaptive`: the request matched an adaptive limit, which learns the server's rate from a
/// refusal and paces the retry itself, so only the server's own Retry-After floors the backoff,
/// not the plan's blunt default.
pub(crate) fn next(
    policy: &RetryPolicy,
    exchange: &Exchange,
    attempt: u32,
    max_attempts: u32,
    adaptive: bool,
) -> Next {
    let retryable = match *exchange {
        Exchange::Answered { status, .. } => policy.on_status.contains(&status),
        // A body over the cap would be over it again.
        Exchange::Failed(kind) => policy.on_transport_error && kind != ErrorKind::BodyTooLarge,
    };
    if !retryable {
        return Next::NotRetryable;
    }
    if attempt >= max_attempts {
        return Next::OutOfAttempts;
    }
    let floor = match *exchange {
        Exchange::Answered {
            retry_after: Some(RetryAfter::Wait { wait, .. }),
            ..
        } => Some(wait),
        _ if adaptive => None,
        Exchange::Answered {
            retry_after: Some(RetryAfter::Malformed),
            ..
        }
        | Exchange::Answered {
            status: 429,
            retry_after: None,
        } => Some(policy.retry_after_default),
        Exchange::Answered { .. } | Exchange::Failed(_) => None,
    };
    Next::Retry { floor }
}

/// The Retry-After of an answer: read on a 429 or a 503 only (elsewhere it means nothing to
/// pacing), relative to `now` (asked only when there is a header to read: most answers carry
/// none, and the clock is not free on the hot path), clamped to `max`.
pub(crate) fn retry_after_of(
    status: u16,
    value: Option<&[u8]>,
    now: impl FnOnce() -> SystemTime,
    max: Duration,
) -> Option<RetryAfter> {
    match value {
        Some(v) if status == 429 || status == 503 => Some(parse_retry_after(v, now(), max)),
        _ => None,
    }
}

/// How long the limiter pauses the request's scope after an answer (its `Feedback`): none when
/// the plan turns pausing (or Retry-After) off, the server's wait when it gave a usable one,
/// and the policy's default after a 429 without one.
pub(crate) fn scope_pause(
    policy: &RetryPolicy,
    status: u16,
    retry_after: Option<RetryAfter>,
) -> Option<Duration> {
    let wait = retry_after.and_then(RetryAfter::wait);
    if !(policy.pause_scope_on_429 && policy.honor_retry_after) {
        None
    } else if status == 429 && wait.is_none() {
        Some(policy.retry_after_default)
    } else {
        wait
    }
}

/// How a logical request's retries ended, for the summary: `last_retryable` says whether the
/// policy would have retried its last exchange (false when none was classified).
pub(crate) fn outcome(attempts: u32, failed: bool, last_retryable: bool) -> RetryOutcome {
    match (attempts > 1, failed) {
        (true, true) => RetryOutcome::GaveUp,
        (true, false) => RetryOutcome::SucceededAfterRetry,
        (false, true) if !last_retryable => RetryOutcome::NotRetryable,
        (false, _) => RetryOutcome::NotRetried,
    }
}

/// Parse `Retry-After` (delta-seconds or an HTTP-date) relative to `now`.
/// Values above `max` are clamped to `max`; a date in the past means no wait. Any input (a
/// hostile server's) gives an answer, never a panic, and never a wait above `max`.
pub(crate) fn parse_retry_after(value: &[u8], now: SystemTime, max: Duration) -> RetryAfter {
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
pub(crate) fn backoff_delay(
    policy: &RetryPolicy,
    retry: u32,
    retry_after: Option<Duration>,
) -> Duration {
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

    /// A policy that retries, with room for two more attempts.
    fn retrying() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        }
    }

    fn answered(status: u16, retry_after: Option<RetryAfter>) -> Exchange {
        Exchange::Answered {
            status,
            retry_after,
        }
    }

    const TWO_S: RetryAfter = RetryAfter::Wait {
        wait: Duration::from_secs(2),
        clamped: false,
    };

    #[test]
    fn statuses_the_policy_names_are_retried_others_not() {
        let p = retrying();
        assert_eq!(
            next(&p, &answered(502, None), 1, 3, false),
            Next::Retry { floor: None }
        );
        assert_eq!(
            next(&p, &answered(500, None), 1, 3, false),
            Next::NotRetryable
        );
        assert_eq!(
            next(&p, &answered(200, None), 1, 3, false),
            Next::NotRetryable
        );
        // Not retryable wins over out of attempts: the summary says which.
        assert_eq!(
            next(&p, &answered(404, None), 3, 3, false),
            Next::NotRetryable
        );
        assert_eq!(
            next(&p, &answered(502, None), 3, 3, false),
            Next::OutOfAttempts
        );
        assert_eq!(
            next(&p, &answered(502, None), 4, 3, false),
            Next::OutOfAttempts
        );
    }

    #[test]
    fn transport_errors_are_retried_when_the_policy_says_except_a_body_over_the_cap() {
        let p = retrying();
        assert_eq!(
            next(&p, &Exchange::Failed(ErrorKind::Timeout), 1, 3, false),
            Next::Retry { floor: None }
        );
        assert_eq!(
            next(&p, &Exchange::Failed(ErrorKind::BodyTooLarge), 1, 3, false),
            Next::NotRetryable
        );
        let off = RetryPolicy {
            on_transport_error: false,
            ..retrying()
        };
        assert_eq!(
            next(&off, &Exchange::Failed(ErrorKind::Timeout), 1, 3, false),
            Next::NotRetryable
        );
    }

    #[test]
    fn retry_after_is_the_floor_and_a_429_without_a_usable_one_gets_the_default() {
        let p = retrying();
        let default = Some(p.retry_after_default);
        let two = Some(Duration::from_secs(2));
        assert_eq!(
            next(&p, &answered(429, Some(TWO_S)), 1, 3, false),
            Next::Retry { floor: two }
        );
        assert_eq!(
            next(&p, &answered(503, Some(TWO_S)), 1, 3, false),
            Next::Retry { floor: two }
        );
        assert_eq!(
            next(&p, &answered(429, None), 1, 3, false),
            Next::Retry { floor: default }
        );
        assert_eq!(
            next(&p, &answered(429, Some(RetryAfter::Malformed)), 1, 3, false),
            Next::Retry { floor: default }
        );
        assert_eq!(
            next(&p, &answered(503, Some(RetryAfter::Malformed)), 1, 3, false),
            Next::Retry { floor: default }
        );
        // A 503 without one has no floor: the backoff alone decides.
        assert_eq!(
            next(&p, &answered(503, None), 1, 3, false),
            Next::Retry { floor: None }
        );
    }

    #[test]
    fn an_adaptive_limit_paces_a_retry_and_only_the_servers_retry_after_floors_it() {
        let p = retrying();
        assert_eq!(
            next(&p, &answered(429, None), 1, 3, true),
            Next::Retry { floor: None }
        );
        assert_eq!(
            next(&p, &answered(429, Some(RetryAfter::Malformed)), 1, 3, true),
            Next::Retry { floor: None }
        );
        assert_eq!(
            next(&p, &answered(429, Some(TWO_S)), 1, 3, true),
            Next::Retry {
                floor: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(
            next(&p, &answered(404, None), 1, 3, true),
            Next::NotRetryable
        );
    }

    #[test]
    fn retry_after_is_read_on_429_and_503_only() {
        let now = SystemTime::now();
        let max = Duration::from_secs(120);
        assert_eq!(retry_after_of(429, Some(b"2"), || now, max), Some(TWO_S));
        assert_eq!(retry_after_of(503, Some(b"2"), || now, max), Some(TWO_S));
        assert_eq!(retry_after_of(200, Some(b"2"), || now, max), None);
        assert_eq!(retry_after_of(502, Some(b"2"), || now, max), None);
        assert_eq!(retry_after_of(429, None, || now, max), None);
        assert_eq!(
            retry_after_of(429, Some(b"soon"), || now, max),
            Some(RetryAfter::Malformed)
        );
    }

    #[test]
    fn the_scope_pauses_for_the_servers_wait_or_a_429s_default_unless_the_plan_says_not() {
        let p = RetryPolicy::default();
        let two = Some(Duration::from_secs(2));
        assert_eq!(scope_pause(&p, 429, Some(TWO_S)), two);
        assert_eq!(scope_pause(&p, 503, Some(TWO_S)), two);
        assert_eq!(scope_pause(&p, 429, None), Some(p.retry_after_default));
        assert_eq!(
            scope_pause(&p, 429, Some(RetryAfter::Malformed)),
            Some(p.retry_after_default)
        );
        assert_eq!(scope_pause(&p, 503, None), None);
        assert_eq!(scope_pause(&p, 200, None), None);
        for off in [
            RetryPolicy {
                pause_scope_on_429: false,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                honor_retry_after: false,
                ..RetryPolicy::default()
            },
        ] {
            assert_eq!(scope_pause(&off, 429, Some(TWO_S)), None);
            assert_eq!(scope_pause(&off, 429, None), None);
        }
    }

    #[test]
    fn how_the_retries_ended() {
        assert_eq!(outcome(3, true, true), RetryOutcome::GaveUp);
        assert_eq!(outcome(2, true, false), RetryOutcome::GaveUp);
        assert_eq!(outcome(2, false, true), RetryOutcome::SucceededAfterRetry);
        assert_eq!(outcome(1, true, false), RetryOutcome::NotRetryable);
        // Retryable, but one attempt was all there was (or the test ended in the backoff).
        assert_eq!(outcome(1, true, true), RetryOutcome::NotRetried);
        assert_eq!(outcome(1, false, false), RetryOutcome::NotRetried);
    }

    #[test]
    fn a_wait_is_its_duration_and_a_malformed_one_none() {
        assert_eq!(TWO_S.wait(), Some(Duration::from_secs(2)));
        assert_eq!(RetryAfter::Malformed.wait(), None);
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
