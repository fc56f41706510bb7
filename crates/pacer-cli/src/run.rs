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
use crate::interrupt::{self, Stopping};
use crate::local::LocalRun;
use crate::output::{OutputArgs, Outputs};
use crate::progress::Progress;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The plan (YAML or JSON), or a LoadTest manifest whose spec.plan is used.
    pub plan: PathBuf,
    /// `--summary-json`, `--quiet`, `--progress-every`, `--no-color`.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Send `X-Pacer-Worker: <index>` with every request, so the target can tally per worker.
    #[arg(long)]
    pub worker_header: bool,
    /// This process's worker index (for `{{worker}}` and the worker header).
    #[arg(long, default_value_t = 0)]
    pub worker_index: u32,
    /// Split the plan across N worker processes of this binary (gRPC on loopback), to use
    /// every core; the summary is the fleet's, with a row per worker (docs/distributed.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    #[command(flatten)]
    pub report: crate::report::ReportOutputs,
    #[command(flatten)]
    pub fleet: crate::fleet::FleetArgs,
}

pub async fn run(args: RunArgs) -> Exit {
    let plan = match exit::load_plan(&args.plan) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Some(n) = args.workers {
        let local = LocalRun {
            workers: n,
            worker_header: args.worker_header,
            output: &args.output,
            report: &args.report,
            fleet: &args.fleet,
        };
        return crate::local::run(plan, local).await;
    }
    match execute(plan, &args).await {
        Ok(exit) => exit,
        Err(e) => {
            crate::exit::print_anyhow(&e);
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
    let outputs = Outputs::start(
        &args.report,
        &plan,
        recorder.layout(),
        source,
        limits,
        crate::report::SeriesFrom::Sampler,
    )
    .await?;
    let control = RunControl::default();
    let interactive = std::io::stderr().is_terminal();
    let abort_watch = watch_abort_on_fail(&plan, recorder.clone(), control.clone());
    let progress = (!args.output.quiet).then(|| {
        Progress::start(
            plan.clone(),
            recorder.clone(),
            interactive,
            args.output.progress_period(interactive),
        )
    });
    let signals = interrupt::on_ctrl_c(
        Stopping::ThisRun,
        {
            let control = control.clone();
            move || control.stop.cancel()
        },
        {
            let control = control.clone();
            move || control.abort.cancel()
        },
    );
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
    let mut summary = pacer_stats::summarize_plan(&plan, &snapshot, report.elapsed);
    summary.limits = fleet.pacing();
    crate::outln!(
        "{}",
        pacer_stats::render_text(&summary, args.output.summary_color())
    );
    if let Some(reason) = &abort_reason {
        crate::outln!("aborted: {reason}");
    }
    // A `unique` data source that ran out stopped the run: it did not run as written.
    let data_out = report.data_exhausted.as_ref().map(ToString::to_string);
    if let Some(reason) = &data_out {
        crate::outln!("stopped: {reason}");
    }
    args.output
        .write_summary_json(|| pacer_stats::render_json(&summary))?;
    outputs
        .finish(
            &plan,
            &snapshot,
            &summary,
            Vec::new,
            abort_reason.as_deref().or(data_out.as_deref()),
            None,
        )
        .await?;
    if data_out.is_some() {
        return Ok(Exit::Failure);
    }
    Ok(exit::for_verdict(summary.passed, abort_reason.as_deref()))
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
