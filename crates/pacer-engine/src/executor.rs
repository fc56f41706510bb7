//! The six executors (k6's names and meanings). Open model: arrivals come from a schedule on the
//! clock, never from responses; an arrival that finds `maxInFlight` full is counted as dropped.
//! Closed model: VUs loop over iterations.
//!
//! A worker runs a [`Shard`] of each executor: only the arrivals `k` of the global schedule
//! the shard owns (at their global times), only its global VU numbers (so `{{vu}}` is the
//! one-process value), its block of shared iterations. The whole plan is the one shard of one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pacer_plan::ramp::RampSchedule;
use pacer_plan::{Executor, Shard, VuStage};
use pacer_stats::IterationOutcome;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::iteration::{Shared, run_iteration};

/// What an executor runs with.
pub(crate) struct ScenarioRun {
    pub(crate) shared: Arc<Shared>,
    pub(crate) scenario: usize,
    /// This process's part of the plan ([`Shard::whole`] for one process).
    pub(crate) shard: Arc<Shard>,
    /// When the scenario starts (its `startTime` already added).
    pub(crate) start: Instant,
    /// Graceful stop: start no new iteration.
    pub(crate) stop: CancellationToken,
    /// Hard stop: interrupt what is in flight.
    pub(crate) hard: CancellationToken,
}

impl ScenarioRun {
    /// Run one iteration unless interrupted by `hard` or by `deadline`.
    async fn iteration(
        &self,
        vu: u32,
        iteration: u64,
        intended: Instant,
        deadline: Option<Instant>,
    ) {
        let sh = &self.shared;
        let Some(taken) = sh.take_rows(self.scenario) else {
            return;
        };
        // Boxed when there is a deadline (ramping VUs only): an inline `Sleep` (112 bytes)
        // would be held by every arrival's future, which never has one.
        let sleep_deadline = async {
            match deadline {
                Some(d) => Box::pin(tokio::time::sleep_until(d)).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            o = run_iteration(sh, self.scenario, vu, iteration, intended.into_std(), taken) => o,
            _ = self.hard.cancelled() => interrupted(intended),
            _ = sleep_deadline => interrupted(intended),
        };
        sh.recorder.record_iteration(self.scenario, &outcome);
    }

    /// Wait for the scenario's `startTime`; false when stopped first.
    pub(crate) async fn sleep_until_start(&self) -> bool {
        self.sleep_until(self.start).await
    }

    fn stopping(&self) -> bool {
        self.stop.is_cancelled() || self.hard.is_cancelled()
    }

    /// Sleep until `t`; false when stopped first.
    async fn sleep_until(&self, t: Instant) -> bool {
        tokio::select! {
            _ = tokio::time::sleep_until(t) => !self.stopping(),
            _ = self.stop.cancelled() => false,
            _ = self.hard.cancelled() => false,
        }
    }

    fn think_time(&self) -> Duration {
        self.shared.plan.scenarios[self.scenario].think_time
    }
}

fn interrupted(intended: Instant) -> IterationOutcome {
    IterationOutcome {
        duration: intended.elapsed(),
        failed: false,
        interrupted: true,
    }
}

pub(crate) async fn run(run: Arc<ScenarioRun>, executor: &Executor) {
    match executor {
        Executor::ConstantArrivalRate {
            rate,
            duration,
            max_in_flight,
        } => {
            arrivals(
                run,
                RampSchedule::constant(*rate, *duration),
                *max_in_flight,
            )
            .await
        }
        Executor::RampingArrivalRate {
            start_rate,
            stages,
            max_in_flight,
        } => arrivals(run, RampSchedule::new(*start_rate, stages), *max_in_flight).await,
        Executor::ConstantVus { vus, duration } => constant_vus(run, *vus, *duration).await,
        Executor::RampingVus {
            start_vus,
            stages,
            graceful_ramp_down,
        } => ramping_vus(run, *start_vus, stages, *graceful_ramp_down).await,
        Executor::PerVuIterations {
            vus,
            iterations,
            max_duration,
        } => per_vu_iterations(run, *vus, *iterations, *max_duration).await,
        Executor::SharedIterations {
            vus,
            iterations,
            max_duration,
        } => shared_iterations(run, *vus, *iterations, *max_duration).await,
    }
}

/// Open model. The arrivals are started from a thread of their own (one of the runtime's
/// blocking pool): it sleeps with the operating system's timer, to the microsecond rather than
/// tokio's 1 ms ticks, until each arrival of the shard is due (never before), then spawns the
/// arrival's iteration onto the runtime, or counts it as dropped when `maxInFlight` is full.
/// A graceful or hard stop wakes the thread at once. The intended time of each arrival is the
/// schedule's exactly, and latency is measured from it. Once the thread is done, the task waits
/// for the iterations in flight.
///
/// The thread runs on the real clock: the schedule does not follow tokio's paused time.
async fn arrivals(run: Arc<ScenarioRun>, schedule: RampSchedule, max_in_flight: u32) {
    let max_in_flight = run.shard.max_in_flight(max_in_flight);
    let sem = Arc::new(Semaphore::new(max_in_flight as usize));
    // Ends the thread if this task is dropped (a runtime waits for its blocking threads).
    let quit = CancellationToken::new();
    let _quit_on_drop = quit.clone().drop_guard();
    let scheduler = tokio::task::spawn_blocking({
        let handle = Handle::current();
        let sem = sem.clone();
        let quit = quit.clone();
        move || start_arrivals(&handle, &run, &schedule, &sem, &quit)
    });
    if let Err(e) = scheduler.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
    // Wait for every in-flight iteration (each ends by itself or at the hard stop).
    let _all = sem.acquire_many(max_in_flight).await;
}

/// The arrival thread of [`arrivals`]: returns at the end of the schedule or at a stop.
fn start_arrivals(
    handle: &Handle,
    run: &Arc<ScenarioRun>,
    schedule: &RampSchedule,
    sem: &Arc<Semaphore>,
    quit: &CancellationToken,
) {
    // Wakes this thread when the run is stopped (or the task gone) while it sleeps.
    let waker = handle.spawn({
        let thread = std::thread::current();
        let run = run.clone();
        let quit = quit.clone();
        async move {
            tokio::select! {
                _ = run.stop.cancelled() => {}
                _ = run.hard.cancelled() => {}
                _ = quit.cancelled() => {}
            }
            thread.unpark();
        }
    });
    let start = run.start.into_std();
    // When the thread last woke: it sleeps again for at least COALESCE (see there).
    let now = std::time::Instant::now();
    let mut woke = now.checked_sub(COALESCE).unwrap_or(now);
    let total = schedule.total();
    let mut dropped = 0u64;
    for k in run.shard.positions_below(total) {
        let Some(offset) = schedule.offset(k) else {
            break;
        };
        let due = start + offset;
        if !sleep_until_due(run, quit, due, &mut woke) {
            break;
        }
        match sem.clone().try_acquire_owned() {
            Ok(permit) => {
                let due = tokio::time::Instant::from_std(due);
                handle.spawn(arrival(run.clone(), k, due, permit));
            }
            Err(_) => {
                dropped += 1;
                // flush in batches: the recorder takes a lock
                if dropped >= 64 {
                    run.shared.recorder.record_dropped(run.scenario, dropped);
                    dropped = 0;
                }
            }
        }
    }
    if dropped > 0 {
        run.shared.recorder.record_dropped(run.scenario, dropped);
    }
    waker.abort();
}

/// One arrival of the open model, as the task it runs in: its iteration, then its place in
/// `maxInFlight` given back. One such task is held per request in flight (10,000 of them at
/// 10000/s against a 1 s server), so its size is the engine's memory per request: a named
/// function so that the test below measures the very future that is spawned, and not an
/// `async fn`, whose future would keep its arguments twice (see [`crate::HttpClient::send`]).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn arrival(
    run: Arc<ScenarioRun>,
    k: u64,
    due: Instant,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        run.iteration(0, k, due, None).await;
        drop(permit);
    }
}

