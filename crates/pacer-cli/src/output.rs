//! The display and output flags of a test this process drives, `pacer run` (alone or with
//! `--workers N`) and `pacer controller` alike: written once and flattened into both, so a flag
//! means the same thing, with the same name and help, whichever command runs the test.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// How often the live progress updates on a terminal: a status line redrawn in place costs
/// nothing to read, so it follows the run closely.
pub const INTERACTIVE_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What a running test shows on stderr and where its summary goes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Print no live progress (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Seconds between progress lines when stderr is not a terminal.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub progress_every: u64,
    /// Do not color the summary.
    #[arg(long)]
    pub no_color: bool,
}

impl OutputArgs {
    /// The period of the live progress: [`INTERACTIVE_PROGRESS_EVERY`] on a terminal, else
    /// `--progress-every` (lines that pile up in a log).
    pub fn progress_period(&self, interactive: bool) -> Duration {
        if interactive {
            INTERACTIVE_PROGRESS_EVERY
        } else {
            Duration::from_secs(self.progress_every)
        }
    }

    /// Whether the text summary is coloured: not with `--no-color`, and only on a terminal
    /// (a redirected stdout gets no escape codes).
    pub fn summary_color(&self) -> bool {
        self.color_on(std::io::stdout().is_terminal())
    }

    fn color_on(&self, terminal: bool) -> bool {
        !self.no_color && terminal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_follows_a_terminal_and_spaces_out_in_a_log() {
        let args = OutputArgs {
            progress_every: 7,
            ..OutputArgs::default()
        };
        assert_eq!(args.progress_period(true), INTERACTIVE_PROGRESS_EVERY);
        assert_eq!(args.progress_period(false), Duration::from_secs(7));
    }

    #[test]
    fn color_only_on_a_terminal_and_never_with_no_color() {
        let mut args = OutputArgs::default();
        assert!(args.color_on(true));
        assert!(!args.color_on(false));
        args.no_color = true;
        assert!(!args.color_on(true));
    }
}
