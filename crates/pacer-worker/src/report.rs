//! The shard while it runs and after: what a worker holds across sessions ([`Running`]: the
//! recorder, the limiter, the engine's controls and its end), the reports it sends, and the
//! loop of one session once the shard is under way ([`stream_reports`]): reports every
//! interval, heartbeats, the controller's Stop and Abort, Finished when the engine ends.
//!
//! Reports are DELTAS (protocol 2): each one holds what was recorded after the report it
//! continues (`Report.since_seq`), so a report costs one interval of data however long the
//! test has run, and a controller with a thousand workers adds each one into its total
//! instead of decoding and subtracting a whole cumulative snapshot per worker every second
//! (docs/benchmarks.md "Controller at scale"). To continue exactly from whatever report the
//! controller counted last, the worker keeps the cumulative snapshots of the reports it sent
//! and that are not yet known to be counted ([`Running`]'s `sent`, packed so that a few cost
//! little): the controller names the last one it counted in each Heartbeat (the older ones
//! are forgotten) and in the Assign of a resumed session (the later ones were lost with the
//! broken stream and are dropped; 0, a restarted controller, makes the next report
//! cumulative again). Neither a reconnect nor a controller's restart loses or double-counts
//! anything. Finished carries the final delta and, for the worker's own row in reports, the
//! final cumulative snapshot (never counted).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pacer_engine::RunControl;
use pacer_engine::setup::LimiterSetup;
use pacer_proto::{Assign, Report, controller_message::Body as In, worker_message::Body as Out};
use pacer_stats::{Recorder, Snapshot};
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

/// The most reports a worker keeps sent and not yet known to be counted by the controller
/// (their cumulative snapshots, packed: of the order of their JSON, ~90 KB for a 30-request
/// plan 5 minutes in by `worker_sim --measure-reports`, so a few MB at most). The controller acknowledges every heartbeat interval (a second), so one or two
/// are held normally; a whole minute of reports at the default interval uncounted means the
/// controller is far behind. Past it the periodic reports are skipped rather than piling up
/// memory: the next report sent continues the last one sent and so covers the longer
/// interval, nothing is lost.
pub(crate) const MAX_UNCOUNTED_REPORTS: usize = 64;

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
    /// The `seq` of the last report sent (0: none yet).
    seq: u64,
    /// The cumulative snapshots (packed) of the reports sent, by `seq`, oldest first: those
    /// the controller is not yet known to have counted, after the last one it has (`counted`,
    /// when held: the base the next report continues from if every later one is lost).
    sent: VecDeque<(u64, Snapshot)>,
    /// The `seq` of the last report the controller said it counted (0: none yet).
    counted: u64,
    /// Periodic reports are being skipped because [`MAX_UNCOUNTED_REPORTS`] are uncounted
    /// (logged once per such episode, not once per interval).
    behind: bool,
    report_every: Duration,
    heartbeat_every: Duration,
    /// How long the controller may be silent; each session's Assign sets it anew.
    pub(crate) peer_timeout: Duration,
    /// The most `Finished.snapshot_json` may hold (`Assign.detail_max_bytes`, this worker's
    /// share of the controller's room for the workers' own results); each session's Assign
    /// sets it anew.
    pub(crate) detail_max: usize,
    /// When a controller was last heard from (any message, any session): the watchdog of
    /// `lost_after` ([`watch_for_lost`]) reads it.
    heard: watch::Sender<Instant>,
}

