//! The shard while it runs and after: what a worker holds across sessions ([`Running`]: the
//! recorder, the limiter, the engine's controls and its end), the reports it sends (each one
//! CUMULATIVE, so a controller that takes one back neither loses nor double-counts), and the
//! loop of one session once the shard is under way ([`stream_reports`]): reports every
//! interval, heartbeats, the controller's Stop and Abort, Finished when the engine ends.

use std::sync::Arc;
use std::time::Duration;

use pacer_engine::RunControl;
use pacer_engine::setup::LimiterSetup;
use pacer_proto::{Assign, Report, controller_message::Body as In, worker_message::Body as Out};
use pacer_stats::Recorder;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::WorkerOutcome;
use crate::session::{End, Tx, classify, send};

/// The report and heartbeat interval when the Assign leaves it unset (0).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest report or heartbeat interval a controller may ask for: a floor, so a broken
/// Assign cannot make the worker snapshot in a busy loop.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// A report or heartbeat interval from the Assign's milliseconds.
fn interval(ms: u32) -> Duration {
    if ms == 0 {
        DEFAULT_INTERVAL
    } else {
        MIN_INTERVAL.max(Duration::from_millis(u64::from(ms)))
    }
}

/// How the engine ended, once it has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EngineEnd {
    pub(crate) stopped_early: bool,
    /// Why the engine could not run its shard; empty when it could.
    pub(crate) error: String,
}

impl EngineEnd {
    /// The engine did not run its shard to the end: `error` says why.
    pub(crate) fn failed(error: impl Into<String>) -> Self {
        Self {
            stopped_early: true,
            error: error.into(),
        }
    }
}

/// A shard being run (or run already).
pub(crate) struct Running {
    pub(crate) index: u32,
    pub(crate) test_id: String,
    pub(crate) weights: Vec<u32>,
    recorder: Arc<Recorder>,
    /// The limiter, for the limits table sent with each report.
    setup: Arc<LimiterSetup>,
    pub(crate) control: RunControl,
    start: Instant,
    /// The engine's end, once it has returned.
    done: watch::Receiver<Option<EngineEnd>>,
    seq: u64,
    report_every: Duration,
    heartbeat_every: Duration,
    /// How long the controller may be silent; each session's Assign sets it anew.
    pub(crate) peer_timeout: Duration,
    /// When a controller was last heard from (any message, any session): the watchdog of
    /// `lost_after` ([`watch_for_lost`]) reads it.
    heard: watch::Sender<Instant>,
}

impl Running {
    /// The shard `a` assigned, its engine started (or about to start) at `start`.
    pub(crate) fn new(
        a: &Assign,
        recorder: Arc<Recorder>,
        setup: Arc<LimiterSetup>,
        control: RunControl,
        start: Instant,
        done: watch::Receiver<Option<EngineEnd>>,
        peer_timeout: Duration,
    ) -> Self {
        Running {
            index: a.worker_index,
            test_id: a.test_id.clone(),
            weights: a.weights.clone(),
            recorder,
            setup,
            control,
            start,
            done,
            seq: 0,
            report_every: interval(a.report_interval_ms),
            heartbeat_every: interval(a.heartbeat_interval_ms),
            peer_timeout,
            heard: watch::Sender::new(Instant::now()),
        }
    }

    /// A controller was heard from just now.
    pub(crate) fn heard(&self) {
        self.heard.send_replace(Instant::now());
    }

    /// Start the watchdog that stops this shard's load once no controller has been heard
    /// from for `lost_after` ([`watch_for_lost`]).
    pub(crate) fn guard(&self, lost_after: Duration) {
        tokio::spawn(watch_for_lost(
            self.heard.subscribe(),
            lost_after,
            self.control.abort.clone(),
            self.done.clone(),
        ));
    }

    pub(crate) fn done(&self) -> Option<EngineEnd> {
        self.done.borrow().clone()
    }

    /// Microseconds since the shard's start (zero before it).
    pub(crate) fn elapsed_us(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_micros() as u64
    }

