//! `retry`: the statuses retried, the attempts, the backoff and how Retry-After is honoured.

use super::Checker;
use crate::HumanDuration;
use crate::model::{RetryPolicy, defaults};
use crate::spec::RetrySpec;

/// The plan's policy (without `retry`: [`RetryPolicy::default`], no retries).
pub(super) fn policy(c: &mut Checker, r: Option<&RetrySpec>) -> RetryPolicy {
    let d = RetryPolicy::default();
    let Some(r) = r else { return d };
    let on_status = r.on.clone().unwrap_or(d.on_status);
    for (i, s) in on_status.iter().enumerate() {
        c.status(format!("retry.on[{i}]"), *s);
    }
    let max_attempts = r
        .max_attempts
        .unwrap_or(defaults::RETRY_ATTEMPTS_WHEN_ENABLED);
    if max_attempts == 0 {
        c.err("retry.maxAttempts", "must be at least 1 (1 means no retry)");
    } else if max_attempts > 100 {
        c.err("retry.maxAttempts", "at most 100");
    }
    let b = r.backoff.clone().unwrap_or_default();
    let backoff_base = b.base.map_or(d.backoff_base, HumanDuration::get);
    let backoff_max = b.max.map_or(d.backoff_max, HumanDuration::get);
    if backoff_max < backoff_base {
        c.err("retry.backoff.max", "must not be below retry.backoff.base");
    }
    let retry_after_max = r
        .retry_after_max
        .map_or(d.retry_after_max, HumanDuration::get);
    if retry_after_max.is_zero() {
        c.err("retry.retryAfterMax", "must be above zero");
    }
    RetryPolicy {
        on_status,
        on_transport_error: r.on_transport_error.unwrap_or(true),
        max_attempts,
        backoff_base,
        backoff_max,
        jitter: b.jitter.unwrap_or_default(),
        honor_retry_after: r.honor_retry_after.unwrap_or(true),
        retry_after_max,
        retry_after_default: r
            .retry_after_default
            .map_or(d.retry_after_default, HumanDuration::get),
        pause_scope_on_429: r.pause_scope_on429.unwrap_or(true),
    }
}
