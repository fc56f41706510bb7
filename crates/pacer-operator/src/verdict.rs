//! The verdict of a test that has ended, decided without the API server: how the run ended
//! in, the LoadTest's phase, its `Complete` condition's reason and the message out. The phase
//! machine (`phases`) looks up what only the cluster knows first (why pods are
//! missing), then writes what this decides; so every way a test can end is a unit test here.

use std::time::Duration;

use kube::runtime::events::EventType;

use crate::crd::Phase;
use crate::reason::Reason;
use crate::runner::RunResult;

/// How a run ended, with what the verdict needs from outside the run already looked up.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// The workers ran the plan; `stopping` is why the operator asked them to stop early
    /// (suspend), if it did.
    Finished {
        result: &'a RunResult,
        stopping: Option<&'a str>,
    },
    /// Not every worker connected within `start_timeout`; `why` is what their pods say.
    WorkersMissing {
        expected: u32,
        connected: u32,
        start_timeout: Duration,
        why: &'a str,
    },
    /// Stopped before the common start.
    Stopped(&'a str),
    /// Taken over after a restart, and no worker came back within `waited` to resume it.
    NotResumed { workers: u32, waited: Duration },
    /// The run failed for another reason.
    Error(&'a str),
}

/// Where a test that has ended stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub phase: Phase,
    /// The reason of the `Complete` condition, and of the Event.
    pub reason: Reason,
    /// The status message, the condition's and the Event's.
    pub message: String,
}

impl Verdict {
    /// A test that passed is a Normal Event; any other end is a Warning.
    pub fn event_type(&self) -> EventType {
        if self.phase == Phase::Succeeded {
            EventType::Normal
        } else {
            EventType::Warning
        }
    }
}

/// Decide how a test ended.
pub fn verdict(outcome: &Outcome<'_>) -> Verdict {
    let (phase, reason, message) = match *outcome {
        Outcome::Finished { result, stopping } => finished(result, stopping),
        Outcome::WorkersMissing {
            expected,
            connected,
            start_timeout,
            why,
        } => (
            Phase::Failed,
            Reason::WorkersMissing,
            format!(
                "{connected} of {expected} workers connected within {}s; {why}",
                start_timeout.as_secs()
            ),
        ),
        Outcome::Stopped(reason) => (
            Phase::Aborted,
            Reason::Aborted,
            format!("stopped before the start: {reason}"),
        ),
        Outcome::NotResumed { workers, waited } => (
            Phase::Failed,
            Reason::ControllerRestarted,
            crate::messages::not_resumed(workers, waited),
        ),
        Outcome::Error(e) => (Phase::Failed, Reason::RunFailed, e.to_string()),
    };
    Verdict {
        phase,
        reason,
        message,
    }
}

/// A run the workers finished: a stop asked for wins, then a failure of the run as a whole,
/// then the thresholds.
fn finished(result: &RunResult, stopping: Option<&str>) -> (Phase, Reason, String) {
    if let Some(r) = stopping {
        return (Phase::Aborted, Reason::Aborted, format!("stopped: {r}"));
    }
    if let Some(f) = &result.failure {
        return (Phase::Failed, Reason::RunFailed, f.clone());
    }
    if result.passed {
        return (
            Phase::Succeeded,
            Reason::Succeeded,
            format!(
                "every threshold passed: {} requests in {:.0}s",
                result.stats.requests,
                result.stats.elapsed.as_secs_f64()
            ),
        );
    }
    // The same rule as the summary's verdict: a threshold without data, or a run without a
    // single request, fails and says so.
    let mut reasons =
        pacer_stats::Verdict::from_results(&result.stats.thresholds, result.stats.requests > 0)
            .reasons;
    let stopped = result.abort_reason.iter();
    reasons.extend(stopped.map(|a| format!("stopped early: {a}")));
    (
        Phase::Failed,
        Reason::ThresholdsFailed,
        format!("verdict failed: {}", reasons.join("; ")),
    )
}

#[cfg(test)]
mod tests {
    use pacer_stats::{ThresholdOutcome, ThresholdResult};

    use super::*;
    use crate::runner::LiveStats;