    pub(crate) fn report(&mut self) -> Report {
        self.seq += 1;
        Report {
            seq: self.seq,
            elapsed_us: self.elapsed_us(),
            snapshot_json: self.recorder.snapshot().to_json().into_bytes(),
            // The limits table is informational: an encoding failure sends none.
            limits_json: serde_json::to_vec(&self.setup.pacing()).unwrap_or_default(),
        }
    }

    /// The report due every interval, unless its snapshot is larger than the protocol allows
    /// (`pacer_proto::MAX_SNAPSHOT_BYTES`): that one is logged and skipped.
    fn periodic_report(&mut self) -> Option<Out> {
        let report = self.report();
        let bytes = report.snapshot_json.len();
        if bytes > pacer_proto::MAX_SNAPSHOT_BYTES {
            tracing::error!("snapshot of {bytes} bytes is too large to send");
            return None;
        }
        Some(Out::Report(report))
    }

    /// The final message: the last cumulative report and how the engine ended.
    fn finished(&mut self, end: EngineEnd) -> Out {
        Out::Finished(pacer_proto::Finished {
            report: Some(self.report()),
            stopped_early: end.stopped_early,
            error: end.error,
        })
    }

    /// What the worker did, once its final results are delivered.
    pub(crate) fn outcome(&self) -> WorkerOutcome {
        let end = self.done().unwrap_or_default();
        WorkerOutcome {
            index: self.index,
            test_id: self.test_id.clone(),
            http_reqs: self.recorder.snapshot().total().attempts,
            stopped_early: end.stopped_early,
            engine_error: (!end.error.is_empty()).then_some(end.error),
        }
    }

    /// Act on a message from the controller while the shard runs.
    fn obey(&self, body: Option<In>) {
        match body {
            Some(In::Stop(s)) => {
                tracing::warn!("controller: stop ({})", pacer_proto::peer_text(&s.reason));
                self.control.stop.cancel();
            }
            Some(In::Abort(a)) => {
                tracing::warn!("controller: abort ({})", pacer_proto::peer_text(&a.reason));
                self.control.abort.cancel();
            }
            Some(In::Heartbeat(_) | In::Pong(_)) => {}
            Some(other) => {
                tracing::warn!(
                    "ignoring {} from the controller while running",
                    other.kind()
                );
            }
            None => {
                tracing::warn!("ignoring a controller message of an unknown kind");
            }
        }
    }
}

/// The first whole multiple of `every` after the shard's `start` that is still ahead of `now`
/// (a session opened mid-run keeps the fleet's cadence).
fn next_report_at(start: Instant, now: Instant, every: Duration) -> Instant {
    let every = every.max(MIN_INTERVAL);
    let Some(since) = now.checked_duration_since(start) else {
        return start + every;
    };
    let periods = since.as_nanos() / every.as_nanos() + 1;
    let nanos = u64::try_from(periods.saturating_mul(every.as_nanos())).unwrap_or(u64::MAX);
    start
        .checked_add(Duration::from_nanos(nanos))
        .unwrap_or(now + every)
}

/// A session's first messages: the latest cumulative report (a resumed session's controller
/// takes the shard back from it), and Finished at once if the engine has ended already.
/// Whether Finished was sent.
async fn first_reports(r: &mut Running, tx: &Tx) -> Result<bool, End> {
    send(tx, Out::Report(r.report())).await?;
    let Some(end) = r.done() else {
        return Ok(false);
    };
    send(tx, r.finished(end)).await?;
    Ok(true)
}

