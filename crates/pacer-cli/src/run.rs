//! `pacer run`: load the plan, run it with live progress, print the summary, pick the exit code.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pacer_engine::{Deps, RunControl, RunOptions};
use pacer_plan::Plan;
use pacer_stats::{AbortWatch, Recorder};
use tokio::task::JoinHandle;

use crate::exit::{self, Exit};
use crate::progress::Progress;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The plan (YAML or JSON), or a LoadTest manifest whose spec.plan is used.
    pub plan: PathBuf,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Print no live progress (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Seconds between progress lines when stdout is not a terminal.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub progress_every: u64,
    /// Send `X-Pacer-Worker: <index>` with every request, so the target can tally per worker.
    #[arg(long)]
    pub worker_header: bool,
    /// This process's worker index (for `{{worker}}` and the worker header).
    #[arg(long, default_value_t = 0)]
    pub worker_index: u32,
    /// Do not color the summary.
    #[arg(long)]
    pub no_color: bool,
    /// Split the plan across N worker processes of this binary (gRPC on loopback), to use
    /// every core; the summary is the fleet's, with a row per worker (docs/distributed.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    #[command(flatten)]
    pub report: crate::report::ReportArgs,
    #[command(flatten)]
    pub fleet: crate::fleet::FleetArgs,
}

pub async fn run(args: RunArgs) -> Exit {
    let plan = match pacer_plan::load_file(&args.plan) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("{e}");
            return exit::for_plan_error(&e);
        }
    };
    if let Some(n) = args.workers {
        return crate::controller::run_local(plan, &args, n).await;
    }
    match execute(plan, &args).await {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Failure
        }
    }
}

async fn execute(plan: Arc<Plan>, args: &RunArgs) -> anyhow::Result<Exit> {
    let recorder = Arc::new(Recorder::new(pacer_stats::Layout::of(&plan)));
    // Alone, or one of a fleet sharing its budget through Redis (`--redis`, `--fleet`).
    let fleet = crate::fleet::setup(&plan, &args.fleet, &recorder).await?;
    let limiter = fleet.limiter.clone();
    let deps = Deps {
        limiter: limiter.clone(),
        tokens: fleet.tokens.clone(),
        recorder: recorder.clone(),
    };
    let limits = crate::report::probe({
        let limiter = limiter.clone();
        move || limiter.report()
    });
    let source = crate::report::recorder_source(recorder.clone());
    let metrics =
        crate::metrics::start(args.report.metrics, &plan, source.clone(), limits.clone()).await?;
    let sink =
        crate::report::ReportSink::start(&args.report, &plan, recorder.layout(), source, limits);
    let control = RunControl::default();
    let interactive = std::io::stderr().is_terminal();
    let abort_watch = watch_abort_on_fail(&plan, recorder.clone(), control.clone());
    let progress = (!args.quiet).then(|| {
        Progress::start(
            plan.clone(),
            recorder.clone(),
            interactive,
            Duration::from_secs(if interactive { 1 } else { args.progress_every }),
        )
    });
    // Ctrl-C: first stops gracefully (in-flight iterations get their gracefulStop), second aborts.
    let signals = tokio::spawn({
        let control = control.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\nstopping: in-flight iterations get their gracefulStop (Ctrl-C again to abort)"
                );
                control.stop.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("aborting");
                    control.abort.cancel();
                }
            }
        }
    });
    let report = pacer_engine::run(
        plan.clone(),
        deps,
        RunOptions {
            worker: args.worker_index,
            send_worker_header: args.worker_header,
            ..RunOptions::default()
        },
        control.clone(),
    )
    .await?;
    fleet.finish().await;
    signals.abort();
    if let Some(p) = progress {
        p.finish().await;
    }
    let abort_reason = match abort_watch {
        Some(task) => {
            task.abort();
            task.await.ok().flatten()
        }
        None => None,
    };
    let snapshot = recorder.snapshot();
    let limit_names: Vec<String> = plan.limits.iter().map(|l| l.name.clone()).collect();
    let mut summary = pacer_stats::summarize(
        &plan.name,
        &snapshot,
        report.elapsed,
        &plan.thresholds,
        &limit_names,
    );
    summary.limits = fleet.pacing();
    summary.allowed_hosts = plan.http.allow_hosts.iter().map(|h| h.to_string()).collect();
    let color = !args.no_color && std::io::stdout().is_terminal();
    println!("{}", pacer_stats::render_text(&summary, color));
    if let Some(reason) = &abort_reason {
        println!("aborted: {reason}");
    }
    if let Some(path) = &args.summary_json {
        std::fs::write(path, pacer_stats::render_json(&summary))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(sink) = sink {
        sink.finish(
            &args.report,
            &plan,
            &snapshot,
            &summary,
            &[],
            abort_reason.as_deref(),
        )
        .await?;
    }
    if let Some(metrics) = metrics {
        metrics.shutdown(Duration::from_secs(1)).await;
    }
    Ok(if summary.passed && abort_reason.is_none() {
        Exit::Passed
    } else {
        Exit::ThresholdFailed
    })
}

/// How often the recorder is looked at for `abortOnFail` thresholds (a snapshot copies every
/// histogram, so not every request; once a second is what k6 does).
const ABORT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Stop the run (gracefully) when an `abortOnFail` threshold fails, with or without the
/// progress display. `None` when the plan has no such threshold. The task ends when the run
/// is stopped, returning the crossing; the caller aborts it at the end of a run that passed.
fn watch_abort_on_fail(
    plan: &Plan,
    recorder: Arc<Recorder>,
    control: RunControl,
) -> Option<JoinHandle<Option<String>>> {
    let mut watch = AbortWatch::new(&plan.thresholds);
    if watch.is_idle() {
        return None;
    }
    Some(tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(ABORT_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let snapshot = recorder.snapshot();
            if let Some(crossed) = watch.check(&snapshot, started.elapsed()) {
                let reason = crossed.to_string();
                eprintln!("{reason}");
                control.stop.cancel();
                return Some(reason);
            }
        }
    }))
}
