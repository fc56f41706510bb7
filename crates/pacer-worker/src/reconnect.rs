//! After a lost session: whether to try again or give up ([`after_loss`], pure), how long to
//! wait first ([`backoff`]), and the wait itself ([`pause`]), during which the shard keeps
//! running. A running shard never gives up on its controller (though its load stops after
//! `lost_after` without one: the watchdog in `report`, after which it is finished and only has
//! its results to deliver); a worker that has not started, or has finished, does after its
//! deadline.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::report::Running;
use crate::{WorkerConfig, WorkerError};

/// The first reconnect delay: a controller that restarts (or a stream replaced under load)
/// is often back within a few hundred milliseconds.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);

/// The longest delay between tries: a controller that comes back is found within 2 s.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// 100 ms doubling to 2 s, with up to 25% jitter (so a fleet does not reconnect in step).
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = backoff_base(attempt);
    let jitter = rand::random_range(0..=base.as_millis() as u64 / 4);
    base + Duration::from_millis(jitter)
}

/// The delay before jitter: doubling from [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`].
fn backoff_base(attempt: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(1 << attempt.min(5))
        .min(BACKOFF_MAX)
}

/// Where the worker stands when a session is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// No shard yet: the controller was never reached or never started us.
    NotStarted,
    /// The shard runs: it goes on without the controller.
    Running,
    /// The shard has ended: only its final results are left to deliver.
    Finished,
}

impl Standing {
    pub(crate) fn of(running: Option<&Running>) -> Self {
        match running {
            None => Standing::NotStarted,
            Some(r) if r.done().is_some() => Standing::Finished,
            Some(_) => Standing::Running,
        }
    }
}

/// What to do after a lost session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterLoss {
    /// Wait a backoff and reconnect.
    Retry,
    /// Give up: the controller was not reached within `connect_for`.
    Unreachable,
    /// Give up: the final results could not be delivered within `reconnect_for`.
    Undelivered,
}

/// Whether a worker that has been trying for `waited` goes on. A running shard always does
/// (it keeps running, and the controller may come back for its results).
pub(crate) fn after_loss(standing: Standing, waited: Duration, cfg: &WorkerConfig) -> AfterLoss {
    match standing {
        Standing::NotStarted if waited >= cfg.connect_for => AfterLoss::Unreachable,
        Standing::Finished if waited >= cfg.reconnect_for => AfterLoss::Undelivered,
        _ => AfterLoss::Retry,
    }
}

/// Wait `delay` before the next try. Being asked to quit meanwhile aborts a running shard
/// (and tries again at once: its results are still delivered) or, before the start, ends the
/// worker.
pub(crate) async fn pause(
    delay: Duration,
    running: Option<&Running>,
    cancel: &CancellationToken,
) -> Result<(), WorkerError> {
    match running {
        Some(r) => {
            let abort = &r.control.abort;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled(), if !abort.is_cancelled() => abort.cancel(),
            }
            Ok(())
        }
        None => tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = cancel.cancelled() => Err(WorkerError::NotStarted),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap_with_at_most_a_quarter_of_jitter() {
        let ms = |a| backoff_base(a).as_millis();
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6, 40, u32::MAX].map(ms),
            [100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000]
        );
        for attempt in 0..8 {
            let base = backoff_base(attempt);
            for _ in 0..50 {
                let d = backoff(attempt);
                assert!(d >= base && d <= base + base / 4, "{attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn where_a_worker_stands() {
        assert_eq!(Standing::of(None), Standing::NotStarted);
        let (r, ended) = crate::report::idle_running(0, "t", vec![1]);
        assert_eq!(Standing::of(Some(&r)), Standing::Running);
        ended
            .send(Some(crate::report::EngineEnd::default()))
            .unwrap();
        assert_eq!(Standing::of(Some(&r)), Standing::Finished);
    }

    #[test]
    fn a_running_shard_never_gives_up() {
        let cfg = WorkerConfig::new("c:1", "t");
        for waited in [
            Duration::ZERO,
            cfg.reconnect_for,
            Duration::from_secs(86_400),
        ] {
            assert_eq!(
                after_loss(Standing::Running, waited, &cfg),
                AfterLoss::Retry
            );
        }
    }

    #[test]
    fn a_worker_not_started_gives_up_after_connect_for() {
        let mut cfg = WorkerConfig::new("c:1", "t");
        cfg.connect_for = Duration::from_secs(5);
        let at = |s| after_loss(Standing::NotStarted, Duration::from_secs(s), &cfg);
        assert_eq!(at(4), AfterLoss::Retry);
        assert_eq!(at(5), AfterLoss::Unreachable);
        assert_eq!(at(60), AfterLoss::Unreachable);
    }

    #[test]
    fn a_finished_worker_gives_up_delivering_after_reconnect_for() {
        let mut cfg = WorkerConfig::new("c:1", "t");
        cfg.connect_for = Duration::from_secs(1);
        cfg.reconnect_for = Duration::from_secs(30);
        let at = |s| after_loss(Standing::Finished, Duration::from_secs(s), &cfg);
        // connect_for is for a worker not started yet.
        assert_eq!(at(5), AfterLoss::Retry);
        assert_eq!(at(30), AfterLoss::Undelivered);
    }
}