/// Stream reports and heartbeats until the final report is delivered.
pub(crate) async fn stream_reports(
    r: &mut Running,
    tx: &Tx,
    inbound: &mut crate::served::Inbound,
    cancel: &CancellationToken,
) -> Result<(), End> {
    let mut finished_sent = first_reports(r, tx).await?;
    // Reports fall due at whole intervals of the common start, so the controller can put
    // each one in the second it closes (pacer_report::fleet).
    let first = next_report_at(r.start, Instant::now(), r.report_every);
    let mut reports = tokio::time::interval_at(first, r.report_every);
    reports.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beats = tokio::time::interval(r.heartbeat_every);
    beats.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut done = r.done.clone();
    loop {
        let abort = r.control.abort.clone();
        tokio::select! {
            result = done.wait_for(Option::is_some), if !finished_sent => {
                let end = match result {
                    Ok(d) => d.clone().unwrap_or_default(),
                    Err(_) => EngineEnd::failed("the engine's watcher ended"),
                };
                if !end.error.is_empty() {
                    tracing::error!("{}", end.error);
                }
                send(tx, r.finished(end)).await?;
                finished_sent = true;
            }
            _ = reports.tick(), if !finished_sent => {
                if let Some(report) = r.periodic_report() {
                    send(tx, report).await?;
                }
            }
            _ = beats.tick() => {
                let sent_us = r.elapsed_us();
                send(tx, Out::Heartbeat(pacer_proto::Heartbeat { sent_us })).await?;
            }
            _ = cancel.cancelled(), if !abort.is_cancelled() => {
                // After Finished was sent, being asked to quit is the normal end of a run.
                if finished_sent {
                    tracing::debug!("asked to quit after finishing");
                } else {
                    tracing::warn!("asked to quit: aborting the shard");
                }
                abort.cancel();
            }
            _ = tokio::time::sleep_until(last_heard + r.peer_timeout) => {
                return Err(End::Retry(format!(
                    "no message from the controller for {:?}", r.peer_timeout
                )));
            }
            m = inbound.message() => {
                last_heard = Instant::now();
                r.heard();
                match m {
                    Ok(Some(m)) => r.obey(m.body),
                    Ok(None) if finished_sent => return Ok(()),
                    Ok(None) => return Err(End::Retry("the controller closed the stream".into())),
                    // A stream declared lost or replaced ends with ABORTED: reconnect.
                    Err(status) => return Err(classify(&status)),
                }
            }
        }
    }
}

/// Whether a controller last heard from at `heard` is lost at `now`.
fn is_lost(heard: Instant, now: Instant, lost_after: Duration) -> bool {
    now.saturating_duration_since(heard) >= lost_after
}

/// The watchdog of `lost_after`: once no controller has been heard from for that long, the
/// shard's engine is aborted (in-flight requests end, no new one starts), so a worker whose
/// controller is gone for good stops loading the target on its own. Ends with the engine.
/// The worker keeps reconnecting meanwhile: a controller that comes back still gets the
/// results, marked stopped early.
async fn watch_for_lost(
    mut heard: watch::Receiver<Instant>,
    lost_after: Duration,
    abort: CancellationToken,
    mut done: watch::Receiver<Option<EngineEnd>>,
) {
    loop {
        let last = *heard.borrow_and_update();
        if is_lost(last, Instant::now(), lost_after) {
            tracing::error!(
                "no controller heard from for {lost_after:?} (--lost-after): stopping this worker's load"
            );
            abort.cancel();
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(last + lost_after) => {}
            changed = heard.changed() => if changed.is_err() { return },
            _ = abort.cancelled() => return,
            _ = done.wait_for(Option::is_some) => return,
        }
    }
}

