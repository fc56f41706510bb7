//! Runtime control of the mock: injected faults (forced 429/401, unavailable periods, latency,
//! stalls, `Retry-After` format), reset and statistics. [`Control`] is the in-process handle;
//! `POST /_mock/faults` takes a [`FaultsUpdate`] with the same meaning.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::HeaderValue;
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{
    LatencyConfig, MockConfig, RetryAfterFormat, StallConfig, UnavailableConfig, validate_latency,
    validate_stall,
};
use crate::error::MockError;
use crate::limits::duration_us;
use crate::state::Shared;
use crate::stats::{ArrivalsView, StatsView};

/// The values `malformed` rotates through: a word, a negative number, an absurd delay.
const MALFORMED_RETRY_AFTER: [&str; 3] = ["soon", "-5", "99999999999"];

/// A period of 503s, in µs since server start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outage {
    pub start_us: u64,
    pub end_us: u64,
    pub retry_after: u64,
}

/// Fault state consulted on every API request.
#[derive(Debug)]
pub(crate) struct Faults {
    pub force429: u64,
    pub force429_retry_after: u64,
    pub force401: u64,
    /// From the config, relative to server start.
    pub scheduled: Option<Outage>,
    /// Set at runtime.
    pub runtime: Option<Outage>,
    pub latency: LatencyConfig,
    pub stall: Option<StallConfig>,
    pub retry_after_format: RetryAfterFormat,
    malformed_next: usize,
}

impl Faults {
    pub(crate) fn from_config(c: &MockConfig) -> Self {
        Faults {
            force429: 0,
            force429_retry_after: 1,
            force401: 0,
            scheduled: c.unavailable.as_ref().map(|u| {
                let start_us = duration_us(u.start);
                Outage {
                    start_us,
                    end_us: start_us.saturating_add(duration_us(u.duration)),
                    retry_after: u.retry_after,
                }
            }),
            runtime: None,
            latency: c.latency.clone(),
            stall: c.stall.clone(),
            retry_after_format: c.retry_after_format,
            malformed_next: 0,
        }
    }

    /// The `Retry-After` seconds of the outage in force at `now_us`, if any.
    pub(crate) fn outage_at(&self, now_us: u64) -> Option<u64> {
        [self.runtime, self.scheduled]
            .into_iter()
            .flatten()
            .find(|o| o.start_us <= now_us && now_us < o.end_us)
            .map(|o| o.retry_after)
    }

    /// `Retry-After` for a delay of `secs`, written as the current format says (`None`: no
    /// header).
    pub(crate) fn retry_after(&mut self, secs: u64) -> Option<HeaderValue> {
        match self.retry_after_format {
            RetryAfterFormat::Seconds => Some(HeaderValue::from(secs)),
            RetryAfterFormat::HttpDate => {
                // An HTTP-date has whole seconds: round the instant up so a client waiting
                // until then never comes back before `secs` have passed.
                let at = SystemTime::now() + Duration::from_secs(secs.min(10 * 365 * 86_400));
                let since_epoch = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                let whole = Duration::from_secs(since_epoch.as_secs() + 1);
                let date = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + whole);
                HeaderValue::from_str(&date).ok()
            }
            RetryAfterFormat::Missing => None,
            RetryAfterFormat::Malformed => {
                let v = MALFORMED_RETRY_AFTER[self.malformed_next % MALFORMED_RETRY_AFTER.len()];
                self.malformed_next = self.malformed_next.wrapping_add(1);
                Some(HeaderValue::from_static(v))
            }
        }
    }

    fn view(&self, now_us: u64) -> FaultsView {
        FaultsView {
            pending429: self.force429,
            force429_retry_after: self.force429_retry_after,
            pending401: self.force401,
            unavailable_now: self.outage_at(now_us).is_some(),
            latency: self.latency.clone(),
            stall: self.stall.clone(),
            retry_after_format: self.retry_after_format,
        }
    }
}

/// `force429`: the next `count` API requests get 429 with this `Retry-After`, whatever the
/// limits say.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Force429 {
    pub count: u64,
    /// Seconds (formatted as `retryAfterFormat` says).
    #[serde(default = "one")]
    pub retry_after: u64,
}

/// `force401`: the next `count` API requests get 401 and the token each carried is revoked, so
/// the client has to fetch a new one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Force401 {
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

/// The body of `POST /_mock/faults`: absent fields leave that fault unchanged.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultsUpdate {
    /// Replaces the pending count of forced 429s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force429: Option<Force429>,
    /// Replaces the pending count of forced 401s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force401: Option<Force401>,
    /// A period of 503s starting `start` from now; `null` ends any runtime period.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub unavailable: Option<Option<UnavailableConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyConfig>,
    /// Stall windows, counted from server start; `null` turns stalls off.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub stall: Option<Option<StallConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_format: Option<RetryAfterFormat>,
}

/// Tells `null` (clear: `Some(None)`) from an absent field (unchanged: `None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The fault state after an update (the answer of `POST /_mock/faults`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultsView {
    pub pending429: u64,
    pub force429_retry_after: u64,
    pub pending401: u64,
    pub unavailable_now: bool,
    pub latency: LatencyConfig,
    pub stall: Option<StallConfig>,
    pub retry_after_format: RetryAfterFormat,
}

