//! Exit codes scripts and CI depend on (k6's 99 for a failed threshold).

use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every threshold passed.
    Passed = 0,
    /// Anything else went wrong; the reason was printed.
    Failure = 1,
    /// The plan or the arguments are invalid.
    Invalid = 2,
    /// A threshold failed.
    ThresholdFailed = 99,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

pub fn for_plan_error(e: &pacer_plan::PlanError) -> Exit {
    match e {
        pacer_plan::PlanError::Io { .. } => Exit::Invalid,
        pacer_plan::PlanError::Syntax { .. } | pacer_plan::PlanError::Invalid { .. } => {
            Exit::Invalid
        }
    }
}