    fn result(passed: bool, requests: u64, thresholds: Vec<ThresholdResult>) -> RunResult {
        RunResult {
            passed,
            abort_reason: None,
            failure: None,
            stop_reason: None,
            stats: LiveStats {
                requests,
                elapsed: Duration::from_secs(30),
                thresholds,
                ..LiveStats::default()
            },
            text: String::new(),
            json: String::new(),
        }
    }

    fn threshold(outcome: ThresholdOutcome) -> ThresholdResult {
        ThresholdResult {
            key: "http_req_duration".into(),
            expr: "p(95)<200".into(),
            passed: outcome == ThresholdOutcome::Passed,
            outcome,
            observed: Some(350.0),
            abort_on_fail: false,
        }
    }

    fn finished(result: &RunResult, stopping: Option<&str>) -> Verdict {
        verdict(&Outcome::Finished { result, stopping })
    }

    #[test]
    fn a_run_that_passed_succeeds_with_its_numbers() {
        let r = result(true, 1200, vec![threshold(ThresholdOutcome::Passed)]);
        let v = finished(&r, None);
        assert_eq!(v.phase, Phase::Succeeded);
        assert_eq!(v.reason, Reason::Succeeded);
        assert_eq!(v.message, "every threshold passed: 1200 requests in 30s");
        assert_eq!(v.event_type(), EventType::Normal);
    }

    #[test]
    fn a_failed_threshold_and_an_early_stop_are_each_named() {
        let mut r = result(false, 10, vec![threshold(ThresholdOutcome::Failed)]);
        r.abort_reason = Some("errors above 5%".into());
        let v = finished(&r, None);
        assert_eq!(
            (v.phase, v.reason),
            (Phase::Failed, Reason::ThresholdsFailed)
        );
        assert_eq!(
            v.message,
            "verdict failed: threshold http_req_duration p(95)<200 failed; stopped early: errors above 5%"
        );
        assert_eq!(v.event_type(), EventType::Warning);
    }

    #[test]
    fn a_run_without_requests_fails_and_says_so() {
        let v = finished(&result(false, 0, Vec::new()), None);
        assert_eq!(v.reason, Reason::ThresholdsFailed);
        assert!(v.message.contains("no requests were made"), "{}", v.message);
    }

    #[test]
    fn a_stop_asked_for_wins_over_a_failure_which_wins_over_thresholds() {
        let mut r = result(false, 10, vec![threshold(ThresholdOutcome::Failed)]);
        r.failure = Some("worker 2 lost".into());
        let stopped = finished(&r, Some("suspended (spec.suspend: true)"));
        assert_eq!(
            (stopped.phase, stopped.reason, stopped.message.as_str()),
            (
                Phase::Aborted,
                Reason::Aborted,
                "stopped: suspended (spec.suspend: true)"
            )
        );
        let failed = finished(&r, None);
        assert_eq!(
            (failed.phase, failed.reason, failed.message.as_str()),
            (Phase::Failed, Reason::RunFailed, "worker 2 lost")
        );
    }

    #[test]
    fn runs_that_never_ran_fail_or_abort_with_the_cause() {
        let missing = verdict(&Outcome::WorkersMissing {
            expected: 3,
            connected: 1,
            start_timeout: Duration::from_secs(120),
            why: "worker 2: ImagePullBackOff",
        });
        assert_eq!(
            (missing.phase, missing.reason, missing.message.as_str()),
            (
                Phase::Failed,
                Reason::WorkersMissing,
                "1 of 3 workers connected within 120s; worker 2: ImagePullBackOff"
            )
        );
        let stopped = verdict(&Outcome::Stopped("the LoadTest was deleted"));
        assert_eq!(
            (stopped.phase, stopped.reason, stopped.message.as_str()),
            (
                Phase::Aborted,
                Reason::Aborted,
                "stopped before the start: the LoadTest was deleted"
            )
        );
        let error = verdict(&Outcome::Error("the coordinator failed"));
        assert_eq!(
            (error.phase, error.reason, error.message.as_str()),
            (Phase::Failed, Reason::RunFailed, "the coordinator failed")
        );
    }
}