/// In-process control of a running mock (what `/_mock/*` does over HTTP).
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// Applies a fault update atomically (all of it or, when invalid, none of it).
    pub fn apply(&self, update: FaultsUpdate) -> Result<FaultsView, MockError> {
        if let Some(l) = &update.latency {
            validate_latency("latency", l)?;
        }
        if let Some(Some(s)) = &update.stall {
            validate_stall("stall", s)?;
        }
        let now = self.shared.now_us();
        let mut f = self.shared.faults.lock();
        if let Some(x) = update.force429 {
            f.force429 = x.count;
            f.force429_retry_after = x.retry_after;
        }
        if let Some(x) = update.force401 {
            f.force401 = x.count;
        }
        if let Some(u) = update.unavailable {
            f.runtime = u.map(|u| {
                let start_us = now.saturating_add(duration_us(u.start));
                Outage {
                    start_us,
                    end_us: start_us.saturating_add(duration_us(u.duration)),
                    retry_after: u.retry_after,
                }
            });
        }
        if let Some(l) = update.latency {
            f.latency = l;
        }
        if let Some(s) = update.stall {
            f.stall = s;
        }
        if let Some(r) = update.retry_after_format {
            f.retry_after_format = r;
        }
        Ok(f.view(now))
    }

    /// The next `count` API requests get 429 with `Retry-After: retry_after_secs`.
    pub fn force_429(&self, count: u64, retry_after_secs: u64) {
        let mut f = self.shared.faults.lock();
        f.force429 = count;
        f.force429_retry_after = retry_after_secs;
    }

    /// The next `count` API requests get 401 and the tokens they carry are revoked.
    pub fn force_401(&self, count: u64) {
        self.shared.faults.lock().force401 = count;
    }

    /// API requests get 503 for `duration` from now, with `Retry-After: retry_after_secs`.
    pub fn set_unavailable(&self, duration: Duration, retry_after_secs: u64) {
        let now = self.shared.now_us();
        self.shared.faults.lock().runtime = Some(Outage {
            start_us: now,
            end_us: now.saturating_add(duration_us(duration)),
            retry_after: retry_after_secs,
        });
    }

    /// Ends a runtime unavailable period (a configured one still applies).
    pub fn clear_unavailable(&self) {
        self.shared.faults.lock().runtime = None;
    }

    pub fn set_latency(&self, latency: LatencyConfig) -> Result<(), MockError> {
        validate_latency("latency", &latency)?;
        self.shared.faults.lock().latency = latency;
        Ok(())
    }

    /// Stall windows (counted from server start); `None` turns them off.
    pub fn set_stall(&self, stall: Option<StallConfig>) -> Result<(), MockError> {
        if let Some(s) = &stall {
            validate_stall("stall", s)?;
        }
        self.shared.faults.lock().stall = stall;
        Ok(())
    }

    pub fn set_retry_after_format(&self, format: RetryAfterFormat) {
        self.shared.faults.lock().retry_after_format = format;
    }

    /// The current fault state.
    pub fn faults(&self) -> FaultsView {
        let now = self.shared.now_us();
        self.shared.faults.lock().view(now)
    }

    /// Back to the state at start: counters, limit windows, jobs and faults (to the config's);
    /// issued tokens stay valid and the clock keeps its origin.
    pub fn reset(&self) {
        self.shared.reset();
    }

    pub fn stats(&self) -> StatsView {
        self.shared.stats()
    }

    /// The arrival log (empty unless `recordArrivals`).
    pub fn arrivals(&self) -> ArrivalsView {
        let snapshot = self.shared.recorder.lock().arrivals();
        snapshot.into()
    }

    /// Time since server start: the origin of every `*Us` timestamp in the statistics.
    pub fn uptime(&self) -> Duration {
        self.shared.start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_tells_null_from_absent() {
        let u: FaultsUpdate = serde_json::from_str(r#"{"stall": null}"#).unwrap();
        assert_eq!(u.stall, Some(None));
        assert_eq!(u.unavailable, None);
        let u: FaultsUpdate = serde_json::from_str(
            r#"{"unavailable": {"for": "2s"}, "force429": {"count": 2, "retryAfter": 3},
                "latency": {"type": "fixed", "value": "10ms"}, "retryAfterFormat": "http-date"}"#,
        )
        .unwrap();
        let un = u.unavailable.unwrap().unwrap();
        assert_eq!(
            (un.start, un.duration, un.retry_after),
            (Duration::ZERO, Duration::from_secs(2), 1)
        );
        assert_eq!(u.force429.unwrap().retry_after, 3);
        assert!(serde_json::from_str::<FaultsUpdate>(r#"{"force428": {}}"#).is_err());
    }

    #[test]
    fn retry_after_formats() {
        let mut f = Faults::from_config(&MockConfig::default());
        assert_eq!(f.retry_after(3).unwrap(), "3");
        f.retry_after_format = RetryAfterFormat::Missing;
        assert!(f.retry_after(3).is_none());
        f.retry_after_format = RetryAfterFormat::Malformed;
        let seen: Vec<_> = (0..3).map(|_| f.retry_after(3).unwrap()).collect();
        assert_eq!(seen, ["soon", "-5", "99999999999"]);
        f.retry_after_format = RetryAfterFormat::HttpDate;
        let v = f.retry_after(5).unwrap();
        let at = httpdate::parse_http_date(v.to_str().unwrap()).unwrap();
        let wait = at.duration_since(SystemTime::now()).unwrap();
        assert!(
            wait > Duration::from_secs(4) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
    }
}
