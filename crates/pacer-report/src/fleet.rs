//! The per-second series of a fleet, built from what its workers' reports add (each report's
//! delta), each stamped with the worker's time since the fleet's common start.
//!
//! Sampling the merge of the workers' latest snapshots on the controller's own clock (what
//! `pacer controller` did) puts requests in the wrong second: the merge is up to a report
//! interval old, the controller's ticks are not the fleet's start, and a worker that joins
//! late shifts everything. Here each second holds what the workers sent in it: a report
//! stamped `elapsed` belongs to second [`second_of`]`(elapsed)` (the workers report at whole
//! seconds of the common start, a few milliseconds late), the difference between a worker's
//! report and its previous one is added to that second's bucket (merged exactly: counters
//! add, histograms add bucket by bucket), and a second is closed into a row once every
//! worker had time to report it. The rows are then those a single process would sample, to
//! the jitter of the workers' report timers.
//!
//! The caller computes each report's delta once (the controller adds the same delta into its
//! running fleet total) and hands it here: this series keeps no cumulative snapshot.
//!
//! Per worker, the same reports make the worker's own series: a worker's deltas are merged
//! until a report of a later second arrives, then pushed as its row (and the seconds it
//! skipped get empty rows). Memory: the open seconds' merged deltas (at most
//! [`MAX_OPEN_SECONDS`]; only what a row reads of them, [`row_part`]); per worker, the merged deltas since its last row and nothing else
//! (no cumulative snapshot; its final tail never needs folding into its last row, see
//! `WorkerTrack::series`); the fleet's last row's delta (to fold a short tail into it); one
//! row per second for the fleet, and one per second per worker up to [`MAX_WORKER_ROWS`] in
//! all.

use std::collections::VecDeque;
use std::time::Duration;

use pacer_stats::{Layout, ServerLimitHeaders, Snapshot};
use serde::{Deserialize, Serialize};

use crate::series::{MIN_TAIL_SECS, PlannedRate, Series, SeriesBuilder, row_part};

/// A second is closed into the fleet's row once a report stamped this many seconds later has
/// arrived from any worker: reports are due every second, so by then every worker still
/// running has reported the second (a busy machine delays a report by milliseconds, a
/// worker lost for longer is counted in the open second its next report lands in).
pub const CLOSE_AFTER_SECS: u64 = 3;
/// Seconds kept open at most; a report further ahead closes the oldest. Bounds memory
/// whatever a worker's `elapsed` says.
pub const MAX_OPEN_SECONDS: usize = 8;
/// Workers kept apart in the series (`Assign.weights` has at most this many entries).
const MAX_WORKERS: usize = 10_000;
/// Workers' rows kept, all workers together. A row costs the controller ~0.8 KB of memory
/// (the row, its status map, the series' spare capacity; more as JSON): measured at 1000
/// workers, 100,000 rows held 75 MiB of the controller's 285 MiB, a third of its 256 MiB goal
/// (docs/benchmarks.md, "Controller at scale"). 25,000 keeps ~20 MB: every row of 10 workers
/// for 40 minutes, of 100 for 250 seconds, of 1000 for 25; the operator's stored run data
/// drops per-worker series before the fleet's when they do not fit anyway. A run whose
/// every worker's rows could pass it keeps none ([`FleetSeries::for_length`]); past it
/// otherwise (a run longer than planned) the workers' rows stop, each worker's series then
/// ending at about the same second. [`FleetSeriesOutput::workers_truncated`] says so; the
/// fleet's rows, one per second, are always kept.
pub const MAX_WORKER_ROWS: usize = 25_000;

/// The second a report stamped `elapsed` since the common start belongs to (1-based: second
/// `k` is `(k-1, k]`). Reports are due at whole seconds and arrive up to a few milliseconds
/// late; the final report may come at any time, and a tail shorter than [`MIN_TAIL_SECS`]
/// belongs to the second before, as a single process's series folds it.
pub fn second_of(elapsed: Duration) -> u64 {
    let shifted = elapsed.as_secs_f64() - MIN_TAIL_SECS;
    if shifted.is_finite() && shifted > 0.0 {
        // `ceil` of a finite positive f64 below 2^64 fits; larger stamps saturate.
        (shifted.ceil() as u64).max(1)
    } else {
        1
    }
}

