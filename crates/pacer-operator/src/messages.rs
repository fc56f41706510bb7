//! What the operator says to a person: the `message` of the status and its conditions, the
//! notes of Events, the reasons given to a run when it is stopped. Kept in one room so the
//! wording can be read, and changed, together; the phase machine ([`crate::phases`]) decides
//! when each is said, [`crate::verdict`] says how a run ended.

use std::time::Duration;

/// A spec that failed validation: every problem, each with its field path.
pub(crate) fn invalid_spec(problems: &str) -> String {
    format!("invalid spec: {problems}")
}
pub(crate) const NOTHING_STARTED: &str = "the spec is not valid: nothing was started";

pub(crate) const SUSPENDED_STATUS: &str = "suspended: set spec.suspend to false to start";
pub(crate) const SUSPENDED_CONDITION: &str = "spec.suspend is true";
pub(crate) const SUSPENDED_EVENT: &str = "created suspended: waiting for spec.suspend: false";
/// Why a running test is stopped when it is suspended.
pub(crate) const SUSPEND_STOP: &str = "suspended (spec.suspend: true)";

pub(crate) fn waiting_for_workers(workers: u32, start_timeout: Duration) -> String {
    format!(
        "waiting for {workers} workers to connect (up to {}s)",
        start_timeout.as_secs()
    )
}

pub(crate) fn workers_connected(connected: u32, workers: u32) -> String {
    format!("{connected}/{workers} workers connected")
}

pub(crate) fn workers_created(
    test_id: &str,
    job: &str,
    workers: u32,
    start_timeout: Duration,
) -> String {
    format!(
        "test {test_id}: created Job {job} with {workers} worker pods; waiting for them to connect (up to {}s)",
        start_timeout.as_secs()
    )
}

/// Why a run is aborted when its Job or Secret could not be created.
pub(crate) const WORKERS_NOT_CREATED: &str = "the worker pods could not be created";

/// A test the restarted operator cannot resume, and why (`why` names what is missing).
pub(crate) fn cannot_resume(why: &str) -> String {
    format!(
        "the controller restarted while the test ran and cannot resume it: {why}; its workers were deleted: run the test again"
    )
}

/// No worker came back to a resumed test.
pub(crate) fn not_resumed(workers: u32, waited: Duration) -> String {
    cannot_resume(&format!(
        "none of its {workers} workers reconnected within {}s",
        waited.as_secs()
    ))
}

/// The Event of a test taken over after a restart.
pub(crate) fn resumed_event(test_id: &str, workers: u32, running: bool, wait: Duration) -> String {
    format!(
        "the controller restarted: resuming test {test_id}, {}: its {workers} workers are verified against status.sessionTokenSha256 as they reconnect (up to {}s)",
        if running {
            "which was running"
        } else {
            "which was starting"
        },
        wait.as_secs()
    )
}

/// The status message of a running test.
pub(crate) fn running(stopping: Option<&str>) -> String {
    match stopping {
        Some(r) => format!("stopping: {r}"),
        None => "running".into(),
    }
}

pub(crate) fn started_together(workers: u32) -> String {
    format!("{workers} workers started together")
}

pub(crate) fn running_event(workers: u32, max_duration: Duration) -> String {
    format!(
        "all {workers} workers started together; the plan runs for up to {}s",
        max_duration.as_secs()
    )
}

pub(crate) const DELETED_WHILE_RUNNING: &str = "the LoadTest was deleted while it ran";
pub(crate) const DELETED_EVENT: &str =
    "the LoadTest was deleted: its workers were stopped and deleted";
/// Why a run is aborted when its LoadTest is deleted.
pub(crate) const DELETED_ABORT: &str = "the LoadTest was deleted";

/// Why a run is aborted when the operator fails on its LoadTest.
pub(crate) const INTERNAL_ERROR_ABORT: &str = "the operator failed on this LoadTest";

pub(crate) fn internal_error(what: &str) -> String {
    format!("the operator failed on this LoadTest (a bug, please report it): {what}")
}