/// The most bytes an arrival's future may take. tokio allocates a task as one cell aligned to
/// 128 bytes on x86_64: its header and trailer (~104 bytes) and the future. Up to ~1944 bytes of
/// future the cell is 2048 bytes, jemalloc's 2 KiB size class; at 3720 bytes (before the
/// changes of issue 23, part 3: docs/benchmarks.md, "10,000 in flight") it was 4 KiB per
/// request in flight. The margin under 1944 is for the compiler's layout changing a little.
#[cfg(test)]
const ARRIVAL_FUTURE_MAX_BYTES: usize = 1920;

/// The arrival thread sleeps at least this long between two wakes: an arrival due sooner than
/// that after the last wake waits for the next one, and every arrival due by then starts
/// together. Below 2000/s each arrival has a wake of its own (lag: the OS timer's ~0.1 ms);
/// above, the lag is at most this, and the thread (with the runtime's worker it wakes) wakes
/// at most 2000 times a second instead of once per arrival, which on a saturated core cost
/// more CPU per request than the sends themselves.
const COALESCE: Duration = Duration::from_micros(500);

/// Returns at once when `due` has passed; else sleeps the thread until `due` (never less) and
/// at least until `woke + COALESCE`, and sets `woke`. False when stopped first (a stop unparks
/// the thread).
fn sleep_until_due(
    run: &ScenarioRun,
    quit: &CancellationToken,
    due: std::time::Instant,
    woke: &mut std::time::Instant,
) -> bool {
    loop {
        if run.stopping() || quit.is_cancelled() {
            return false;
        }
        let now = std::time::Instant::now();
        if now >= due {
            return true;
        }
        // May return early (an unpark, or spuriously): checked again above.
        std::thread::park_timeout(due.max(*woke + COALESCE) - now);
        *woke = std::time::Instant::now();
    }
}