/// The series a fleet run ends with: the fleet's and each worker's (index order), with the
/// common start on the wall clock.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetSeriesOutput {
    pub fleet: Series,
    /// One per worker, index order (a worker that never reported has no rows).
    pub workers: Vec<Series>,
    /// The common start, Unix milliseconds (`None` when the fleet never started).
    pub started_unix_ms: Option<u64>,
    /// The workers' rows reached [`MAX_WORKER_ROWS`] (all workers together) and later ones
    /// were not kept: each worker's series in `workers` ends early, at about the same second;
    /// or, for a run whose every worker's rows could not fit (`FleetSeries::for_length`),
    /// none were kept. `fleet` is whole either way.
    #[serde(default)]
    pub workers_truncated: bool,
}

/// One worker's part.
#[derive(Debug)]
struct WorkerTrack {
    /// Its own series, fed the merged deltas of each whole second; `None` once the workers'
    /// rows reached their bound (its rows so far are then in `stopped`). It keeps no delta
    /// for a tail fold: its rows end at a whole second `p` before the second of its latest
    /// report, `second_of(elapsed) > p`, so `elapsed - p >= MIN_TAIL_SECS` and its last row
    /// (ending at `elapsed`) is never short.
    series: Option<SeriesBuilder>,
    /// Its rows when the workers' rows stopped.
    stopped: Series,
    /// What it reported since the last row pushed into `series` (`None`: nothing).
    pending: Option<Snapshot>,
    /// Seconds already pushed into `series`.
    pushed: u64,
    /// Its latest report's stamp.
    elapsed: Duration,
    reported: bool,
}

/// Builds the fleet's series from its workers' reports as they arrive (see the module doc).
#[derive(Debug)]
pub struct FleetSeries {
    layout: Layout,
    fleet: SeriesBuilder,
    /// The newest rate-limit headers of the closed seconds (by `at_unix_ms`, as a merge of
    /// the workers' snapshots keeps them): what the fleet's rows show.
    server_limits: Option<ServerLimitHeaders>,
    /// Seconds closed into `fleet`.
    closed: u64,
    /// The merged deltas of seconds `closed + 1`, `closed + 2`, ...
    open: VecDeque<Snapshot>,
    workers: Vec<WorkerTrack>,
    /// Rows pushed into the workers' series so far.
    worker_rows: usize,
    /// [`MAX_WORKER_ROWS`] (smaller in tests).
    max_worker_rows: usize,
    workers_truncated: bool,
    started_unix_ms: Option<u64>,
}

impl FleetSeries {
    /// A series of `workers` workers running a plan laid out as `layout`.
    pub fn new(layout: &Layout, planned: PlannedRate, workers: usize) -> Self {
        let workers = workers.min(MAX_WORKERS);
        Self {
            layout: layout.clone(),
            fleet: SeriesBuilder::new(layout, planned.clone()),
            server_limits: None,
            closed: 0,
            open: VecDeque::new(),
            workers: (0..workers)
                .map(|_| WorkerTrack {
                    series: Some(SeriesBuilder::new(layout, planned.clone()).without_tail_fold()),
                    stopped: Series::default(),
                    pending: None,
                    pushed: 0,
                    elapsed: Duration::ZERO,
                    reported: false,
                })
                .collect(),
            worker_rows: 0,
            max_worker_rows: MAX_WORKER_ROWS,
            workers_truncated: false,
            started_unix_ms: None,
        }
    }

    /// The run lasts at most `longest` (`Plan::max_duration`). When every worker's rows for
    /// all of it could pass [`MAX_WORKER_ROWS`], none are kept from the start: a series of
    /// every worker that ends early tells little, and building it costs each worker's
    /// pending delta on top of the rows (measured at 1000 workers: 268 MiB peak and 233 MiB
    /// steady against 206 and 198 without them; docs/benchmarks.md, "Controller at scale").
    /// [`FleetSeriesOutput::workers_truncated`] says so; the fleet's rows are kept.
    pub fn for_length(mut self, longest: Duration) -> Self {
        // A row per second, the first and the last partial: whole seconds rounded up, plus one.
        let rows = longest
            .as_secs()
            .saturating_add(u64::from(longest.subsec_nanos() > 0))
            .saturating_add(1);
        let all = u64::try_from(self.workers.len())
            .unwrap_or(u64::MAX)
            .saturating_mul(rows);
        if all > self.max_worker_rows as u64 {
            self.stop_workers();
        }
        self
    }

