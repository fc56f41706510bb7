//! Exit codes scripts and CI depend on (k6's 99 for a failed threshold).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

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

/// The plan a command runs, loaded as `pacer run` loads it; on error the error is printed
/// (every problem with its field path) and its exit code returned.
pub fn load_plan(path: &Path) -> Result<Arc<pacer_plan::Plan>, Exit> {
    pacer_plan::load_file(path).map(Arc::new).map_err(|e| {
        eprintln!("{e}");
        for_plan_error(&e)
    })
}

/// The exit code of a test that ran to its end, alone or as a fleet: 0 when every threshold
/// passed, 99 when one failed or an `abortOnFail` threshold stopped the run early (its numbers
/// may all pass at the moment it stopped).
pub fn for_verdict(thresholds_passed: bool, abort_reason: Option<&str>) -> Exit {
    if thresholds_passed && abort_reason.is_none() {
        Exit::Passed
    } else {
        Exit::ThresholdFailed
    }
}

/// An error and its causes on one line, each cause once: `cannot listen on X: address in use`.
/// Library errors keep their source (`#[source]`) and some also name it in their message, so a
/// cause whose text is already there is not repeated.
pub fn error_text<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut text = String::new();
    for cause in chain {
        let s = cause.to_string();
        if text.contains(&s) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&s);
    }
    text
}

/// Print `error: ...` for an error of any kind, with its causes (see [`error_text`]).
pub fn print_error(e: &(dyn std::error::Error + 'static)) {
    eprintln!(
        "error: {}",
        error_text(std::iter::successors(Some(e), |e| e.source()))
    );
}

/// [`print_error`] for `anyhow::Error`.
pub fn print_anyhow(e: &anyhow::Error) {
    eprintln!("error: {}", error_text(e.chain()));
}

/// Write to stdout for [`crate::outln!`] and [`crate::out!`]: a closed pipe drops the output,
/// another failure is said on stderr once per write (stderr's own failure cannot be said).
pub fn stdout_write(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Like a thiserror `#[error("cannot listen on {addr}: {source}")]` with `#[source]`.
    #[derive(Debug)]
    struct Bind {
        source: std::io::Error,
    }

    impl std::fmt::Display for Bind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot listen on 127.0.0.1:1: {}", self.source)
        }
    }

    impl std::error::Error for Bind {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_plan_that_cannot_be_read_is_invalid() {
        let missing = std::env::temp_dir().join("pacer-no-such-plan.yaml");
        assert_eq!(load_plan(&missing).unwrap_err(), Exit::Invalid);
    }

    #[test]
    fn an_abort_fails_the_verdict_like_a_failed_threshold() {
        assert_eq!(for_verdict(true, None), Exit::Passed);
        assert_eq!(for_verdict(false, None), Exit::ThresholdFailed);
        assert_eq!(
            for_verdict(true, Some("http_req_failed rate<0.01 crossed")),
            Exit::ThresholdFailed
        );
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let e = Bind {
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use"),
        };
        let text = error_text(std::iter::successors(
            Some(&e as &(dyn std::error::Error + 'static)),
            |e| e.source(),
        ));
        assert_eq!(text, "cannot listen on 127.0.0.1:1: Address already in use");
        let any = anyhow::Error::new(e).context("pacer mock");
        assert_eq!(
            error_text(any.chain()),
            "pacer mock: cannot listen on 127.0.0.1:1: Address already in use"
        );
    }
}
