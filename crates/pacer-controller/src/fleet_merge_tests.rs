//! The incremental merge's property (issue 23, "How it is shown"), for delta reports
//! (protocol 2): after any sequence of reports, stale and replayed reports, reports lost with
//! a broken stream and the reconnect that continues from the report counted last, losses,
//! finishes, reports that continue the wrong one, and workers whose histograms overflow the
//! fleet's, the fleet's running total made whole ([`Fleet::merged`]) equals a merge of every
//! worker's CUMULATIVE snapshot as of its last counted report exactly (`==`): the deltas
//! rebuild the workers' state, nothing lost, nothing twice. The series' rows add up to the
//! same totals, and a finished worker's own results are its cumulative snapshot.

use std::sync::Arc;
use std::time::Duration;

use pacer_plan::Plan;
use pacer_stats::{
    Attempt, Hist, LedgerCause, LedgerEntry, Recorder, RequestOutcome, ServerLimitHeaders, Snapshot,
};
use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::{ControllerConfig, Coordinator};

/// Workers in each generated fleet.
const WORKERS: usize = 4;
/// Each worker's ledger gets this many entries at most per report: with the reports a case
/// makes, some workers pass the ledger's bound ([`pacer_stats::ledger::LEDGER_CAPACITY`]),
/// so entries leave their ledger as later ones with smaller keys arrive.
const LEDGER_BURST: u64 = 700;

fn plan() -> Arc<Plan> {
    let text = "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: constant-vus, vus: 1, duration: 1s, requests: [{name: a, path: /a}, {name: b, path: /b}]}\n  - {name: t, executor: constant-vus, vus: 1, duration: 1s, requests: [{name: c, path: /c}]}\n";
    Arc::new(pacer_plan::load_str(text, "plan.yaml", &Default::default()).expect("plan"))
}

/// One step of a generated run.
#[derive(Clone, Debug)]
enum Step {
    /// Worker `w` records `hits` requests (latencies from `spread`, some 429s with ledger
    /// entries and headers stamped `at`) and reports what it recorded since its last report.
    Report {
        w: usize,
        hits: u64,
        spread: u64,
        ledger: u64,
        at: u64,
    },
    /// Worker `w` records and sends a report that never arrives (its stream broke).
    Drop { w: usize, hits: u64 },
    /// Worker `w` sends its last delivered report again (the same sequence number).
    Replay { w: usize },
    /// Worker `w` sends a report older than its last one.
    Stale { w: usize },
    /// Worker `w` reconnects and resumes from the report the controller counted last.
    Reconnect { w: usize },
    /// Worker `w` is lost (its reports counted stay).
    Lose { w: usize },
    /// Worker `w` finishes with a final report and its cumulative results.
    Finish { w: usize },
    /// Worker `w` sends a report continuing one the controller did not count last.
    Skips { w: usize },
    /// Worker `w` sends a histogram the fleet total cannot carry: unmergeable.
    Overflow { w: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let w = 0..WORKERS;
    prop_oneof![
        6 => (w.clone(), 0..40u64, 1..5_000u64, 0..LEDGER_BURST, 0..2_000u64).prop_map(
            |(w, hits, spread, ledger, at)| Step::Report { w, hits, spread, ledger, at }
        ),
        1 => (w.clone(), 0..40u64).prop_map(|(w, hits)| Step::Drop { w, hits }),
        1 => w.clone().prop_map(|w| Step::Replay { w }),
        1 => w.clone().prop_map(|w| Step::Stale { w }),
        2 => w.clone().prop_map(|w| Step::Reconnect { w }),
        1 => w.clone().prop_map(|w| Step::Lose { w }),
        1 => w.clone().prop_map(|w| Step::Finish { w }),
        1 => w.clone().prop_map(|w| Step::Skips { w }),
        1 => w.prop_map(|w| Step::Overflow { w }),
    ]
}

/// A worker as the test drives it: its recorder and what it sent.
struct Sim {
    rec: Recorder,
    /// Added to every cumulative snapshot: what the recorder cannot record (an overflowing
    /// histogram that was counted once).
    extra: Option<Snapshot>,
    seq: u64,
    /// The cumulative snapshot of every report sent, by sequence number - 1.
    sent: Vec<Snapshot>,
    /// The report the next one continues (0: none, the next one is cumulative).
    base: u64,
    /// The last report that reached the controller, as sent.
    delivered: Option<(u64, u64, Snapshot)>,
    /// Unique correlation ids (ledger keys never tie).
    next_id: u64,
}

impl Sim {
    /// The worker's results now.
    fn cumulative(&self) -> Snapshot {
        let mut now = self.rec.snapshot();
        if let Some(x) = &self.extra {
            now.merge(x).expect("the extra fits one worker");
        }
        now
    }