    /// The common start on the wall clock (rows carry `start + t` as their `unix_ms`).
    pub fn set_started_unix_ms(&mut self, unix_ms: u64) {
        self.started_unix_ms = Some(unix_ms);
    }

    /// Seconds closed into the fleet's rows so far.
    pub fn closed_seconds(&self) -> u64 {
        self.closed
    }

    fn unix_ms_at(&self, secs: f64) -> u64 {
        let offset = if secs.is_finite() && secs > 0.0 {
            (secs * 1000.0) as u64
        } else {
            0
        };
        self.started_unix_ms.unwrap_or(0).saturating_add(offset)
    }

    /// Worker `index`'s report, stamped `elapsed` since the common start: `delta`, what it
    /// recorded since its previous report (all of it for its first). The caller computed the
    /// delta once, from a report it kept (newer than the one before, and continuing it). The
    /// caller bounds `elapsed` by its own clock (each second between the last one closed and
    /// this one becomes a row).
    pub fn report(&mut self, index: usize, elapsed: Duration, delta: &Snapshot) {
        if index >= self.workers.len() {
            tracing::warn!(worker = index, "series: no such worker; report left out");
            return;
        }
        let second = second_of(elapsed);
        // Only what the rows read is kept, in the open seconds and per worker.
        let delta = &row_part(delta);
        self.track(index, second, elapsed, delta);
        self.add(second, delta);
        // Close what every worker has had time to report.
        while self.closed + 1 + CLOSE_AFTER_SECS <= second && !self.open.is_empty() {
            self.close_one();
        }
    }

    /// The worker's own series: the seconds before this report's are final now, the first
    /// with what it reported since its last row, the others empty; `delta` waits for the
    /// report of a later second.
    fn track(&mut self, index: usize, second: u64, elapsed: Duration, delta: &Snapshot) {
        let start = self.started_unix_ms.unwrap_or(0);
        let Some(track) = self.workers.get_mut(index) else {
            return;
        };
        track.elapsed = track.elapsed.max(elapsed);
        track.reported = true;
        if self.workers_truncated {
            return;
        }
        let mut full = false;
        if let Some(series) = &mut track.series {
            while track.pushed + 1 < second {
                if self.worker_rows >= self.max_worker_rows {
                    full = true;
                    break;
                }
                track.pushed += 1;
                let at = Duration::from_secs(track.pushed);
                let unix_ms = start.saturating_add(track.pushed.saturating_mul(1000));
                let row = track
                    .pending
                    .take()
                    .unwrap_or_else(|| Snapshot::empty(&self.layout));
                series.push_delta(at, unix_ms, row, None);
                self.worker_rows += 1;
            }
        }
        if full {
            self.stop_workers();
            return;
        }
        match &mut track.pending {
            None => track.pending = Some(delta.clone()),
            Some(pending) => {
                if let Err(e) = pending.merge_in_place(delta) {
                    tracing::warn!(error = %e, "series: a worker's report cannot be merged; left out of its rows");
                } else if delta.server_limits.is_some() {
                    // One worker's latest headers are those of its latest report, as in its
                    // cumulative snapshot (a merge would keep the newest stamp).
                    pending.server_limits.clone_from(&delta.server_limits);
                }
            }
        }
    }

    /// The workers' rows reached their bound: keep those so far, drop what would make more.
    fn stop_workers(&mut self) {
        self.workers_truncated = true;
        for track in &mut self.workers {
            track.pending = None;
            if let Some(series) = track.series.take() {
                track.stopped = series.into_series();
            }
        }
    }

    /// Add a delta to second `second`'s bucket (or the oldest open one if that second is
    /// closed already), opening seconds as needed and closing the oldest past the bound.
    fn add(&mut self, second: u64, delta: &Snapshot) {
        let second = second.max(self.closed + 1);
        let mut slot = usize::try_from(second - self.closed - 1).unwrap_or(usize::MAX);
        while slot >= MAX_OPEN_SECONDS {
            // Far ahead of the open seconds: close the oldest (empty ones included).
            if self.open.is_empty() {
                // Nothing open: skip the empty seconds in one row each.
                self.open.push_back(Snapshot::empty(&self.layout));
            }
            self.close_one();
            slot = usize::try_from(second - self.closed - 1).unwrap_or(usize::MAX);
        }
        while self.open.len() <= slot {
            self.open.push_back(Snapshot::empty(&self.layout));
        }
        if let Err(e) = self.open[slot].merge_in_place(delta) {
            tracing::warn!(error = %e, "series: a worker's second cannot be merged; left out");
        }
    }

