//! What a fleet's processes note in Redis for the budget's status (read by [`super::status`],
//! shown by the operator's `RateBudget`): the slots each limit was granted (`<tag>:granted`,
//! whose growth is the rate used) and the last 429 (`<tag>:last429`). Neither is on the path
//! of a request: each is written at most once per [`NOTE_EVERY`] per process, on a task of its
//! own, and a failed write is only logged (the status then lags, the test does not).
//!
//! Only a budget's processes note anything: a test's own fleet has no status to show them in,
//! and its keys are all deleted by its last process (`lua/leave.lua`), which these would
//! outlive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Fleet, scripts};

/// At most one write of each note per process this often: a status read every few seconds
/// needs no more, and a fleet of hundreds of processes adds at most that many writes a second.
pub const NOTE_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// Slots granted per limit and not yet added to `<tag>:granted`.
    pending: BTreeMap<String, u64>,
    last_flush: Option<Instant>,
    last_429: Option<Instant>,
}

/// One process's notes, not yet written.
#[derive(Default)]
pub(crate) struct Notes {
    st: Mutex<State>,
}

fn due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= NOTE_EVERY)
}

impl Notes {
    /// `n` slots were granted for a request matching `limits`: added to `<tag>:granted` now
    /// when the last write is [`NOTE_EVERY`] old, else with the next.
    pub(crate) fn granted<'a>(
        &self,
        fleet: &Arc<Fleet>,
        keep_ms: u64,
        limits: impl Iterator<Item = &'a str>,
        n: u64,
    ) {
        if n == 0 || fleet.keys().budget().is_none() {
            return;
        }
        let now = Instant::now();
        let batch = {
            let mut st = self.st.lock();
            for l in limits {
                let c = st.pending.entry(l.to_string()).or_default();
                *c = c.saturating_add(n);
            }
            if !due(st.last_flush, now) {
                return;
            }
            st.last_flush = Some(now);
            std::mem::take(&mut st.pending)
        };
        let fleet = fleet.clone();
        tokio::spawn(async move {
            let mut inv = scripts::GRANTED.prepare_invoke();
            inv.key(fleet.keys().granted()).arg(keep_ms);
            for (name, n) in &batch {
                inv.arg(name).arg(*n);
            }
            if let Err(e) = fleet.script("noting the slots granted", inv).await {
                tracing::debug!(error = %e, "the budget's granted count was not written");
            }
        });
    }

    /// A 429 on a request matching `limits` (with the limit the server stated in it, if any):
    /// recorded as the fleet's last when this process's last record is [`NOTE_EVERY`] old (a
    /// burst of 429s is one record a second).
    pub(crate) fn throttled(
        &self,
        fleet: &Arc<Fleet>,
        keep_ms: u64,
        limits: Vec<String>,
        retry_after: Option<Duration>,
        server_limit: Option<u64>,
    ) {
        if fleet.keys().budget().is_none() {
            return;
        }
        let now = Instant::now();
        {
            let mut st = self.st.lock();
            if !due(st.last_429, now) {
                return;
            }
            st.last_429 = Some(now);
        }
        let fleet = fleet.clone();
        let retry_ms = retry_after.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        tokio::spawn(async move {
            let mut inv = scripts::LAST_429.prepare_invoke();
            inv.key(fleet.keys().last429())
                .arg(limits.join(","))
                .arg(retry_ms)
                .arg(fleet.worker_id())
                .arg(keep_ms)
                .arg(server_limit.map(|l| l.to_string()).unwrap_or_default());
            if let Err(e) = fleet.script("noting a 429", inv).await {
                tracing::debug!(error = %e, "the budget's last 429 was not written");
            }
        });
    }
}