    /// The worker's cumulative results as of report `seq` (0: nothing).
    fn at(&self, seq: u64, layout: &pacer_stats::Layout) -> Snapshot {
        match seq {
            0 => Snapshot::empty(layout),
            k => self.sent[(k - 1) as usize].clone(),
        }
    }

    /// Its next report: `(seq, since_seq, delta)`, and it is remembered as sent.
    fn next_report(&mut self, layout: &pacer_stats::Layout) -> (u64, u64, Snapshot) {
        let now = self.cumulative();
        let delta = now.delta(&self.at(self.base, layout)).expect("a delta");
        self.seq += 1;
        self.sent.push(now);
        let since = self.base;
        self.base = self.seq;
        (self.seq, since, delta)
    }
}

fn record(sim: &mut Sim, w: usize, hits: u64, spread: u64, ledger: u64, at: u64) {
    for k in 0..hits {
        let (scenario, request) = if k % 3 == 2 {
            (1, 0)
        } else {
            (0, (k % 2) as usize)
        };
        let us = 1 + (k * 7919 + w as u64 * 104_729) % spread;
        let status = if k % 5 == 4 { 429 } else { 200 };
        sim.rec.record_attempt(
            scenario,
            request,
            &Attempt {
                service_time: Duration::from_micros(us),
                status: Some(status),
                retry_after: (status == 429).then(|| Duration::from_millis(us % 900)),
                ..Default::default()
            },
        );
        sim.rec.record_request(
            scenario,
            request,
            &RequestOutcome {
                duration: Duration::from_micros(us * 2),
                attempts: 1,
                failed: status != 200,
                ..Default::default()
            },
        );
    }
    for k in 0..ledger {
        sim.next_id += 1;
        sim.rec.record_ledger(LedgerEntry {
            // Later entries may sort before earlier ones: a full ledger then drops some.
            at_unix_ms: (at + k * 13) % 2_000,
            scenario: "s".into(),
            request: "a".into(),
            attempt: 1,
            cause: LedgerCause::Throttled,
            status: Some(429),
            error: None,
            correlation_id: Some(format!("w{w}-{}", sim.next_id)),
            server_request_id: None,
            server_request_id_header: None,
            server_limit: None,
            retry_after_ms: None,
            rate_limit: None,
            worker: None,
        });
    }
    if hits > 0 {
        // Stamps may go backwards (the recorder keeps the last) and tie across workers.
        sim.rec.record_server_limits(ServerLimitHeaders {
            at_unix_ms: at / 100,
            source: format!("w{w}"),
            remaining: Some(at),
            ..Default::default()
        });
        sim.rec
            .record_token_fetch("cred", Duration::from_micros(at % 7));
    }
}

fn decoded((seq, since_seq, snapshot): (u64, u64, Snapshot)) -> Decoded {
    Decoded {
        seq,
        since_seq,
        elapsed_us: seq * 1_000_000 + 5_000,
        snapshot,
        limits: Vec::new(),
    }
}

/// A snapshot whose first request's duration histogram holds 3 x 2^60 samples: alone it
/// fits the wire format (2^62), two of them do not.
fn overflowing(layout: &pacer_stats::Layout) -> Snapshot {
    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    h.record_n(1_000, 3 << 60).expect("recorded");
    let text = pacer_stats::hist::encode(&h).expect("encoded");
    let hist: Hist = serde_json::from_value(serde_json::json!(text)).expect("decoded");
    let mut s = Snapshot::empty(layout);
    s.scenarios[0].requests[0].stats.duration = hist;
    s.scenarios[0].requests[0].stats.attempts = 1;
    s
}

/// Sum of a counter over the fleet series' rows.
fn series_attempts(out: &pacer_report::FleetSeriesOutput) -> u64 {
    out.fleet.points.iter().map(|p| p.attempts).sum()
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let c = Coordinator::new(
        plan(),
        ControllerConfig::new("t1", "0123456789abcdef", WORKERS as u32),
    )
    .expect("coordinator");
    let inner = &c.inner;
    let layout = &inner.layout;
    let now = Instant::now();
    let mut f = inner.fleet.lock();
    let mut sims: Vec<Sim> = (0..WORKERS)
        .map(|_| Sim {
            rec: Recorder::new(layout.clone()),
            extra: None,
            seq: 0,
            sent: Vec::new(),
            base: 0,
            delivered: None,
            next_id: 0,
        })
        .collect();
    let mut conn_id = 100;
    for w in 0..WORKERS {
        let (tx, _rx) = mpsc::channel(64);
        conn_id += 1;
        let hello = resuming_hello(w, 1);
        f.admit("t1", &hello, Conn { id: conn_id, tx }, now)
            .expect("admitted");
    }
    for s in steps {
        let running = |f: &Fleet, w: usize| f.slots[w].state == WorkerState::Running;
        match *s {
            Step::Report {
                w,
                hits,
                spread,
                ledger,
                at,
            } => {
                let sim = &mut sims[w];
                record(sim, w, hits, spread, ledger, at);
                let r = sim.next_report(layout);
                // The session takes reports only from a running worker (session.rs).
                if running(&f, w) {
                    sim.delivered = Some(r.clone());
                    let continues = r.1 == f.counted_seq(w as u32);
                    let counted = f.accept_report(w as u32, decoded(r));
                    prop_assert_eq!(counted, continues);
                }
            }
            Step::Drop { w, hits } => {
                let sim = &mut sims[w];
                record(sim, w, hits, 100, 0, 7);
                sim.next_report(layout);
            }
            Step::Replay { w } => {
                if let Some(r) = sims[w].delivered.clone() {
                    prop_assert!(!f.accept_report(w as u32, decoded(r)));
                }
            }
            Step::Stale { w } => {
                let sim = &sims[w];
                let counted = f.counted_seq(w as u32);
                if counted >= 1 {
                    // A report numbered at or below the one counted, whatever it says.
                    let r = (counted, counted.saturating_sub(1), sim.at(counted, layout));
                    prop_assert!(!f.accept_report(w as u32, decoded(r)));
                }
            }
            Step::Reconnect { w } => {
                if matches!(f.slots[w].state, WorkerState::Running | WorkerState::Lost) {
                    let (tx, _rx) = mpsc::channel(64);
                    conn_id += 1;
                    let hello = resuming_hello(w, sims[w].seq * 1_000_000);
                    f.admit("t1", &hello, Conn { id: conn_id, tx }, now)
                        .expect("a running or lost worker resumes");
                    // The Assign says where to continue.
                    sims[w].base = f.counted_seq(w as u32);
                }
            }
            Step::Lose { w } => {
                if running(&f, w) {
                    f.slots[w].state = WorkerState::Lost;
                    f.slots[w].conn = None;
                }
            }
            Step::Finish { w } => {
                if running(&f, w) {
                    let sim = &mut sims[w];
                    let r = sim.next_report(layout);
                    let whole = sim.cumulative();
                    f.finish(w as u32, Some(decoded(r)), Some(whole), false, false, None);
                }
            }
            Step::Skips { w } => {
                if running(&f, w) {
                    let sim = &mut sims[w];
                    let counted = f.counted_seq(w as u32);
                    let (seq, _, delta) = sim.next_report(layout);
                    let wrong = counted + 1 + seq % 3;
                    prop_assert!(!f.accept_report(w as u32, decoded((seq, wrong, delta))));
                    prop_assert_eq!(f.slots[w].state, WorkerState::Failed);
                    let reason = f.slots[w].reason.clone().unwrap_or_default();
                    prop_assert!(reason.contains("the last one counted is"), "{}", reason);
                }
            }
            Step::Overflow { w } => {
                if running(&f, w) {
                    let sim = &mut sims[w];
                    // The worker's own numbers plus 3 x 2^60 samples: twice makes the total
                    // overflow (a first time may fit).
                    let mut extra = sim.extra.clone().unwrap_or_else(|| Snapshot::empty(layout));
                    let fits_one = extra.merge(&overflowing(layout)).is_ok()
                        && sim.rec.snapshot().merge(&extra).is_ok();
                    if fits_one {
                        sim.extra = Some(extra);
                        let r = sim.next_report(layout);
                        let continues = r.1 == f.counted_seq(w as u32);
                        let counted = f.accept_report(w as u32, decoded(r));
                        if continues && !counted {
                            prop_assert_eq!(f.slots[w].state, WorkerState::Failed);
                            let reason = f.slots[w].reason.clone().unwrap_or_default();
                            prop_assert!(reason.contains("cannot be merged"), "{}", reason);
                        }
                    }
                }
            }
        }
        // The property, after every step: the total is every worker's cumulative state as
        // of its last counted report.
        let merged = f.merged(inner);
        let mut expect = Snapshot::empty(layout);
        for (w, sim) in sims.iter().enumerate() {
            let counted = sim.at(f.counted_seq(w as u32), layout);
            prop_assert!(expect.merge(&counted).is_ok());
        }
        expect.canonicalize();
        prop_assert!(
            *merged == expect,
            "running total != the counted states after {:?}",
            s
        );
        prop_assert!(*merged == f.full_merge(inner));
        // Every worker's row shows its counted state's counters.
        for (w, slot) in f.slots.iter().enumerate() {
            let counted = sims[w].at(slot.seq, layout);
            prop_assert_eq!(slot.totals, WorkerTotals::of(&counted));
        }
    }
    let counted: Vec<u64> = (0..WORKERS as u32).map(|w| f.counted_seq(w)).collect();
    let finished: Vec<bool> = f
        .slots
        .iter()
        .map(|s| s.state == WorkerState::Finished)
        .collect();
    let out = f.outcome(inner, Instant::now());
    // A finished worker's own results are its cumulative state; others show none.
    for (w, detail) in out.worker_snapshots.iter().enumerate() {
        if finished[w] {
            let mut at = sims[w].at(counted[w], layout);
            at.canonicalize();
            prop_assert_eq!(detail.as_ref(), Some(&at), "worker {}", w);
        } else {
            prop_assert!(detail.is_none(), "worker {} did not finish", w);
        }
    }
    prop_assert_eq!(series_attempts(&out.series), out.merged.total().attempts);
    let rows: u64 = out.series.fleet.points.iter().map(|p| p.requests).sum();
    prop_assert_eq!(rows, out.merged.total().requests);
    // Each worker's own rows add up to its counted state.
    for (w, sim) in sims.iter().enumerate() {
        let rows: u64 = out.series.workers[w]
            .points
            .iter()
            .map(|p| p.attempts)
            .sum();
        prop_assert_eq!(
            rows,
            sim.at(counted[w], layout).total().attempts,
            "worker {}",
            w
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_running_total_equals_a_full_merge_of_the_latest_counted_snapshots(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        run(&steps)?;
    }
}

/// The ledger's bound is crossed and entries leave a worker's ledger as smaller ones come:
/// the total still equals the full merge (the case proptest may not always reach).
#[test]
fn a_full_ledger_that_drops_entries_still_merges_exactly() {
    let mut steps = Vec::new();
    for round in 0..4u64 {
        for w in 0..2 {
            steps.push(Step::Report {
                w,
                hits: 10,
                spread: 3_000,
                ledger: LEDGER_BURST,
                at: 1_900 - round * 400,
            });
        }
    }
    run(&steps).expect("exact");
}

/// A worker whose histograms overflow the fleet's is named, failed, and left out; the
/// others stay counted exactly.
#[test]
fn an_unmergeable_worker_is_named_and_left_out() {
    let steps = [
        Step::Report {
            w: 0,
            hits: 5,
            spread: 100,
            ledger: 0,
            at: 10,
        },
        Step::Overflow { w: 1 },
        Step::Overflow { w: 2 },
        Step::Report {
            w: 0,
            hits: 5,
            spread: 100,
            ledger: 0,
            at: 20,
        },
    ];
    run(&steps).expect("exact");
}

/// Worker `w`'s Hello resuming at `elapsed_us` of the test.
fn resuming_hello(w: usize, elapsed_us: u64) -> Hello {
    Hello {
        protocol_version: pacer_proto::PROTOCOL_VERSION,
        test_id: "t1".into(),
        worker_index: Some(w as u32),
        version: String::new(),
        session_token: String::new(),
        name: format!("w{w}"),
        resume: Some(pacer_proto::Resume {
            elapsed_us,
            finished: false,
        }),
        takes_served_budget: false,
    }
}
