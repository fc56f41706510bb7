//! `pacer run --report FILE` and `--out json=FILE|csv=FILE`: a sampler task takes a snapshot
//! every second and feeds the per-second series (a fleet's comes from its coordinator, built
//! from the workers' reports); at the end the series is written out and the HTML report
//! rendered by [`write_files`], which `pacer report NAME` calls too (pacer-report does the
//! work; this is the wiring).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use pacer_limiter::LimitReport;
use pacer_plan::Plan;
use pacer_report::{
    FleetSeriesOutput, LimiterSample, PlannedRate, ReportInput, Series, SeriesBuilder, WorkerRow,
};
use pacer_stats::{Layout, Recorder, Snapshot, Summary};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The report files and metrics a running test writes (`--report`, `--out`, `--metrics`), for
/// `pacer run` and `pacer controller` (not `pacer report`, which prints a stored LoadTest's:
/// [`crate::k8s::ReportCommand`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ReportOutputs {
    /// Write a self-contained HTML report (verdict, charts over time, tables, the plan) to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the per-second time series: `json=FILE` (JSON Lines) or `csv=FILE`; or the
    /// evidence ledger (429s, 5xx, timeouts, transport errors): `ledger=FILE` (JSON Lines).
    /// Repeatable.
    #[arg(long = "out", value_name = "FORMAT=FILE", value_parser = parse_out)]
    pub out: Vec<SeriesOut>,
    /// Serve Prometheus metrics at http://ADDR/metrics during the run (e.g. 127.0.0.1:9464;
    /// port 0 picks one, printed on stderr). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeriesFormat {
    JsonLines,
    Csv,
    /// Not a series: the evidence ledger, one JSON line per attempt kept.
    Ledger,
}

/// One `--out FORMAT=FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesOut {
    pub format: SeriesFormat,
    pub path: PathBuf,
}

pub(crate) fn parse_out(text: &str) -> Result<SeriesOut, String> {
    let (format, path) = text.split_once('=').ok_or_else(|| {
        format!("expected FORMAT=FILE (json=series.jsonl, csv=series.csv), got {text:?}")
    })?;
    let format = match format {
        "json" | "jsonl" => SeriesFormat::JsonLines,
        "csv" => SeriesFormat::Csv,
        "ledger" => SeriesFormat::Ledger,
        other => {
            return Err(format!(
                "unknown output format {other:?}: use json, csv or ledger"
            ));
        }
    };
    if path.is_empty() {
        return Err("the file name is missing after '='".into());
    }
    Ok(SeriesOut {
        format,
        path: PathBuf::from(path),
    })
}

/// Reads the limiter's state (for pauses and pacing rates).
pub type LimitsProbe = Arc<dyn Fn() -> Vec<LimiterSample> + Send + Sync>;

/// The run's cumulative numbers right now: this process's recorder, or a controller's merge of
/// its workers' latest snapshots.
pub type SnapshotSource = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// A source reading a recorder.
pub fn recorder_source(recorder: Arc<Recorder>) -> SnapshotSource {
    Arc::new(move || recorder.snapshot())
}

/// No limiter in this process (a controller): no samples.
pub fn no_limits() -> LimitsProbe {
    Arc::new(Vec::new)
}

/// A probe from anything that reports its limits, e.g. `move || limiter.report()`.
pub fn probe(report: impl Fn() -> Vec<LimitReport> + Send + Sync + 'static) -> LimitsProbe {
    Arc::new(move || {
        report()
            .into_iter()
            .map(|r| LimiterSample {
                name: r.name,
                pauses: r.pauses,
                paused_secs: r.paused.as_secs_f64(),
                pacing_rate: r.current_rate,
            })
            .collect()
    })
}

pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where a running test's per-second series comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeriesFrom {
    /// Sampled every second from the run's snapshot source (this process's recorder).
    Sampler,
    /// Built by the coordinator from its workers' reports, each in the second it closes
    /// (`pacer_report::fleet`), and handed over at the end.
    Fleet,
}

/// Samples the recorder every second while the run goes (or waits for the fleet's series);
/// [`ReportSink::finish`] writes the series files and the HTML report.
pub struct ReportSink {
    /// The sampler; `None` when the series comes from the fleet.
    task: Option<JoinHandle<SeriesBuilder>>,
    stop: CancellationToken,
    started: Instant,
    started_unix_ms: u64,
    limits: LimitsProbe,
}

