//! What a test this process drives shows and writes, `pacer run` (alone or with `--workers
//! N`) and `pacer controller` alike: the display flags, written once and flattened into both
//! so a flag means the same thing, with the same name and help, whichever command runs the
//! test; and the outputs besides the summary (metrics, series, HTML report), started and
//! finished the same way by both.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use pacer_plan::Plan;
use pacer_report::{MetricsServer, WorkerRow};
use pacer_stats::{Layout, Snapshot, Summary};

use crate::report::{LimitsProbe, ReportOutputs, ReportSink, SeriesFrom, SnapshotSource};

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

    /// `--summary-json FILE`: write the summary's JSON (rendered only when asked for).
    pub fn write_summary_json(&self, render: impl FnOnce() -> String) -> anyhow::Result<()> {
        if let Some(path) = &self.summary_json {
            std::fs::write(path, render())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

/// What a running test writes besides its summary: the `/metrics` server (`--metrics`) and the
/// per-second series and HTML report (`--out`, `--report`), over whatever `source` reads (this
/// process's recorder, or a controller's merge of its workers).
pub struct Outputs<'a> {
    args: &'a ReportOutputs,
    metrics: Option<MetricsServer>,
    sink: Option<ReportSink>,
}

impl<'a> Outputs<'a> {
    /// Start serving metrics and sampling the series, each only when asked for.
    pub async fn start(
        args: &'a ReportOutputs,
        plan: &Plan,
        layout: &Layout,
        source: SnapshotSource,
        limits: LimitsProbe,
        series: SeriesFrom,
    ) -> anyhow::Result<Self> {
        let metrics =
            crate::metrics::start(args.metrics, plan, source.clone(), limits.clone()).await?;
        let sink = ReportSink::start(args, plan, layout, source, limits, series);
        Ok(Self {
            args,
            metrics,
            sink,
        })
    }

    /// Write the series files and the HTML report (with `workers`' rows, built only when a
    /// report is written; `fleet_series`: the coordinator's, for [`SeriesFrom::Fleet`]), then
    /// stop serving metrics.
    pub async fn finish(
        self,
        plan: &Plan,
        snapshot: &Snapshot,
        summary: &Summary,
        workers: impl FnOnce() -> Vec<WorkerRow>,
        abort_reason: Option<&str>,
        fleet_series: Option<&pacer_report::FleetSeriesOutput>,
    ) -> anyhow::Result<()> {
        if let Some(sink) = self.sink {
            sink.finish(
                self.args,
                plan,
                snapshot,
                summary,
                &workers(),
                abort_reason,
                fleet_series,
            )
            .await?;
        }
        if let Some(metrics) = self.metrics {
            metrics.shutdown(crate::metrics::SHUTDOWN_GRACE).await;
        }
        Ok(())
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
    fn the_summary_json_is_rendered_only_when_asked_for() {
        let mut args = OutputArgs::default();
        args.write_summary_json(|| panic!("rendered without --summary-json"))
            .unwrap();
        let path = std::env::temp_dir().join(format!("pacer-summary-{}.json", std::process::id()));
        args.summary_json = Some(path.clone());
        args.write_summary_json(|| "{}".into()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}");
        let _ = std::fs::remove_file(&path);
        args.summary_json = Some(path.join("no-such-dir").join("s.json"));
        let e = args.write_summary_json(|| "{}".into()).unwrap_err();
        assert!(e.to_string().starts_with("cannot write "), "{e}");
        assert!(e.source().is_some(), "the I/O error is kept as the cause");
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
