//! The incremental merge's property (issue 23, "How it is shown"): after any sequence of
//! reports (growing cumulative snapshots with histograms, ledgers and rate-limit headers),
//! stale and replayed reports, reconnects, losses, finishes, reports that do not continue
//! their worker's previous one, and workers whose histograms overflow the fleet's, the
//! fleet's running total made whole ([`Fleet::merged`]) equals a full merge of the latest
//! counted snapshots exactly (`==`), and the series' rows add up to the same totals.

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
    /// entries and headers stamped `at`) and reports.
    Report {
        w: usize,
        hits: u64,
        spread: u64,
        ledger: u64,
        at: u64,
    },
    /// Worker `w` sends its last report again (the same sequence number).
    Replay { w: usize },
    /// Worker `w` sends a report older than its last one.
    Stale { w: usize },
    /// Worker `w` reconnects and resumes (same recorder).
    Reconnect { w: usize },
    /// Worker `w` is lost (its last report is kept).
    Lose { w: usize },
    /// Worker `w` finishes with a final report.
    Finish { w: usize },
    /// Worker `w` sends counts that went down (another recorder's): refused.
    GoesDown { w: usize },
    /// Worker `w` sends a histogram the fleet total cannot carry: unmergeable.
    Overflow { w: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let w = 0..WORKERS;
    prop_oneof![
        6 => (w.clone(), 0..40u64, 1..5_000u64, 0..LEDGER_BURST, 0..2_000u64).prop_map(
            |(w, hits, spread, ledger, at)| Step::Report { w, hits, spread, ledger, at }
        ),
        1 => w.clone().prop_map(|w| Step::Replay { w }),
        1 => w.clone().prop_map(|w| Step::Stale { w }),
        1 => w.clone().prop_map(|w| Step::Reconnect { w }),
        1 => w.clone().prop_map(|w| Step::Lose { w }),
        1 => w.clone().prop_map(|w| Step::Finish { w }),
        1 => w.clone().prop_map(|w| Step::GoesDown { w }),
        1 => w.prop_map(|w| Step::Overflow { w }),
    ]
}