impl ReportSink {
    /// `None` when neither `--report` nor `--out` was given.
    pub fn start(
        args: &ReportOutputs,
        plan: &Plan,
        layout: &Layout,
        source: SnapshotSource,
        limits: LimitsProbe,
        from: SeriesFrom,
    ) -> Option<Self> {
        if args.report.is_none() && args.out.is_empty() {
            return None;
        }
        let started = Instant::now();
        let started_unix_ms = unix_ms(SystemTime::now());
        let stop = CancellationToken::new();
        let mut builder = SeriesBuilder::new(layout, PlannedRate::from_plan(plan));
        let task = (from == SeriesFrom::Sampler).then(|| {
            tokio::spawn({
                let stop = stop.clone();
                let limits = limits.clone();
                async move {
                    let first = tokio::time::Instant::from_std(started) + Duration::from_secs(1);
                    let mut tick = tokio::time::interval_at(first, Duration::from_secs(1));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = stop.cancelled() => break,
                        }
                        let snapshot = source();
                        let samples = limits();
                        builder.push(
                            started.elapsed(),
                            unix_ms(SystemTime::now()),
                            &snapshot,
                            Some(&samples),
                        );
                    }
                    builder
                }
            })
        });
        Some(Self {
            task,
            stop,
            started,
            started_unix_ms,
            limits,
        })
    }

    /// Close the series with the run's final snapshot (or take the fleet's), then write every
    /// requested file.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        self,
        args: &ReportOutputs,
        plan: &Plan,
        snapshot: &Snapshot,
        summary: &Summary,
        workers: &[WorkerRow],
        abort_reason: Option<&str>,
        fleet_series: Option<&FleetSeriesOutput>,
    ) -> anyhow::Result<()> {
        self.stop.cancel();
        let (series, started_unix_ms) = match (self.task, fleet_series) {
            (Some(task), _) => {
                let builder = task.await.context("the report sampler failed")?;
                let samples = (self.limits)();
                let series = builder.finish(
                    self.started.elapsed(),
                    unix_ms(SystemTime::now()),
                    snapshot,
                    Some(&samples),
                );
                (series, Some(self.started_unix_ms))
            }
            (None, Some(fleet)) => (fleet.fleet.clone(), fleet.started_unix_ms),
            (None, None) => (Series::default(), Some(self.started_unix_ms)),
        };
        write_files(
            args.report.as_deref(),
            &args.out,
            &ReportData {
                plan_source: Some(&plan.source),
                snapshot,
                summary,
                series: &series,
                workers,
                started_unix_ms,
                abort_reason,
            },
        )
    }
}

/// Everything the report files of one run are made of, however the run was had: this
/// process's, a fleet's, or a LoadTest's stored report (`pacer report NAME`).
#[derive(Clone, Copy, Debug)]
pub struct ReportData<'a> {
    /// The plan as written (`Plan::source`), listed in the HTML report.
    pub plan_source: Option<&'a serde_json::Value>,
    /// The run's final cumulative snapshot (the ledger's source).
    pub snapshot: &'a Snapshot,
    pub summary: &'a Summary,
    pub series: &'a Series,
    pub workers: &'a [WorkerRow],
    pub started_unix_ms: Option<u64>,
    pub abort_reason: Option<&'a str>,
}

/// Write the HTML report to `html` and each `--out` file: the one place a run's report files
/// are made, for `pacer run`, `pacer controller` and `pacer report NAME`.
pub fn write_files(
    html: Option<&Path>,
    outs: &[SeriesOut],
    data: &ReportData,
) -> anyhow::Result<()> {
    for out in outs {
        let text = match out.format {
            SeriesFormat::JsonLines => data.series.to_jsonl(),
            SeriesFormat::Csv => data.series.to_csv(),
            SeriesFormat::Ledger => ledger_jsonl(&data.snapshot.ledger),
        };
        std::fs::write(&out.path, text)
            .with_context(|| format!("cannot write {}", out.path.display()))?;
    }
    if let Some(path) = html {
        let page = pacer_report::render_html(&ReportInput {
            summary: data.summary,
            series: data.series,
            plan_source: data.plan_source,
            workers: data.workers,
            started_unix_ms: data.started_unix_ms,
            abort_reason: data.abort_reason,
            ledger: Some(&data.snapshot.ledger),
        });
        std::fs::write(path, page).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The ledger's kept entries as JSON Lines, in time order; a warning on stderr when the
/// ledger's bound left some out (the HTML report's counts include them).
fn ledger_jsonl(ledger: &pacer_stats::Ledger) -> String {
    let mut out = String::new();
    for e in &ledger.entries {
        if let Ok(line) = serde_json::to_string(e) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    if ledger.dropped() > 0 {
        tracing::warn!(
            kept = ledger.entries.len(),
            dropped = ledger.dropped(),
            "the evidence ledger keeps the first {} attempts; later ones are only counted",
            pacer_stats::ledger::LEDGER_CAPACITY
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_out_flags() {
        assert_eq!(
            parse_out("json=a.jsonl").unwrap(),
            SeriesOut {
                format: SeriesFormat::JsonLines,
                path: "a.jsonl".into()
            }
        );
        assert_eq!(
            parse_out("csv=dir/b=c.csv").unwrap().path,
            PathBuf::from("dir/b=c.csv")
        );
        assert_eq!(
            parse_out("ledger=l.jsonl").unwrap().format,
            SeriesFormat::Ledger
        );
        assert!(parse_out("xml=a").is_err());
        assert!(parse_out("csv=").is_err());
        assert!(parse_out("a.csv").is_err());
    }
}