/// A [`Running`] with no engine behind it, for the tests of the modules that read one; the
/// sender ends its engine.
#[cfg(test)]
pub(crate) fn idle_running(
    index: u32,
    test_id: &str,
    weights: Vec<u32>,
) -> (Running, watch::Sender<Option<EngineEnd>>) {
    let (ended, done) = watch::channel(None);
    let a = Assign {
        worker_index: index,
        test_id: test_id.into(),
        weights,
        ..Default::default()
    };
    let running = Running::new(
        &a,
        Arc::new(Recorder::new(pacer_stats::Layout {
            scenarios: Vec::new(),
        })),
        Arc::new(LimiterSetup::local(&[])),
        RunControl::default(),
        Instant::now(),
        done,
        DEFAULT_INTERVAL,
    );
    (running, ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every report is cumulative and numbered: a controller that takes one back orders them
    /// by `seq`.
    #[test]
    fn reports_are_numbered_and_the_finished_one_carries_the_last() {
        let (mut r, _ended) = idle_running(1, "t", vec![1, 2]);
        assert_eq!(r.report().seq, 1);
        assert_eq!(r.report().seq, 2);
        let Out::Finished(f) = r.finished(EngineEnd::failed("no")) else {
            panic!("not a Finished");
        };
        assert_eq!(f.report.map(|r| r.seq), Some(3));
        assert!(f.stopped_early);
        assert_eq!(f.error, "no");
    }

    #[test]
    fn the_outcome_says_how_the_engine_ended() {
        let (r, ended) = idle_running(1, "t", vec![1, 2]);
        let o = r.outcome();
        assert_eq!((o.index, o.test_id.as_str()), (1, "t"));
        assert!(!o.stopped_early && o.engine_error.is_none());
        ended
            .send(Some(EngineEnd::failed("the engine could not run: x")))
            .unwrap();
        let o = r.outcome();
        assert!(o.stopped_early);
        assert_eq!(
            o.engine_error.as_deref(),
            Some("the engine could not run: x")
        );
        assert_eq!(o.http_reqs, 0);
    }

    #[test]
    fn reports_fall_due_at_whole_intervals_of_the_start() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(next_report_at(start, start, second), start + second);
        assert_eq!(
            next_report_at(start + second, start, second),
            start + 2 * second
        );
        assert_eq!(
            next_report_at(start, start + ms(2_300), second),
            start + ms(3_000)
        );
        assert_eq!(
            next_report_at(start, start + ms(3_000), second),
            start + ms(4_000)
        );
        assert_eq!(
            next_report_at(start, start + ms(1_100), ms(250)),
            start + ms(1_250)
        );
    }

    #[test]
    fn an_unset_interval_is_a_second_and_a_tiny_one_is_floored() {
        assert_eq!(interval(0), Duration::from_secs(1));
        assert_eq!(interval(1), Duration::from_millis(10));
        assert_eq!(interval(10), Duration::from_millis(10));
        assert_eq!(interval(250), Duration::from_millis(250));
        assert_eq!(
            interval(u32::MAX),
            Duration::from_millis(u64::from(u32::MAX))
        );
    }

    #[test]
    fn a_controller_is_lost_once_silent_for_lost_after() {
        let t = Instant::now();
        let after = Duration::from_secs(30);
        assert!(!is_lost(t, t, after));
        assert!(!is_lost(t, t + Duration::from_millis(29_999), after));
        assert!(is_lost(t, t + after, after));
        // A clock read before `heard` (another thread's update) is not lost.
        assert!(!is_lost(t + after, t, after));
    }

    /// The watchdog aborts the shard after `lost_after` of silence, and each message from a
    /// controller postpones it.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_stops_the_load_after_lost_after_of_silence() {
        let (r, _ended) = idle_running(0, "t", vec![1]);
        let after = Duration::from_secs(30);
        r.guard(after);
        tokio::time::sleep(Duration::from_secs(20)).await;
        r.heard();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!r.control.abort.is_cancelled(), "heard 20 s ago");
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(r.control.abort.is_cancelled(), "silent for 31 s");
    }

    /// A shard that ends by itself needs no watchdog: it stops without aborting anything.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_ends_with_the_engine() {
        let (r, ended) = idle_running(0, "t", vec![1]);
        r.guard(Duration::from_secs(30));
        ended.send(Some(EngineEnd::default())).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!r.control.abort.is_cancelled());
    }

    #[test]
    fn a_failed_engine_stopped_early_and_says_why() {
        let end = EngineEnd::failed("the engine could not run: no");
        assert!(end.stopped_early);
        assert_eq!(end.error, "the engine could not run: no");
        assert_eq!(EngineEnd::default().error, "");
    }
}