/// How a closed-model executor hands out iterations to its VUs.
#[derive(Clone, Copy, Debug)]
enum Iterations {
    /// `constant-vus`: until the end.
    Unbounded,
    /// `per-vu-iterations`: this many per VU.
    PerVu(u64),
    /// `shared-iterations`: `total` among all VUs, numbered from `first` (this shard's block).
    Shared { first: u64, total: u64 },
}

async fn constant_vus(run: Arc<ScenarioRun>, vus: u32, duration: Duration) {
    let end = run.start + duration;
    closed_vus(run, vus, end, Iterations::Unbounded).await;
}

async fn per_vu_iterations(
    run: Arc<ScenarioRun>,
    vus: u32,
    iterations: u64,
    max_duration: Duration,
) {
    let end = run.start + max_duration;
    closed_vus(run, vus, end, Iterations::PerVu(iterations)).await;
}

async fn shared_iterations(
    run: Arc<ScenarioRun>,
    vus: u32,
    iterations: u64,
    max_duration: Duration,
) {
    let end = run.start + max_duration;
    let (first, total) = run.shard.shared_iterations(iterations, vus);
    closed_vus(run, vus, end, Iterations::Shared { first, total }).await;
}

/// The closed model: each of this shard's VUs runs iterations back to back (with think time)
/// until `end`, a stop, or its share of `iterations` is done.
async fn closed_vus(run: Arc<ScenarioRun>, vus: u32, end: Instant, iterations: Iterations) {
    let counter = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for vu in run.shard.vus(vus) {
        let run = run.clone();
        let counter = counter.clone();
        set.spawn(async move {
            let mut done = 0u64;
            loop {
                // One clock read: the loop's deadline and the iteration's intended start.
                let now = Instant::now();
                if now >= end || run.stopping() {
                    break;
                }
                if let Iterations::PerVu(n) = iterations
                    && done >= n
                {
                    break;
                }
                let k = counter.fetch_add(1, Ordering::Relaxed);
                let number = match iterations {
                    Iterations::Shared { total, .. } if k >= total => break,
                    Iterations::Shared { first, .. } => first + k,
                    Iterations::Unbounded | Iterations::PerVu(_) => k,
                };
                run.iteration(vu, number, now, None).await;
                done += 1;
                let think = run.think_time();
                if !think.is_zero() && !run.sleep_until(Instant::now() + think).await {
                    break;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// The VU target over time: piecewise linear between stages, as in k6.
#[derive(Clone, Debug)]
pub(crate) struct VuCurve {
    /// (start offset s, end offset s, value at start, value at end)
    segs: Vec<(f64, f64, f64, f64)>,
}

const VU_EPS: f64 = 1e-9;

impl VuCurve {
    pub(crate) fn new(start_vus: u32, stages: &[VuStage]) -> Self {
        let mut segs = Vec::new();
        let mut t = 0.0;
        let mut v = f64::from(start_vus);
        for s in stages {
            let len = s.duration.as_secs_f64();
            let to = f64::from(s.target);
            if len > 0.0 {
                segs.push((t, t + len, v, to));
                t += len;
            }
            v = to;
        }
        Self { segs }
    }

    pub(crate) fn end(&self) -> f64 {
        self.segs.last().map_or(0.0, |s| s.1)
    }

    pub(crate) fn max(&self) -> u32 {
        self.segs
            .iter()
            .map(|s| s.2.max(s.3))
            .fold(0.0, f64::max)
            .floor() as u32
    }

    pub(crate) fn value(&self, t: f64) -> f64 {
        for &(t0, t1, v0, v1) in &self.segs {
            if t >= t0 && t < t1 {
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0);
            }
        }
        0.0
    }

    /// First time >= `from` at which VU `i` (1-based) is active (`value >= i`), or at which it
    /// is inactive (`active == false`).
    pub(crate) fn next_change(&self, i: u32, from: f64, active: bool) -> Option<f64> {
        let i = f64::from(i);
        let want = |v: f64| {
            if active {
                v + VU_EPS >= i
            } else {
                v + VU_EPS < i
            }
        };
        for &(t0, t1, v0, v1) in &self.segs {
            if t1 <= from {
                continue;
            }
            let start = from.max(t0);
            let v_start = v0 + (v1 - v0) * (start - t0) / (t1 - t0);
            if want(v_start) {
                return Some(start);
            }
            if (v1 - v0).abs() > VU_EPS {
                // solve v(t) = i for the crossing
                let t = t0 + (i - v0) * (t1 - t0) / (v1 - v0);
                let t = if active { t } else { t + 1e-6 };
                if t >= start && t < t1 {
                    return Some(t);
                }
            }
        }
        if !active { Some(self.end()) } else { None }
    }
}

async fn ramping_vus(
    run: Arc<ScenarioRun>,
    start_vus: u32,
    stages: &[VuStage],
    graceful_ramp_down: Duration,
) {
    let curve = Arc::new(VuCurve::new(start_vus, stages));
    let end = run.start + Duration::from_secs_f64(curve.end());
    let counter = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for vu in run.shard.vus(curve.max()) {
        let run = run.clone();
        let counter = counter.clone();
        let curve = curve.clone();
        set.spawn(async move {
            loop {
                let now = Instant::now();
                if now >= end || run.stopping() {
                    break;
                }
                let off = (now - run.start).as_secs_f64();
                if curve.value(off) + VU_EPS < f64::from(vu) {
                    match curve.next_change(vu, off, true) {
                        Some(t) => {
                            if !run
                                .sleep_until(run.start + Duration::from_secs_f64(t))
                                .await
                            {
                                break;
                            }
                            continue;
                        }
                        None => break,
                    }
                }
                let deactivates = curve
                    .next_change(vu, off, false)
                    .map(|t| run.start + Duration::from_secs_f64(t) + graceful_ramp_down)
                    .filter(|d| *d < end + graceful_ramp_down);
                let k = counter.fetch_add(1, Ordering::Relaxed);
                run.iteration(vu, k, Instant::now(), deactivates).await;
                let think = run.think_time();
                if !think.is_zero() && !run.sleep_until(Instant::now() + think).await {
                    break;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use pacer_limiter::Unlimited;
    use pacer_plan::{Refs, load_str};
    use pacer_stats::{Layout, Recorder};

    use super::*;
    use crate::{RunControl, RunOptions, auth, http};

    /// A scenario of `plan_yaml`'s plan as an executor would run it (nothing is sent).
    fn scenario_run(plan_yaml: &str) -> Arc<ScenarioRun> {
        let plan = Arc::new(load_str(plan_yaml, "plan.yaml", &Refs::default()).unwrap());
        let recorder = Arc::new(Recorder::new(Layout::of(&plan)));
        let tokens = Arc::new(auth::Tokens::from_plan(
            &plan,
            http::build_token_client(&plan.http).unwrap(),
            recorder.clone(),
        ));
        let shared = Shared::new(
            plan.clone(),
            http::HttpClient::new(&plan.http, 1).unwrap(),
            Arc::new(Unlimited),
            tokens,
            recorder,
            &RunOptions::default(),
            RunControl::default(),
        )
        .unwrap();
        Arc::new(ScenarioRun {
            shared: Arc::new(shared),
            scenario: 0,
            shard: Arc::new(Shard::whole()),
            start: Instant::now(),
            stop: CancellationToken::new(),
            hard: CancellationToken::new(),
        })
    }

    /// The task of one arrival is what the engine holds per request in flight: it must stay
    /// small (see [`ARRIVAL_FUTURE_MAX_BYTES`]), whatever the plan uses (auth, retries, polls).
    #[tokio::test]
    async fn an_arrival_future_stays_small() {
        let run = scenario_run(concat!(
            "name: t\ntarget: http://127.0.0.1:9\n",
            "scenarios:\n  - { name: s, executor: constant-arrival-rate, rate: 10/s, duration: 1s, requests: [{ name: r, path: / }] }\n",
        ));
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let size = std::mem::size_of_val(&arrival(run, 0, Instant::now(), permit));
        eprintln!("an arrival's future: {size} bytes");
        assert!(size <= ARRIVAL_FUTURE_MAX_BYTES, "{size} bytes");
    }

    #[test]
    fn vu_curve_activation() {
        let c = VuCurve::new(
            0,
            &[
                VuStage {
                    target: 10,
                    duration: Duration::from_secs(10),
                },
                VuStage {
                    target: 0,
                    duration: Duration::from_secs(10),
                },
            ],
        );
        assert_eq!(c.max(), 10);
        let t = c.next_change(5, 0.0, true).unwrap();
        assert!((t - 5.0).abs() < 1e-6, "{t}");
        let t = c.next_change(5, 6.0, false).unwrap();
        assert!((t - 15.0).abs() < 1e-3, "{t}");
        assert_eq!(c.next_change(11, 0.0, true), None);
    }
}