    /// Close the oldest open second into the fleet's rows.
    fn close_one(&mut self) {
        let Some(bucket) = self.open.pop_front() else {
            return;
        };
        self.closed += 1;
        let at = self.closed as f64;
        let unix_ms = self.unix_ms_at(at);
        let bucket = self.with_fleet_headers(bucket);
        self.fleet
            .push_delta(Duration::from_secs_f64(at), unix_ms, bucket, None);
    }

    /// `bucket` with the newest headers of the fleet so far: a merge of all the seconds up to
    /// this one would have them (newer by `at_unix_ms`, the first of equals).
    fn with_fleet_headers(&mut self, mut bucket: Snapshot) -> Snapshot {
        ServerLimitHeaders::keep_newest(&mut self.server_limits, &bucket.server_limits);
        bucket.server_limits.clone_from(&self.server_limits);
        bucket
    }

    /// The series, the fleet's last row ending at `end` since the common start (the run's
    /// length: its longest worker's), each worker's at its last report.
    pub fn finish(mut self, end: Duration) -> FleetSeriesOutput {
        while self.open.len() > 1 {
            self.close_one();
        }
        let last = self
            .open
            .pop_front()
            .unwrap_or_else(|| Snapshot::empty(&self.layout));
        let last = self.with_fleet_headers(last);
        let end_secs = end.as_secs_f64();
        let end_unix_ms = self.unix_ms_at(end_secs);
        let fleet = self.fleet.finish_delta(end, end_unix_ms, last, None);
        let started_unix_ms = self.started_unix_ms;
        let mut worker_rows = self.worker_rows;
        let mut workers_truncated = self.workers_truncated;
        let layout = self.layout;
        let workers = self
            .workers
            .into_iter()
            .map(|w| {
                let Some(series) = w.series.filter(|_| w.reported) else {
                    return w.stopped;
                };
                // The last row may be a row of its own.
                if worker_rows >= self.max_worker_rows {
                    workers_truncated = true;
                    return series.into_series();
                }
                worker_rows += 1;
                let at = w.elapsed.as_secs_f64();
                let unix_ms = started_unix_ms
                    .unwrap_or(0)
                    .saturating_add((at * 1000.0) as u64);
                let tail = w.pending.unwrap_or_else(|| Snapshot::empty(&layout));
                series.finish_delta(w.elapsed, unix_ms, tail, None)
            })
            .collect();
        FleetSeriesOutput {
            fleet,
            workers,
            started_unix_ms,
            workers_truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacer_stats::{Attempt, Recorder, RequestOutcome, ScenarioLayout, ServerLimitHeaders};
    use rand::Rng as _;
    use std::collections::VecDeque;

    fn layout() -> Layout {
        Layout {
            scenarios: vec![ScenarioLayout {
                name: "s".into(),
                requests: vec!["r".into()],
            }],
        }
    }

    fn hit(rec: &Recorder, n: u64) {
        for _ in 0..n {
            rec.record_attempt(
                0,
                0,
                &Attempt {
                    service_time: Duration::from_millis(5),
                    status: Some(200),
                    ..Default::default()
                },
            );
            rec.record_request(
                0,
                0,
                &RequestOutcome {
                    duration: Duration::from_millis(5),
                    attempts: 1,
                    ..Default::default()
                },
            );
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// What the controller does with each kept report: its delta against the worker's
    /// previous one, computed once, from the cumulative snapshots the caller keeps (`last`). A
    /// report that does not continue the previous one is refused, as the controller does.
    struct Feed {
        series: FleetSeries,
        last: Vec<Option<Snapshot>>,
    }

    impl Feed {
        fn new(series: FleetSeries, workers: usize) -> Self {
            Feed {
                series,
                last: vec![None; workers + 8],
            }
        }

        fn report(&mut self, i: usize, at: Duration, snap: Snapshot) {
            let delta = match &self.last[i] {
                Some(p) => match snap.delta_continuing(p) {
                    Ok(d) => d,
                    Err(_) => return,
                },
                None => snap.clone(),
            };
            self.series.report(i, at, &delta);
            self.last[i] = Some(snap);
        }

        /// Two workers (0 and 1) of `layout` each second for 6 seconds, `hits` requests each
        /// (worker 0's report 5 ms after the second, worker 1's 9 ms).
        fn two_workers_for_six_seconds(&mut self, layout: &Layout, hits: (u64, u64)) {
            let (a, b) = (Recorder::new(layout.clone()), Recorder::new(layout.clone()));
            for k in 1..=6u64 {
                hit(&a, hits.0);
                hit(&b, hits.1);
                self.report(0, ms(k * 1000 + 5), a.snapshot());
                self.report(1, ms(k * 1000 + 9), b.snapshot());
            }
        }

        fn finish(self, end: Duration) -> FleetSeriesOutput {
            self.series.finish(end)
        }
    }

    #[test]
    fn reports_land_in_the_second_they_close() {
        assert_eq!(second_of(Duration::ZERO), 1);
        assert_eq!(second_of(ms(1_003)), 1);
        assert_eq!(second_of(ms(1_240)), 1);
        assert_eq!(second_of(ms(1_300)), 2);
        assert_eq!(second_of(ms(4_050)), 4);
        assert_eq!(second_of(Duration::MAX), u64::MAX);
    }

    /// Two workers of 5 a second each, reporting at whole seconds a few ms late, one of them
    /// always late by half a report: the fleet's rows are 10 a second, as one process's.
    #[test]
    fn two_workers_make_the_rows_of_one_process() {
        let layout = layout();
        let mut series = Feed::new(FleetSeries::new(&layout, PlannedRate::default(), 2), 2);
        series.series.set_started_unix_ms(1_000_000);
        let (a, b) = (Recorder::new(layout.clone()), Recorder::new(layout.clone()));
        for k in 1..=4u64 {
            hit(&a, 5);
            hit(&b, 5);
            series.report(0, ms(k * 1000 + 2), a.snapshot());
            series.report(1, ms(k * 1000 + 150), b.snapshot());
        }
        // The final reports, just after the end.
        series.report(0, ms(4_020), a.snapshot());
        series.report(1, ms(4_030), b.snapshot());
        let out = series.finish(ms(4_030));
        let rows: Vec<u64> = out.fleet.points.iter().map(|p| p.attempts).collect();
        assert_eq!(rows, vec![10, 10, 10, 10]);
        assert_eq!(out.fleet.points[0].unix_ms, 1_001_000);
        let last = out.fleet.points.last().unwrap();
        assert!((last.elapsed_secs - 4.03).abs() < 1e-9);
        for w in &out.workers {
            let rows: Vec<u64> = w.points.iter().map(|p| p.attempts).collect();
            assert_eq!(rows, vec![5, 5, 5, 5]);
        }
        // Row by row, the fleet's is the sum of the workers'.
        for (i, p) in out.fleet.points.iter().enumerate() {
            let sum: u64 = out.workers.iter().map(|w| w.points[i].attempts).sum();
            assert_eq!(p.attempts, sum, "row {}", i + 1);
        }
        assert_eq!(out.started_unix_ms, Some(1_000_000));
    }

    #[test]
    fn a_missed_report_leaves_a_gap_and_nothing_is_lost() {
        let layout = layout();
        let mut series = Feed::new(FleetSeries::new(&layout, PlannedRate::default(), 1), 1);
        let rec = Recorder::new(layout.clone());
        hit(&rec, 3);
        series.report(0, ms(1_001), rec.snapshot());
        hit(&rec, 7);
        // Second 2's report never came; second 3's has both.
        series.report(0, ms(3_001), rec.snapshot());
        let out = series.finish(ms(3_001));
        let rows: Vec<u64> = out.fleet.points.iter().map(|p| p.attempts).collect();
        assert_eq!(rows, vec![3, 0, 7]);
        assert_eq!(out.workers[0].points.len(), 3);
    }

    #[test]
    fn a_report_far_ahead_closes_the_oldest_seconds_and_counts_everything() {
        let layout = layout();
        let mut series = Feed::new(FleetSeries::new(&layout, PlannedRate::default(), 2), 2);
        let rec = Recorder::new(layout.clone());
        hit(&rec, 2);
        series.report(0, ms(1_000), rec.snapshot());
        hit(&rec, 2);
        series.report(0, ms(100_000), rec.snapshot());
        // A report for a second closed long ago counts in the oldest open one.
        let other = Recorder::new(layout.clone());
        hit(&other, 5);
        series.report(1, ms(1_000), other.snapshot());
        assert!(series.series.open.len() <= MAX_OPEN_SECONDS);
        let out = series.finish(ms(100_000));
        let total: u64 = out.fleet.points.iter().map(|p| p.attempts).sum();
        assert_eq!(total, 9);
        assert_eq!(out.fleet.points.len(), 100);
    }

    #[test]
    fn out_of_range_workers_and_foreign_snapshots_change_nothing() {
        let layout = layout();
        let mut series = Feed::new(FleetSeries::new(&layout, PlannedRate::default(), 1), 1);
        let rec = Recorder::new(layout.clone());
        hit(&rec, 4);
        series.report(7, ms(1_000), rec.snapshot());
        series.report(0, ms(1_000), rec.snapshot());
        // A restarted recorder: fewer counts than before.
        let fresh = Recorder::new(layout.clone());
        hit(&fresh, 1);
        series.report(0, ms(2_000), fresh.snapshot());
        let out = series.finish(ms(2_000));
        let total: u64 = out.fleet.points.iter().map(|p| p.attempts).sum();
        assert_eq!(total, 4);
    }

    /// A seeded random source, so a failing seed can be replayed.
    type Rng = rand::rngs::StdRng;

    /// Random traffic for one second of one worker: statuses, durations, 429s with a
    /// Retry-After, now and then the server's rate-limit headers.
    fn traffic(rec: &Recorder, rng: &mut Rng, at_unix_ms: u64) {
        for _ in 0..rng.random_range(0..12u64) {
            let status = match rng.random_range(0..10u64) {
                0 | 1 => 429,
                2 => 503,
                _ => 200,
            };
            let ms = 1 + rng.random_range(0..400u64);
            rec.record_attempt(
                0,
                0,
                &Attempt {
                    service_time: Duration::from_millis(ms),
                    status: Some(status),
                    retry_after: (status == 429)
                        .then(|| Duration::from_secs(1 + rng.random_range(0..4u64))),
                    ..Default::default()
                },
            );
            rec.record_request(
                0,
                0,
                &RequestOutcome {
                    duration: Duration::from_millis(ms + rng.random_range(0..50u64)),
                    attempts: 1,
                    ..Default::default()
                },
            );
        }
        if rng.random_range(0..3u64) == 0 {
            rec.record_server_limits(ServerLimitHeaders {
                // Stamps may tie or go back (another clock, a late response).
                at_unix_ms: at_unix_ms.saturating_sub(rng.random_range(0..3u64) * 700),
                source: "x-ratelimit".into(),
                limit: Some(100),
                remaining: Some(rng.random_range(0..100u64)),
                ..Default::default()
            });
        }
    }

    /// The series as the code computed it before it was fed deltas: each worker's series from
    /// its cumulative snapshots, the fleet's from the cumulative total of its closed seconds.
    struct Reference {
        layout: Layout,
        fleet: SeriesBuilder,
        closed_total: Snapshot,
        closed: u64,
        open: VecDeque<Snapshot>,
        /// Per worker: its series, seconds pushed, latest stamp, latest snapshot.
        workers: Vec<(SeriesBuilder, u64, Duration, Option<Snapshot>)>,
        start: u64,
    }

    impl Reference {
        fn new(layout: &Layout, workers: usize, start: u64) -> Self {
            Reference {
                layout: layout.clone(),
                fleet: SeriesBuilder::new(layout, PlannedRate::default()),
                closed_total: Snapshot::empty(layout),
                closed: 0,
                open: VecDeque::new(),
                workers: (0..workers)
                    .map(|_| {
                        let b = SeriesBuilder::new(layout, PlannedRate::default());
                        (b, 0, Duration::ZERO, None)
                    })
                    .collect(),
                start,
            }
        }

        fn report(&mut self, i: usize, elapsed: Duration, snap: Snapshot) {
            let second = second_of(elapsed);
            let empty = Snapshot::empty(&self.layout);
            let (series, pushed, at, last) = &mut self.workers[i];
            let base = last.as_ref().unwrap_or(&empty);
            while *pushed + 1 < second {
                *pushed += 1;
                let unix_ms = self.start + *pushed * 1000;
                series.push(Duration::from_secs(*pushed), unix_ms, base, None);
            }
            let delta = snap.delta_continuing(base).unwrap();
            *at = (*at).max(elapsed);
            *last = Some(snap);
            let second = second.max(self.closed + 1);
            while second - self.closed > MAX_OPEN_SECONDS as u64 {
                if self.open.is_empty() {
                    self.open.push_back(Snapshot::empty(&self.layout));
                }
                self.close_one();
            }
            let slot = (second - self.closed - 1) as usize;
            while self.open.len() <= slot {
                self.open.push_back(Snapshot::empty(&self.layout));
            }
            self.open[slot].merge_in_place(&delta).unwrap();
            while self.closed + 1 + CLOSE_AFTER_SECS <= second && !self.open.is_empty() {
                self.close_one();
            }
        }

        fn close_one(&mut self) {
            let bucket = self.open.pop_front().unwrap();
            self.closed_total.merge_in_place(&bucket).unwrap();
            self.closed += 1;
            let unix_ms = self.start + self.closed * 1000;
            let at = Duration::from_secs(self.closed);
            self.fleet.push(at, unix_ms, &self.closed_total, None);
        }

        fn finish(mut self, end: Duration) -> FleetSeriesOutput {
            while self.open.len() > 1 {
                self.close_one();
            }
            let mut total = self.closed_total.clone();
            if let Some(last) = self.open.pop_front() {
                total.merge(&last).unwrap();
            }
            let unix_ms = |at: Duration| self.start + (at.as_secs_f64() * 1000.0) as u64;
            let fleet = self.fleet.finish(end, unix_ms(end), &total, None);
            let workers = self
                .workers
                .into_iter()
                .map(|(series, _, at, last)| match last {
                    Some(last) => series.finish(at, unix_ms(at), &last, None),
                    None => Series::default(),
                })
                .collect();
            FleetSeriesOutput {
                fleet,
                workers,
                started_unix_ms: Some(self.start),
                workers_truncated: false,
            }
        }
    }

    /// Several workers reporting at whole seconds with jitter, some reports missed, some
    /// arriving late and out of order between workers, a short final tail: the rows from the
    /// deltas are those the cumulative snapshots made.
    #[test]
    fn delta_fed_rows_equal_the_cumulative_reference() {
        let layout = layout();
        let mut headers = false;
        for seed in 1..=24u64 {
            let mut rng = <Rng as rand::SeedableRng>::seed_from_u64(seed);
            let workers = 1 + rng.random_range(0..4u64) as usize;
            let seconds = 2 + rng.random_range(0..14u64);
            let start = 1_700_000_000_000;
            // (arrival, worker, stamp, cumulative snapshot), in the order they are taken.
            let mut reports = Vec::new();
            for w in 0..workers {
                let rec = Recorder::new(layout.clone());
                let mut arrival = 0u64;
                // A worker that joins late has no reports before.
                let first = 1 + rng.random_range(0..3u64).saturating_sub(1);
                for k in first..=seconds {
                    traffic(&rec, &mut rng, start + k * 1000);
                    if rng.random_range(0..6u64) == 0 && k < seconds {
                        continue; // a missed report: the next one has both seconds
                    }
                    let stamp = k * 1000 + rng.random_range(0..200u64);
                    arrival = arrival.max(stamp + rng.random_range(0..2500u64));
                    reports.push((arrival, w, stamp, rec.snapshot()));
                }
                // The final report, a short tail after the last whole second.
                traffic(&rec, &mut rng, start + seconds * 1000 + 100);
                let stamp = seconds * 1000 + rng.random_range(0..240u64);
                arrival = arrival.max(stamp);
                reports.push((arrival, w, stamp, rec.snapshot()));
            }
            reports.sort_by_key(|r| r.0);
            let end = ms(reports.iter().map(|r| r.2).max().unwrap_or(0));
            let mut fed = Feed::new(
                FleetSeries::new(&layout, PlannedRate::default(), workers),
                workers,
            );
            fed.series.set_started_unix_ms(start);
            let mut reference = Reference::new(&layout, workers, start);
            for (_, w, stamp, snap) in reports {
                reference.report(w, ms(stamp), snap.clone());
                fed.report(w, ms(stamp), snap);
            }
            // No delta is kept per worker for a tail fold (and none is needed).
            let tracks = &fed.series.workers;
            assert!(
                tracks
                    .iter()
                    .all(|w| w.series.as_ref().is_some_and(|b| !b.keeps_a_delta()))
            );
            let want = reference.finish(end);
            let got = fed.finish(end);
            assert!(!got.workers_truncated);
            assert_eq!(got.fleet, want.fleet, "seed {seed}: fleet");
            for (i, (g, w)) in got.workers.iter().zip(&want.workers).enumerate() {
                assert_eq!(g, w, "seed {seed}: worker {i}");
            }
            assert_eq!(got, want, "seed {seed}");
            headers |= got
                .fleet
                .points
                .iter()
                .any(|p| p.ratelimit_remaining.is_some());
        }
        assert!(headers, "some rows show the server's headers");
    }

    /// A run whose every worker's rows cannot fit the bound keeps none from the start (and
    /// no worker's pending delta); one whose rows fit keeps them all.
    #[test]
    fn worker_rows_are_left_out_when_the_run_cannot_fit_them() {
        let layout = layout();
        let run = |longest: Duration| {
            let mut fleet = FleetSeries::new(&layout, PlannedRate::default(), 2);
            fleet.max_worker_rows = 14;
            let mut series = Feed::new(fleet.for_length(longest), 2);
            series.two_workers_for_six_seconds(&layout, (2, 3));
            let s = &series.series;
            assert!(!s.workers_truncated || s.workers.iter().all(|w| w.pending.is_none()));
            series.finish(ms(6_009))
        };
        // 2 workers x (6 s + 1) = 14 rows: kept, all of them.
        let out = run(Duration::from_secs(6));
        assert!(!out.workers_truncated);
        assert_eq!(
            out.workers.iter().map(|w| w.points.len()).sum::<usize>(),
            12
        );
        // 6.5 s: 2 x 8 = 16 rows could be needed, over 14: none kept.
        let out = run(Duration::from_millis(6_500));
        assert!(out.workers_truncated);
        assert!(out.workers.iter().all(|w| w.points.is_empty()));
        let fleet: Vec<u64> = out.fleet.points.iter().map(|p| p.attempts).collect();
        assert_eq!(fleet, vec![5; 6], "the fleet's rows are whole");
    }

    /// Past the bound the workers' rows stop, all at about the same second, and the output
    /// says so; the fleet's rows are whole.
    #[test]
    fn worker_rows_are_bounded() {
        let layout = layout();
        let mut fleet = FleetSeries::new(&layout, PlannedRate::default(), 2);
        fleet.max_worker_rows = 5;
        let mut series = Feed::new(fleet, 2);
        series.two_workers_for_six_seconds(&layout, (2, 3));
        assert!(series.series.workers_truncated);
        assert!(series.series.workers.iter().all(|w| w.pending.is_none()));
        let out = series.finish(ms(6_009));
        assert!(out.workers_truncated);
        let rows: Vec<usize> = out.workers.iter().map(|w| w.points.len()).collect();
        assert_eq!(rows, vec![3, 2]);
        let fleet: Vec<u64> = out.fleet.points.iter().map(|p| p.attempts).collect();
        assert_eq!(fleet, vec![5; 6]);
        // The bound counts the last rows too; without it nothing is cut.
        let mut fleet = FleetSeries::new(&layout, PlannedRate::default(), 2);
        fleet.max_worker_rows = 11;
        let mut series = Feed::new(fleet, 2);
        series.two_workers_for_six_seconds(&layout, (1, 1));
        let out = series.finish(ms(6_009));
        assert!(out.workers_truncated, "12 rows for a bound of 11");
        assert_eq!(
            out.workers.iter().map(|w| w.points.len()).sum::<usize>(),
            11
        );
        let json = serde_json::to_string(&FleetSeriesOutput::default()).unwrap();
        let old = json.replace(",\"workers_truncated\":false", "");
        assert_ne!(old, json);
        let back: FleetSeriesOutput = serde_json::from_str(&old).unwrap();
        assert!(!back.workers_truncated, "absent in older output");
    }
}
