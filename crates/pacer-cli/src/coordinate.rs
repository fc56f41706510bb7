//! Driving a `pacer_controller::Coordinator` from the command line, the same for `pacer
//! controller` (workers on other machines) and `pacer run --workers N` (worker processes on
//! loopback): live progress, the two-stage Ctrl-C, the fleet's summary with a row per worker,
//! the reports and metrics over the merged numbers, and `pacer run`'s exit code.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use pacer_controller::Coordinator;
use pacer_plan::Plan;

use crate::exit::Exit;
use crate::interrupt::{self, Stopping};
use crate::output::{OutputArgs, Outputs};
use crate::report::{ReportOutputs, SeriesFrom, SnapshotSource, no_limits};

/// How long the gRPC server has, once the test is over, to close the workers' last streams.
pub const SERVER_STOP_WAIT: Duration = Duration::from_secs(2);

/// Run the coordinator with progress, Ctrl-C handling and the summary; the exit code is
/// `pacer run`'s: 0 passed, 99 a threshold failed (or abortOnFail), 1 the run failed.
pub async fn drive(
    coordinator: &Coordinator,
    plan: &Arc<Plan>,
    output: &OutputArgs,
    report: &ReportOutputs,
) -> Exit {
    // Reports and metrics read the fleet's merge of every worker's latest snapshot.
    let source: SnapshotSource = {
        let c = coordinator.clone();
        Arc::new(move || (*c.status().merged).clone())
    };
    let layout = pacer_stats::Layout::of(plan);
    // The series is the coordinator's, built from the workers' reports in the second each
    // closes (sampling the merge on this clock put requests in the wrong seconds).
    let outputs = match Outputs::start(
        report,
        plan,
        &layout,
        source,
        no_limits(),
        SeriesFrom::Fleet,
    )
    .await
    {
        Ok(o) => o,
        Err(e) => {
            crate::exit::print_anyhow(&e);
            return Exit::Failure;
        }
    };
    let signals = interrupt::on_ctrl_c(
        Stopping::EveryWorker,
        {
            let c = coordinator.clone();
            move || c.stop("interrupted (Ctrl-C)")
        },
        {
            let c = coordinator.clone();
            move || c.abort("interrupted twice (Ctrl-C)")
        },
    );
    let interactive = std::io::stderr().is_terminal();
    let progress = (!output.quiet).then(|| {
        crate::progress::start_fleet(
            coordinator.clone(),
            plan.planned_duration(),
            output.progress_period(interactive),
        )
    });
    let result = coordinator.run().await;
    signals.abort();
    if let Some(p) = progress {
        p.abort();
    }
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            crate::exit::print_error(&e);
            return Exit::Failure;
        }
    };
    let summary = outcome.summary(plan);
    crate::outln!("{}", outcome.render_text(&summary, output.summary_color()));
    if let Err(e) = output.write_summary_json(|| outcome.render_json(&summary)) {
        crate::exit::print_anyhow(&e);
        return Exit::Failure;
    }
    // The report's row per worker: each finished worker's own results.
    let workers = || outcome.worker_rows();
    if let Err(e) = outputs
        .finish(
            plan,
            &outcome.merged,
            &summary,
            workers,
            outcome.abort_reason.as_deref(),
            Some(&outcome.series),
        )
        .await
    {
        crate::exit::print_anyhow(&e);
        return Exit::Failure;
    }
    if outcome.failure.is_some() {
        Exit::Failure
    } else {
        crate::exit::for_verdict(summary.passed, outcome.abort_reason.as_deref())
    }
}
