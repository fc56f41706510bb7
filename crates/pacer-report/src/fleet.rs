//! The per-second series of a fleet, built from its workers' cumulative snapshots, each
//! stamped with the worker's time since the fleet's common start.
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
//! running fleet total) and hands it here with the worker's previous and new cumulative
//! snapshots, which it keeps anyway: this series keeps no copy of them.
//!
//! Per worker, the same reports make the worker's own series. Memory: the open seconds'
//! merged deltas (at most [`MAX_OPEN_SECONDS`]), each worker's series builder (which keeps
//! the cumulative snapshots its rows start from), and one row per second per worker and for
//! the fleet.

use std::collections::VecDeque;
use std::time::Duration;

use pacer_stats::{Layout, Snapshot};
use serde::{Deserialize, Serialize};

use crate::series::{MIN_TAIL_SECS, PlannedRate, Series, SeriesBuilder};

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
}

/// One worker's part.
#[derive(Debug)]
struct WorkerTrack {
    /// Its own series, fed its cumulative snapshot at each whole second.
    series: SeriesBuilder,
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
    /// The fleet's cumulative numbers at the end of the last closed second.
    closed_total: Snapshot,
    /// Seconds closed into `fleet`.
    closed: u64,
    /// The merged deltas of seconds `closed + 1`, `closed + 2`, ...
    open: VecDeque<Snapshot>,
    workers: Vec<WorkerTrack>,
    started_unix_ms: Option<u64>,
}

impl FleetSeries {
    /// A series of `workers` workers running a plan laid out as `layout`.
    pub fn new(layout: &Layout, planned: PlannedRate, workers: usize) -> Self {
        let workers = workers.min(MAX_WORKERS);
        Self {
            layout: layout.clone(),
            fleet: SeriesBuilder::new(layout, planned.clone()),
            closed_total: Snapshot::empty(layout),
            closed: 0,
            open: VecDeque::new(),
            workers: (0..workers)
                .map(|_| WorkerTrack {
                    series: SeriesBuilder::new(layout, planned.clone()),
                    pushed: 0,
                    elapsed: Duration::ZERO,
                    reported: false,
                })
                .collect(),
            started_unix_ms: None,
        }
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
    /// recorded since its `previous` report (`None`: this is its first, and `delta` is all of
    /// it). The caller computed the delta once,
    /// from a report it kept (newer than the one before, and continuing it). The caller
    /// bounds `elapsed` by its own clock (each second between the last one closed and this
    /// one becomes a row).
    pub fn report(
        &mut self,
        index: usize,
        elapsed: Duration,
        delta: &Snapshot,
        previous: Option<&Snapshot>,
    ) {
        let Some(track) = self.workers.get_mut(index) else {
            tracing::warn!(worker = index, "series: no such worker; report left out");
            return;
        };
        let second = second_of(elapsed);
        // The worker's own series: seconds before this report's are final now, at its
        // previous cumulative snapshot.
        if track.pushed + 1 < second {
            let empty;
            let base = match previous {
                Some(p) => p,
                None => {
                    empty = Snapshot::empty(&self.layout);
                    &empty
                }
            };
            while track.pushed + 1 < second {
                track.pushed += 1;
                let at = track.pushed as f64;
                let unix_ms = self
                    .started_unix_ms
                    .unwrap_or(0)
                    .saturating_add(track.pushed.saturating_mul(1000));
                track
                    .series
                    .push(Duration::from_secs_f64(at), unix_ms, base, None);
            }
        }
        track.elapsed = track.elapsed.max(elapsed);
        track.reported = true;
        self.add(second, delta);
        // Close what every worker has had time to report.
        while self.closed + 1 + CLOSE_AFTER_SECS <= second && !self.open.is_empty() {
            self.close_one();
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
        if let Err(e) = self.closed_total.merge_in_place(&bucket) {
            tracing::warn!(error = %e, "series: a second cannot be merged; left out");
        }
        self.closed += 1;
        let at = self.closed as f64;
        let unix_ms = self.unix_ms_at(at);
        self.fleet.push(
            Duration::from_secs_f64(at),
            unix_ms,
            &self.closed_total,
            None,
        );
    }

    /// The series, the fleet's last row ending at `end` since the common start (the run's
    /// length: its longest worker's), each worker's at its last report: `latest(i)` is worker
    /// `i`'s last cumulative snapshot handed to [`FleetSeries::report`] (the caller keeps it).
    pub fn finish<'a>(
        mut self,
        end: Duration,
        latest: impl Fn(usize) -> Option<&'a Snapshot>,
    ) -> FleetSeriesOutput {
        while self.open.len() > 1 {
            self.close_one();
        }
        let mut total = self.closed_total.clone();
        if let Some(last) = self.open.pop_front()
            && let Err(e) = total.merge(&last)
        {
            tracing::warn!(error = %e, "series: the last second cannot be merged; left out");
        }
        let end_secs = end.as_secs_f64();
        let end_unix_ms = self.unix_ms_at(end_secs);
        let fleet = self.fleet.finish(end, end_unix_ms, &total, None);
        let started_unix_ms = self.started_unix_ms;
        let workers = self
            .workers
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let Some(last) = latest(i).filter(|_| w.reported) else {
                    return Series::default();
                };
                let at = w.elapsed.as_secs_f64();
                let unix_ms = started_unix_ms
                    .unwrap_or(0)
                    .saturating_add((at * 1000.0) as u64);
                w.series.finish(w.elapsed, unix_ms, last, None)
            })
            .collect();
        FleetSeriesOutput {
            fleet,
            workers,
            started_unix_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacer_stats::{Attempt, Recorder, RequestOutcome, ScenarioLayout};

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
    /// previous one, computed once, the cumulative snapshots kept by the caller (`last`). A
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
            self.series.report(i, at, &delta, self.last[i].as_ref());
            self.last[i] = Some(snap);
        }

        fn finish(self, end: Duration) -> FleetSeriesOutput {
            let last = self.last;
            self.series
                .finish(end, |i| last.get(i).and_then(Option::as_ref))
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
}