/// A worker as the test drives it: its recorder and what it sent.
struct Sim {
    rec: Recorder,
    seq: u64,
    /// Every report sent, by sequence number - 1.
    sent: Vec<Snapshot>,
    /// Unique correlation ids (ledger keys never tie).
    next_id: u64,
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

fn decoded(seq: u64, snapshot: Snapshot) -> Decoded {
    Decoded {
        seq,
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
    let now = Instant::now();
    let mut f = inner.fleet.lock();
    let mut sims: Vec<Sim> = (0..WORKERS)
        .map(|_| Sim {
            rec: Recorder::new(inner.layout.clone()),
            seq: 0,
            sent: Vec::new(),
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
    // Whether any worker became unmergeable after one of its reports was counted (its
    // earlier deltas stay in the series' rows, which cannot take them back).
    let mut counted_then_refused = false;
    for s in steps {
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
                sim.seq += 1;
                let snap = sim.rec.snapshot();
                sim.sent.push(snap.clone());
                f.accept_report(w as u32, decoded(sim.seq, snap));
            }
            Step::Replay { w } => {
                let sim = &sims[w];
                if let Some(last) = sim.sent.last() {
                    prop_assert!(!f.accept_report(w as u32, decoded(sim.seq, last.clone())));
                }
            }
            Step::Stale { w } => {
                let sim = &sims[w];
                if sim.seq >= 2 {
                    let older = sim.sent[sim.sent.len() - 2].clone();
                    prop_assert!(!f.accept_report(w as u32, decoded(sim.seq - 1, older)));
                }
            }
            Step::Reconnect { w } => {
                if f.slots[w].state == WorkerState::Running || f.slots[w].state == WorkerState::Lost
                {
                    let (tx, _rx) = mpsc::channel(64);
                    conn_id += 1;
                    let hello = resuming_hello(w, sims[w].seq * 1_000_000);
                    f.admit("t1", &hello, Conn { id: conn_id, tx }, now)
                        .expect("a running or lost worker resumes");
                }
            }
            Step::Lose { w } => {
                if f.slots[w].state == WorkerState::Running {
                    f.slots[w].state = WorkerState::Lost;
                    f.slots[w].conn = None;
                }
            }
            Step::Finish { w } => {
                if f.slots[w].state == WorkerState::Running {
                    let sim = &mut sims[w];
                    sim.seq += 1;
                    let snap = sim.rec.snapshot();
                    sim.sent.push(snap.clone());
                    f.finish(w as u32, Some(decoded(sim.seq, snap)), false, None);
                }
            }
            Step::GoesDown { w } => {
                if f.slots[w].snapshot.is_some() && !f.slots[w].unmergeable {
                    let before = f.slots[w].snapshot.clone();
                    // Another recorder's numbers, below what the worker reported; the
                    // worker's own next report takes the same sequence number.
                    let fresh = Snapshot::empty(&inner.layout);
                    let went_down = before
                        .as_ref()
                        .is_some_and(|b| fresh.delta_continuing(b).is_err());
                    let kept = f.accept_report(w as u32, decoded(sims[w].seq + 1, fresh));
                    prop_assert_eq!(kept, !went_down);
                    if went_down {
                        prop_assert_eq!(&f.slots[w].snapshot, &before, "the previous report stays");
                    } else {
                        // Nothing was reported yet: the empty one is as good.
                        sims[w].seq += 1;
                        sims[w].sent.push(Snapshot::empty(&inner.layout));
                    }
                }
            }
            Step::Overflow { w } => {
                if !f.slots[w].unmergeable {
                    let sim = &mut sims[w];
                    // The worker's own numbers plus 3 x 2^60 samples: twice makes the total
                    // overflow (a first time may fit).
                    let mut snap = sim.rec.snapshot();
                    if snap.merge(&overflowing(&inner.layout)).is_ok() {
                        sim.seq += 1;
                        let had = f.slots[w].snapshot.is_some();
                        let kept = f.accept_report(w as u32, decoded(sim.seq, snap.clone()));
                        sim.sent.push(snap);
                        if f.slots[w].unmergeable {
                            prop_assert_eq!(f.slots[w].state, WorkerState::Failed);
                            let reason = f.slots[w].reason.clone().unwrap_or_default();
                            prop_assert!(reason.contains("cannot be merged"), "{}", reason);
                            counted_then_refused |= had;
                        }
                        let _ = kept;
                    }
                }
            }
        }
        // The property, after every step.
        let merged = f.merged(inner);
        let full = f.full_merge(inner);
        prop_assert!(*merged == full, "running total != full merge after {:?}", s);
        // Every worker's row shows its latest snapshot's counters.
        for slot in &f.slots {
            let expect = slot
                .snapshot
                .as_ref()
                .map(WorkerTotals::of)
                .unwrap_or_default();
            prop_assert_eq!(slot.totals, expect);
        }
    }
    let out = f.outcome(inner, Instant::now());
    prop_assert!(out.merged == f.full_merge(inner));
    if !counted_then_refused {
        prop_assert_eq!(series_attempts(&out.series), out.merged.total().attempts);
        let rows: u64 = out.series.fleet.points.iter().map(|p| p.requests).sum();
        prop_assert_eq!(rows, out.merged.total().requests);
        // Each worker's own rows add up to its counted snapshot.
        for (i, s) in out.worker_snapshots.iter().enumerate() {
            let counted = !f.slots[i].unmergeable;
            if let (Some(snap), true) = (s, counted) {
                let rows: u64 = out.series.workers[i]
                    .points
                    .iter()
                    .map(|p| p.attempts)
                    .sum();
                prop_assert_eq!(rows, snap.total().attempts, "worker {}", i);
            }
        }
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

/// Bytes of histogram counts one snapshot holds (8 per counts-array entry; the rest of a
/// snapshot is small beside them).
fn hist_bytes(s: &Snapshot) -> usize {
    let mut n = 0;
    for sc in &s.scenarios {
        n += sc.stats.iteration_duration.histogram().distinct_values();
        for r in &sc.requests {
            let st = &r.stats;
            for h in [
                &st.retry_after_ms,
                &st.duration,
                &st.service_time,
                &st.limiter_wait,
                &st.paused,
                &st.backoff,
                &st.send_lag,
            ] {
                n += h.histogram().distinct_values();
            }
        }
    }
    n * 8
}

/// The memory estimate behind docs/benchmarks.md's controller figures: one worker's
/// cumulative snapshot of 3 scenarios x 10 requests after 10 minutes at 5 requests a second
/// per request (latencies 5 ms to 2 s, 1 in 10 throttled with a Retry-After), and what the
/// controller keeps of it per worker (`cargo test -p pacer-controller --lib
/// per_worker_memory -- --nocapture` prints it). Asserts only that the estimate is sane.
#[test]
fn per_worker_memory() {
    use pacer_stats::{Layout, ScenarioLayout};
    let layout = Layout {
        scenarios: (0..3)
            .map(|s| ScenarioLayout {
                name: format!("s{s}"),
                requests: (0..10).map(|r| format!("r{r}")).collect(),
            })
            .collect(),
    };
    let rec = Recorder::new(layout.clone());
    let empty = hist_bytes(&Snapshot::empty(&layout));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for k in 0..(600 * 5) {
        for s in 0..3 {
            for r in 0..10 {
                // xorshift: a spread of latencies, log-uniform from 5 ms to ~2 s.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let us = 5_000u64 << (x % 9);
                let us = us + x % us;
                let throttled = (k + r) % 10 == 0;
                rec.record_attempt(
                    s,
                    r,
                    &Attempt {
                        service_time: Duration::from_micros(us),
                        status: Some(if throttled { 429 } else { 200 }),
                        retry_after: throttled.then(|| Duration::from_millis(1 + x % 2_000)),
                        ..Default::default()
                    },
                );
                rec.record_request(
                    s,
                    r,
                    &RequestOutcome {
                        duration: Duration::from_micros(us + x % 1_000),
                        send_lag: Some(Duration::from_micros(x % 3_000)),
                        attempts: 1,
                        failed: throttled,
                        ..Default::default()
                    },
                );
            }
        }
    }
    let full = hist_bytes(&rec.snapshot());
    let json = rec.snapshot().to_json().len();
    eprintln!(
        "per worker: empty snapshot {} KiB of histogram counts, after 10 min {} KiB (wire JSON {} KiB); \
         the controller keeps 1 copy per worker in its slot and 2 in the worker's series builder \
         (before: 4): at 1000 workers {} MiB",
        empty / 1024,
        full / 1024,
        json / 1024,
        3 * full * 1000 / (1 << 20)
    );
    assert!(full >= empty && empty > 0);
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
