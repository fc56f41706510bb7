//! Why a LoadTest is where it is: the `reason` of its conditions and of its Events, one enum
//! written by the operator and read by the CLI (`pacer watch` exits 99 on
//! [`Reason::ThresholdsFailed`]), so the two cannot drift apart on a spelling. The serde names
//! are the strings on the wire (CamelCase, as Kubernetes reasons are); changing one is an API
//! change for whoever matches on `kubectl get loadtest -o jsonpath=…`.

use serde::{Deserialize, Serialize};

use crate::crd::LoadTestStatus;
use crate::status::COND_COMPLETE;

/// A condition's or an Event's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// `Valid=True`: the spec was checked and accepted.
    Valid,
    /// The spec is not valid: nothing was started.
    InvalidSpec,
    /// The operator failed on this LoadTest (a caught panic).
    InternalError,
    /// The LoadTest cannot be read at all (lenient.rs).
    Unreadable,
    /// Created with `spec.suspend: true`.
    Suspended,
    /// Worker pods are being created and are connecting.
    Starting,
    /// Every worker started together (`WorkersReady=True`).
    Started,
    /// The Event of the Starting -> Running transition.
    Running,
    /// Not every worker connected within `startTimeout`.
    WorkersMissing,
    /// Every threshold passed.
    Succeeded,
    /// A threshold failed, or an `abortOnFail` threshold stopped the fleet.
    ThresholdsFailed,
    /// The run failed as a whole (a lost worker under `onWorkerLoss: fail`, a coordinator
    /// error).
    RunFailed,
    /// Stopped by `spec.suspend: true`.
    Aborted,
    /// The LoadTest was deleted while it ran.
    Deleted,
    /// The operator restarted while the test ran and could not resume it (the message says
    /// why: nothing to verify its workers against, the plan changed, no worker came back).
    ControllerRestarted,
    /// The Event of a test taken over by a restarted operator (or a new leader): its workers
    /// are verified against the token's hash on the status and resume.
    Resumed,
    /// `spec.budgetRef` names no RateBudget of the LoadTest's namespace (or one being
    /// deleted): nothing was started.
    BudgetNotFound,
    /// A RateBudget's spec is not valid (its `Valid=False`; a LoadTest on it ends with it).
    InvalidBudget,
    /// A RateBudget's Redis was read (`Observed=True`).
    Observed,
    /// A RateBudget's Redis is not read: a Redis whose URL is in a Secret the operator may not
    /// read, or one that did not answer (`Observed=False`, the message says which).
    NotObserved,
}

impl Reason {
    /// Every reason (for tests that check the wire names).
    pub const ALL: [Reason; 20] = [
        Self::Valid,
        Self::InvalidSpec,
        Self::InternalError,
        Self::Unreadable,
        Self::Suspended,
        Self::Starting,
        Self::Started,
        Self::Running,
        Self::WorkersMissing,
        Self::Succeeded,
        Self::ThresholdsFailed,
        Self::RunFailed,
        Self::Aborted,
        Self::Deleted,
        Self::ControllerRestarted,
        Self::Resumed,
        Self::BudgetNotFound,
        Self::InvalidBudget,
        Self::Observed,
        Self::NotObserved,
    ];

    /// The string on the wire (the same as its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "Valid",
            Self::InvalidSpec => "InvalidSpec",
            Self::InternalError => "InternalError",
            Self::Unreadable => "Unreadable",
            Self::Suspended => "Suspended",
            Self::Starting => "Starting",
            Self::Started => "Started",
            Self::Running => "Running",
            Self::WorkersMissing => "WorkersMissing",
            Self::Succeeded => "Succeeded",
            Self::ThresholdsFailed => "ThresholdsFailed",
            Self::RunFailed => "RunFailed",
            Self::Aborted => "Aborted",
            Self::Deleted => "Deleted",
            Self::ControllerRestarted => "ControllerRestarted",
            Self::Resumed => "Resumed",
            Self::BudgetNotFound => "BudgetNotFound",
            Self::InvalidBudget => "InvalidBudget",
            Self::Observed => "Observed",
            Self::NotObserved => "NotObserved",
        }
    }

    /// The reason a condition or an Event carries, if it is one of the operator's.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LoadTestStatus {
    /// Why the test ended: the reason of its `Complete` condition (`None` while it runs, or
    /// for a reason this operator does not write).
    pub fn complete_reason(&self) -> Option<Reason> {
        self.conditions
            .iter()
            .find(|c| c.type_ == COND_COMPLETE)
            .and_then(|c| Reason::parse(&c.reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_name_is_the_serde_name_and_parses_back() {
        for r in Reason::ALL {
            assert_eq!(
                serde_json::to_value(r).expect("json"),
                serde_json::Value::String(r.as_str().into())
            );
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(Reason::parse("thresholdsFailed"), None);
    }

    /// docs/kubernetes.md lists every reason a test can end with, for scripts to match.
    #[test]
    fn the_docs_list_every_way_a_test_ends() {
        let docs = include_str!("../../../docs/kubernetes.md");
        let not_an_end = [
            Reason::Valid,
            Reason::Suspended,
            Reason::Starting,
            Reason::Started,
            Reason::Running,
            Reason::Resumed,
        ];
        for r in Reason::ALL.into_iter().filter(|r| !not_an_end.contains(r)) {
            assert!(
                docs.contains(&format!("| `{r}` |")),
                "docs/kubernetes.md does not list the reason {r}"
            );
        }
    }

    #[test]
    fn the_complete_condition_gives_the_reason() {
        let status: LoadTestStatus = serde_json::from_value(serde_json::json!({
            "phase": "Failed",
            "conditions": [
                {"type": "Valid", "status": "True", "reason": "Valid", "message": "",
                    "lastTransitionTime": "2020-01-01T00:00:00Z"},
                {"type": "Complete", "status": "True", "reason": "ThresholdsFailed", "message": "",
                    "lastTransitionTime": "2020-01-01T00:00:00Z"}
            ]
        }))
        .expect("status");
        assert_eq!(status.complete_reason(), Some(Reason::ThresholdsFailed));
        assert_eq!(LoadTestStatus::default().complete_reason(), None);
    }
}