/// `Assign.detail_max_bytes` as a size (saturating on a 32-bit target: the message bound
/// applies anyway).
pub(crate) fn detail_max(a: &Assign) -> usize {
    usize::try_from(a.detail_max_bytes).unwrap_or(usize::MAX)
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
            sent: VecDeque::new(),
            counted: 0,
            behind: false,
            report_every: interval(a.report_interval_ms),
            heartbeat_every: interval(a.heartbeat_interval_ms),
            peer_timeout,
            detail_max: detail_max(a),
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

    /// How many of the reports held in `sent` the controller is not yet known to have counted.
    fn uncounted(&self) -> usize {
        self.sent
            .iter()
            .filter(|(seq, _)| *seq > self.counted)
            .count()
    }

    /// The next report (numbered `seq + 1`, not yet sent or held) and the cumulative snapshot
    /// it brings the controller to: what was recorded after the last report sent (all of it
    /// when none is held), the cumulative packed first so that the subtraction walks two
    /// packed histograms and the snapshot kept as the next base never grows a dense copy.
    /// Fails only when the recorder's snapshot does not continue the last one sent (a bug).
    fn next_report(&self) -> Result<(Report, Snapshot), String> {
        let Some((seq, base)) = self.sent.back() else {
            return Ok(self.whole_report());
        };
        let cumulative = self.recorder.snapshot().packed();
        // `delta_continuing`: the controller adds it into a total that holds the base, which
        // must give exactly the total holding this snapshot (the ledger too).
        let delta = cumulative
            .delta_continuing(base)
            .map_err(|e| format!("the snapshot does not continue report {seq}: {e}"))?;
        Ok((self.numbered(*seq, delta.to_json()), cumulative))
    }

    /// The next report as everything since the start (`since_seq` 0), and that cumulative.
    fn whole_report(&self) -> (Report, Snapshot) {
        let cumulative = self.recorder.snapshot().packed();
        (self.numbered(0, cumulative.to_json()), cumulative)
    }

    /// The next report: `snapshot_json` recorded after report `since_seq`.
    fn numbered(&self, since_seq: u64, snapshot_json: String) -> Report {
        Report {
            seq: self.seq + 1,
            since_seq,
            elapsed_us: self.elapsed_us(),
            snapshot_json: snapshot_json.into_bytes(),
            // The limits table is informational: an encoding failure sends none.
            limits_json: serde_json::to_vec(&self.setup.pacing()).unwrap_or_default(),
        }
    }

    /// Take `report` (from [`Running::next_report`]) as sent: its number is used and its
    /// cumulative snapshot is held until the controller has counted a later one.
    fn sent(&mut self, report: &Report, cumulative: Snapshot) {
        self.seq = report.seq;
        self.sent.push_back((report.seq, cumulative));
    }

    /// The report due now, unless it cannot be sent: its delta is larger than the protocol
    /// allows (`pacer_proto::MAX_SNAPSHOT_BYTES`), or [`MAX_UNCOUNTED_REPORTS`] are already
    /// uncounted. A skipped report uses no `seq` and is not held: the next one continues the
    /// last one sent, so it carries what this one would have.
    fn report(&mut self) -> Option<Report> {
        if self.uncounted() >= MAX_UNCOUNTED_REPORTS {
            if !self.behind {
                tracing::warn!(
                    "the controller has not counted the last {MAX_UNCOUNTED_REPORTS} reports (up to {}; it counted {}): skipping reports until it catches up",
                    self.seq,
                    self.counted
                );
                self.behind = true;
            }
            return None;
        }
        let (report, cumulative) = match self.next_report() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("report not sent: {e}");
                return None;
            }
        };
        let bytes = report.snapshot_json.len();
        if bytes > pacer_proto::MAX_SNAPSHOT_BYTES {
            tracing::error!("a report of {bytes} bytes is too large to send");
            return None;
        }
        self.sent(&report, cumulative);
        Some(report)
    }

    /// The report due every interval, unless skipped ([`Running::report`]).
    fn periodic_report(&mut self) -> Option<Out> {
        self.report().map(Out::Report)
    }

    /// The final message: the last delta, how the engine ended, and the final cumulative
    /// snapshot for the worker's own row in reports when it fits this worker's share of the
    /// controller's room (`Assign.detail_max_bytes`) and the message
    /// (`Finished.snapshot_json`; otherwise empty, `detail_left_out`, and logged). Always sent,
    /// however many reports are uncounted: it is the worker's last word.
    fn finished(&mut self, end: EngineEnd) -> Out {
        let (report, cumulative) = match self.next_report() {
            Ok(r) => r,
            Err(e) => {
                // Cannot happen with one recorder; if it did, a cumulative report that
                // continues nothing makes the controller fail this worker by name rather
                // than count something wrong.
                tracing::error!("final report: {e}; sending it cumulative");
                self.sent.clear();
                self.whole_report()
            }
        };
        let whole = cumulative.to_json();
        let total = report.snapshot_json.len() + whole.len() + report.limits_json.len();
        let fits = whole.len() <= self.detail_max && total <= pacer_proto::MAX_SNAPSHOT_BYTES;
        if !fits {
            tracing::info!(
                "this worker's own results ({} bytes) are not sent: over its share of the controller's room ({} bytes) or the message's; reports show its counters, not its own row",
                whole.len(),
                self.detail_max
            );
        }
        let snapshot_json = if fits { whole.into_bytes() } else { Vec::new() };
        self.sent(&report, cumulative);
        Out::Finished(pacer_proto::Finished {
            report: Some(report),
            stopped_early: end.stopped_early,
            error: end.error,
            snapshot_json,
            detail_left_out: !fits,
        })
    }

    /// The controller counted the reports up to `seq` (its Heartbeat's `counted_seq`): the
    /// ones before it are forgotten, `seq` itself stays as the base of a resumed session. A
    /// number this worker never sent (a confused controller) is ignored.
    fn counted(&mut self, seq: u64) {
        if seq == 0 || seq <= self.counted {
            return;
        }
        if seq > self.seq {
            tracing::warn!(
                "heartbeat.counted_seq: {seq} is above the last report sent ({}): ignored",
                self.seq
            );
            return;
        }
        self.counted = seq;
        while self.sent.front().is_some_and(|(s, _)| *s < seq) {
            self.sent.pop_front();
        }
        if self.behind && self.uncounted() < MAX_UNCOUNTED_REPORTS {
            tracing::info!("the controller caught up (counted {seq}): reporting again");
            self.behind = false;
        }
    }

    /// A resumed session's controller counted the reports up to `counted_seq`
    /// (`Assign.counted_seq`; 0: none, a restarted controller). The reports sent after it
    /// were lost with the broken stream and are dropped, so the next report continues it;
    /// after 0 the next report is cumulative. Fails when this worker no longer holds that
    /// report's snapshot (or never sent it): it cannot then continue exactly.
    pub(crate) fn resume_from(&mut self, counted_seq: u64) -> Result<(), String> {
        self.behind = false;
        if counted_seq == 0 {
            self.sent.clear();
            self.counted = 0;
            return Ok(());
        }
        let held = match (self.sent.front(), self.sent.back()) {
            (Some((first, _)), Some((last, _))) => format!("reports {first} to {last}"),
            _ => "no report".to_string(),
        };
        self.sent.retain(|(seq, _)| *seq == counted_seq);
        if self.sent.back().map(|(seq, _)| *seq) != Some(counted_seq) {
            return Err(format!(
                "assign.counted_seq: {counted_seq} is not a report this worker can continue from: it holds the cumulative state of {held} (last sent {}, last counted {})",
                self.seq, self.counted
            ));
        }
        self.counted = counted_seq;
        Ok(())
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
    fn obey(&mut self, body: Option<In>) {
        match body {
            Some(In::Stop(s)) => {
                tracing::warn!("controller: stop ({})", pacer_proto::peer_text(&s.reason));
                self.control.stop.cancel();
            }
            Some(In::Abort(a)) => {
                tracing::warn!("controller: abort ({})", pacer_proto::peer_text(&a.reason));
                self.control.abort.cancel();
            }
            Some(In::Heartbeat(h)) => self.counted(h.counted_seq),
            Some(In::Pong(_)) => {}
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

/// A session's first messages: a report at once (a resumed session's continues the report
/// its controller counted last, [`Running::resume_from`]), and Finished at once if the
/// engine has ended already. Whether Finished was sent.
async fn first_reports(r: &mut Running, tx: &Tx) -> Result<bool, End> {
    if let Some(report) = r.report() {
        send(tx, Out::Report(report)).await?;
    }
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
                let beat = pacer_proto::Heartbeat { sent_us, counted_seq: 0 };
                send(tx, Out::Heartbeat(beat)).await?;
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
    let layout = pacer_stats::Layout {
        scenarios: Vec::new(),
    };
    let (running, _recorder, ended) = running_with(index, test_id, weights, layout);
    (running, ended)
}

/// [`idle_running`] recording into a recorder of `layout`, which it also returns.
#[cfg(test)]
fn running_with(
    index: u32,
    test_id: &str,
    weights: Vec<u32>,
    layout: pacer_stats::Layout,
) -> (Running, Arc<Recorder>, watch::Sender<Option<EngineEnd>>) {
    let (ended, done) = watch::channel(None);
    let a = Assign {
        worker_index: index,
        test_id: test_id.into(),
        weights,
        // A controller of a few workers: room for any worker's own results.
        detail_max_bytes: pacer_proto::MAX_SNAPSHOT_BYTES as u64,
        ..Default::default()
    };
    let recorder = Arc::new(Recorder::new(layout));
    let running = Running::new(
        &a,
        recorder.clone(),
        Arc::new(LimiterSetup::local(&[])),
        RunControl::default(),
        Instant::now(),
        done,
        DEFAULT_INTERVAL,
    );
    (running, recorder, ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    use pacer_stats::{Attempt, RequestOutcome};

    /// Every report is numbered and continues the one before it: a controller that takes one
    /// back checks it continues the one it counted last.
    #[test]
    fn reports_are_numbered_and_the_finished_one_carries_the_last() {
        let (mut r, _ended) = idle_running(1, "t", vec![1, 2]);
        let first = r.report().unwrap();
        assert_eq!((first.seq, first.since_seq), (1, 0));
        let second = r.report().unwrap();
        assert_eq!((second.seq, second.since_seq), (2, 1));
        let Out::Finished(f) = r.finished(EngineEnd::failed("no")) else {
            panic!("not a Finished");
        };
        assert_eq!(f.report.map(|r| (r.seq, r.since_seq)), Some((3, 2)));
        assert!(f.stopped_early);
        assert_eq!(f.error, "no");
    }

    /// A running shard with one scenario of one request, and its recorder.
    fn recording() -> (Running, Arc<Recorder>, watch::Sender<Option<EngineEnd>>) {
        let layout = pacer_stats::Layout {
            scenarios: vec![pacer_stats::ScenarioLayout {
                name: "s".into(),
                requests: vec!["r".into()],
            }],
        };
        running_with(0, "t", vec![1], layout)
    }

    /// Record `n` requests of a few milliseconds each (different each call).
    fn record(recorder: &Recorder, n: u64, ms: u64) {
        for i in 0..n {
            let took = Duration::from_micros(ms * 1000 + i * 37);
            recorder.record_attempt(
                0,
                0,
                &Attempt {
                    service_time: took,
                    status: Some(if i % 5 == 0 { 429 } else { 200 }),
                    bytes_sent: 10,
                    bytes_received: 100 + i,
                    ..Default::default()
                },
            );
            recorder.record_request(
                0,
                0,
                &RequestOutcome {
                    duration: took,
                    attempts: 1,
                    ..Default::default()
                },
            );
        }
    }

    fn delta_of(report: &Report) -> Snapshot {
        Snapshot::from_json_bytes(&report.snapshot_json).unwrap()
    }

    fn held(r: &Running) -> Vec<u64> {
        r.sent.iter().map(|(seq, _)| *seq).collect()
    }

    fn heartbeat(counted_seq: u64) -> Option<In> {
        Some(In::Heartbeat(pacer_proto::Heartbeat {
            sent_us: 0,
            counted_seq,
        }))
    }

    /// What a controller does: each report continues the one it counted last, and adding the
    /// deltas up gives the worker's cumulative results exactly.
    #[test]
    fn the_deltas_chain_and_sum_to_the_cumulative() {
        let (mut r, recorder, _ended) = recording();
        let mut total: Option<Snapshot> = None;
        let mut last = 0;
        for i in 1..=6 {
            record(&recorder, i * 3, i);
            let report = r.report().unwrap();
            assert_eq!((report.seq, report.since_seq), (last + 1, last));
            let delta = delta_of(&report);
            assert_eq!(
                delta.total().requests,
                i * 3,
                "report {i} holds its interval only"
            );
            match total.as_mut() {
                None => total = Some(delta),
                Some(t) => t.merge_in_place(&delta).unwrap(),
            }
            assert_eq!(total.as_ref().unwrap(), &recorder.snapshot());
            last = report.seq;
            r.obey(heartbeat(last));
        }
        // An interval with nothing recorded is an empty delta, still numbered.
        let idle = r.report().unwrap();
        assert_eq!((idle.seq, idle.since_seq), (7, 6));
        assert_eq!(delta_of(&idle).total().requests, 0);
    }

    /// The controller's Heartbeat says which report it counted last: the older ones are
    /// forgotten, that one stays (a resumed session may continue it); a number not above the
    /// last counted, or above the last sent, changes nothing.
    #[test]
    fn a_heartbeat_forgets_the_reports_before_the_counted_one() {
        let (mut r, recorder, _ended) = recording();
        for i in 1..=4 {
            record(&recorder, 2, i);
            r.report().unwrap();
        }
        assert_eq!(held(&r), [1, 2, 3, 4]);
        r.obey(heartbeat(0));
        assert_eq!(held(&r), [1, 2, 3, 4], "0: nothing counted yet");
        r.obey(heartbeat(3));
        assert_eq!(held(&r), [3, 4]);
        r.obey(heartbeat(2));
        assert_eq!(held(&r), [3, 4], "an older count changes nothing");
        r.obey(heartbeat(9));
        assert_eq!(held(&r), [3, 4], "a report never sent cannot be counted");
        r.obey(heartbeat(4));
        assert_eq!(held(&r), [4]);
        let next = r.report().unwrap();
        assert_eq!((next.seq, next.since_seq), (5, 4));
    }

    /// A restarted controller counted nothing (`Assign.counted_seq` 0): the next report is
    /// the whole results since the start, numbered on.
    #[test]
    fn a_resume_from_nothing_sends_the_cumulative() {
        let (mut r, recorder, _ended) = recording();
        for i in 1..=3 {
            record(&recorder, 4, i);
            r.report().unwrap();
        }
        r.obey(heartbeat(2));
        r.resume_from(0).unwrap();
        assert!(held(&r).is_empty());
        record(&recorder, 1, 9);
        let next = r.report().unwrap();
        assert_eq!((next.seq, next.since_seq), (4, 0));
        assert_eq!(delta_of(&next), recorder.snapshot());
    }

    /// A resumed session continues the report its controller counted last: the ones sent
    /// after it were lost with the stream and are dropped, and the next delta covers them.
    #[test]
    fn a_resume_continues_the_counted_report() {
        let (mut r, recorder, _ended) = recording();
        let mut at_3 = None;
        for i in 1..=5 {
            record(&recorder, 2, i);
            r.report().unwrap();
            if i == 3 {
                at_3 = Some(recorder.snapshot());
            }
        }
        r.obey(heartbeat(2));
        r.resume_from(3).unwrap();
        assert_eq!(held(&r), [3]);
        record(&recorder, 3, 7);
        let next = r.report().unwrap();
        assert_eq!((next.seq, next.since_seq), (6, 3));
        let expected = recorder
            .snapshot()
            .delta_continuing(&at_3.unwrap())
            .unwrap();
        assert_eq!(delta_of(&next), expected);
        assert_eq!(delta_of(&next).total().requests, 2 * 2 + 3);
    }

    /// A controller that counted a report this worker no longer holds (forgotten after a
    /// later count) or never sent: the worker cannot continue it exactly, and says so.
    #[test]
    fn a_resume_from_an_unknown_report_fails_by_name() {
        for k in [2, 7] {
            let (mut r, recorder, _ended) = recording();
            for i in 1..=4 {
                record(&recorder, 2, i);
                r.report().unwrap();
            }
            r.obey(heartbeat(3));
            let e = r.resume_from(k).unwrap_err();
            assert!(e.starts_with(&format!("assign.counted_seq: {k} ")), "{e}");
            assert!(e.contains("reports 3 to 4"), "{e}");
            assert!(e.contains("last sent 4, last counted 3"), "{e}");
        }
        let (mut r, _recorder, _ended) = recording();
        let e = r.resume_from(1).unwrap_err();
        assert!(e.contains("no report"), "{e}");
    }

    /// A controller far behind: past [`MAX_UNCOUNTED_REPORTS`] uncounted, periodic reports
    /// are skipped (no number used, nothing held), and once it counts again the next report
    /// continues the last one sent, covering the skipped intervals.
    #[test]
    fn reports_are_skipped_while_too_many_are_uncounted() {
        let (mut r, recorder, _ended) = recording();
        for i in 0..MAX_UNCOUNTED_REPORTS as u64 {
            record(&recorder, 1, i % 10 + 1);
            assert!(r.periodic_report().is_some());
        }
        record(&recorder, 5, 3);
        assert!(r.periodic_report().is_none());
        assert!(r.report().is_none());
        assert_eq!(r.seq, MAX_UNCOUNTED_REPORTS as u64);
        assert_eq!(r.sent.len(), MAX_UNCOUNTED_REPORTS);
        assert!(r.behind);
        r.obey(heartbeat(10));
        assert!(!r.behind);
        let next = r.report().unwrap();
        let last = MAX_UNCOUNTED_REPORTS as u64;
        assert_eq!((next.seq, next.since_seq), (last + 1, last));
        assert_eq!(delta_of(&next).total().requests, 5);
        // Finished is sent however far behind the controller is.
        r.obey(heartbeat(0));
        while r.uncounted() < MAX_UNCOUNTED_REPORTS {
            r.report().unwrap();
        }
        assert!(r.report().is_none());
        assert!(matches!(r.finished(EngineEnd::default()), Out::Finished(_)));
    }

    /// Finished counts its last delta like any report and carries the whole results apart,
    /// for the worker's own row.
    #[test]
    fn finished_carries_the_final_delta_and_the_cumulative() {
        let (mut r, recorder, _ended) = recording();
        record(&recorder, 4, 2);
        r.report().unwrap();
        record(&recorder, 6, 3);
        let Out::Finished(f) = r.finished(EngineEnd::default()) else {
            panic!("not a Finished");
        };
        let report = f.report.unwrap();
        assert_eq!((report.seq, report.since_seq), (2, 1));
        assert_eq!(delta_of(&report).total().requests, 6);
        let whole = Snapshot::from_json_bytes(&f.snapshot_json).unwrap();
        assert_eq!(whole, recorder.snapshot());
        assert_eq!(whole.total().requests, 10);
        assert!(!f.stopped_early && f.error.is_empty() && !f.detail_left_out);
    }

    /// Whole results larger than this worker's share of the controller's room
    /// (`Assign.detail_max_bytes`) are left out, and it says so; the final delta is sent
    /// (and counted) all the same.
    #[test]
    fn finished_leaves_out_results_over_its_share() {
        let (mut r, recorder, _ended) = recording();
        record(&recorder, 4, 2);
        let whole = recorder.snapshot().packed().to_json().len();
        r.detail_max = whole - 1;
        let Out::Finished(f) = r.finished(EngineEnd::default()) else {
            panic!("not a Finished");
        };
        assert!(f.snapshot_json.is_empty() && f.detail_left_out);
        assert_eq!(delta_of(&f.report.unwrap()).total().requests, 4);

        let (mut r, recorder, _ended) = recording();
        record(&recorder, 4, 2);
        r.detail_max = whole;
        let Out::Finished(f) = r.finished(EngineEnd::default()) else {
            panic!("not a Finished");
        };
        assert_eq!(f.snapshot_json.len(), whole);
        assert!(!f.detail_left_out);
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
