//! Live progress while a run goes: for `pacer run`, a status line on a terminal (indicatif),
//! plain periodic lines otherwise; for a fleet, the coordinator's progress lines. Display
//! only: `abortOnFail` is watched by [`crate::run`] (and the coordinator) whether or not
//! progress is shown (`-q`), so hiding the display cannot change a verdict.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use pacer_controller::{Coordinator, ProgressTracker};
use pacer_plan::Plan;
use pacer_stats::Recorder;
use tokio::task::JoinHandle;

/// How often `pacer run`'s display looks at the recorder (each look copies every histogram).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A look this close to the `--progress-every` period counts as on time, so ticks that fire a
/// little early do not skip a line.
const PERIOD_SLACK: Duration = Duration::from_millis(50);

pub struct Progress {
    task: JoinHandle<()>,
    done: tokio_util::sync::CancellationToken,
}

impl Progress {
    pub fn start(
        plan: Arc<Plan>,
        recorder: Arc<Recorder>,
        interactive: bool,
        every: Duration,
    ) -> Self {
        let done = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(watch(plan, recorder, interactive, every, done.clone()));
        Self { task, done }
    }

    /// Stop displaying (the bar is cleared before the summary prints).
    pub async fn finish(self) {
        self.done.cancel();
        let _ = self.task.await;
    }
}

async fn watch(
    plan: Arc<Plan>,
    recorder: Arc<Recorder>,
    interactive: bool,
    every: Duration,
    done: tokio_util::sync::CancellationToken,
) {
    let started = Instant::now();
    let total = plan.planned_duration();
    let bar = interactive.then(|| {
        let b = ProgressBar::new(total.as_millis() as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:25.cyan/blue} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let mut last_reqs = 0u64;
    let mut last_t = Instant::now();
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.cancelled() => break,
        }
        if !interactive && last_print.elapsed() + PERIOD_SLACK < every {
            continue;
        }
        last_print = Instant::now();
        let snap = recorder.snapshot();
        let elapsed = started.elapsed();
        let total_stats = snap.total();
        let reqs = total_stats.attempts;
        let dt = last_t.elapsed().as_secs_f64().max(1e-3);
        let rate = (reqs.saturating_sub(last_reqs)) as f64 / dt;
        last_reqs = reqs;
        last_t = Instant::now();
        let p95 = total_stats
            .duration
            .percentile(95.0)
            .map(|us| us as f64 / 1000.0);
        let line = format!(
            "{:>6.1}s/{:.0}s  reqs {}  {:.1}/s  p95 {}  errors {}  429s {}",
            elapsed.as_secs_f64(),
            total.as_secs_f64(),
            reqs,
            rate,
            p95.map_or("-".to_string(), |v| format!("{v:.1}ms")),
            total_stats.failed,
            total_stats.throttled,
        );
        match &bar {
            Some(b) => {
                b.set_position((elapsed.as_millis() as u64).min(total.as_millis() as u64));
                b.set_message(line);
            }
            None => eprintln!("{line}"),
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

/// A fleet's progress (`pacer controller`, `pacer run --workers N`): every `every`, the lines
/// of a [`ProgressTracker`] over the coordinator's status, once the test has started. Abort
/// the task to stop.
pub fn start_fleet(coordinator: Coordinator, planned: Duration, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tracker = ProgressTracker::default();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let status = coordinator.status();
            if !status.started {
                continue;
            }
            for line in tracker.lines(&status, planned) {
                eprintln!("{line}");
            }
        }
    })
}
