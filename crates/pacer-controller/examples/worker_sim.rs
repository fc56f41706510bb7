//! Worker simulator (a benchmark, not a test): N simulated workers in one process, each with its
//! own gRPC connection and `Coordinator.Session` stream to one `pacer controller`, speaking the
//! real protocol (Hello with the session token, Assign, Ready, Start, a Report every second at
//! whole seconds of the common start, Heartbeats, Finished; Stop/Abort obeyed) with
//! realistic snapshots: the plan's scenarios and requests (read from the Assign), lognormal
//! latencies with medians from 20 to 200 ms, a few 429s counted against the plan's limits
//! (`throttled_by_limit`), retries, a limits table (`LimitPacing`) in every report. It does what
//! `crates/pacer-limiter/examples/fleet_sim.rs` does for the limiter: show the controller's cost
//! at a thousand workers without a thousand processes (bench/controller-scale.sh).
//!
//!   cargo run --release -p pacer-controller --example worker_sim -- --print-plan --workers 1000 --seconds 60 > plan.yaml
//!   pacer controller --plan plan.yaml --expect-workers 1000 --insecure-plaintext \
//!     --session-token 0123456789abcdef0123 --test-id sim --metrics 127.0.0.1:9464 &
//!   cargo run --release -p pacer-controller --example worker_sim -- --workers 1000 --seconds 60 \
//!     --session-token 0123456789abcdef0123 --test-id sim --metrics 127.0.0.1:9464 --fail-at 50
//!
//! The operator's listener speaks the same protocol (pacer-operator's grpc.rs routes a stream by
//! its Hello's test id): point `--controller` at it with the LoadTest's test id and session
//! token. This simulator speaks plaintext only (the chart's listener uses TLS by default).
//!
//! What it measures itself (printed at the end, and as one `RESULT key=value ...` line):
//! - status latency (`--metrics`): every `--probe-every` seconds, the fleet's total of HTTP
//!   exchanges after that second's reports is known here exactly; `/metrics` (the controller's
//!   fleet total of the reports it counted) is polled every [`POLL_EVERY`] until its
//!   `pacer_http_reqs_total` reaches it. The latency is counted from the second's instant, when
//!   every worker sends its report (real workers report at whole seconds of the common start);
//! - the abort (`--fail-at T`): from second T on, every worker's report counts
//!   [`DROPS_AT_FAIL`] dropped iterations; the plan (`--print-plan`) aborts on
//!   `dropped_iterations` reaching half the fleet's drops, so the threshold is crossed by the
//!   reports of second T (once half of them are merged). The time from that second's instant to
//!   each worker's Stop is the abort's decision plus its delivery.
//!
//! Reports are protocol 2's DELTAS: each worker's report holds what was recorded after its
//! previous report (`Report.since_seq`, 0 for the first, which holds everything so far), and
//! Finished holds the last delta and the whole (cumulative) snapshot in `snapshot_json`. The
//! simulator never resumes a session, so `Assign.counted_seq` (0 for a fresh worker) and the
//! controller's `Heartbeat.counted_seq` are not needed.
//!
//! What one report costs the controller, without a controller (`--measure-reports`): one
//! worker's traffic is recorded second by second, and every second the worker's report is made
//! as pacer-worker makes it (the cumulative snapshot packed, `Snapshot::delta_continuing`
//! against the previous second's, `to_json`) and counted as the controller counts it (decoded
//! with `Snapshot::from_json_bytes`, added into a running total with
//! `Snapshot::merge_in_place`). At 1, 10, 60, 300 and 600 s (up to `--seconds`) it prints: the
//! report's (the delta's) size, its decode and its merge into the total (each the median of 20
//! rounds), the worker's cost of making it, and, for comparison, the size of the cumulative
//! snapshot a protocol-1 report carried that second. At the end it checks that the total of
//! the deltas is the worker's cumulative snapshot:
//!
//!   cargo run --release -p pacer-controller --example worker_sim -- --measure-reports --seconds 600
//!
//! Snapshots are built by [`PROFILES`] recorders, not one per worker (a thousand recorders
//! encoding their histograms every second would measure this process, not the controller):
//! worker `i` sends profile `i % PROFILES`'s reports, the one-second deltas made once per
//! profile and second. The controller cannot tell: each stream's deltas continue one another
//! and are of the plan's layout. A worker that missed a second (its task was late) makes its
//! own delta against the last second it sent.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pacer_plan::spec::LimitScope;
use pacer_proto::v1::coordinator_client::CoordinatorClient;
use pacer_proto::{
    ControllerMessage, Finished, Heartbeat, Hello, PROTOCOL_VERSION, Ready, Report, WorkerMessage,
    controller_message::Body as In, worker_message::Body as Out,
};
use pacer_stats::{
    Attempt, ErrorKind, IterationOutcome, Layout, LimitPacing, Recorder, RequestOutcome,
    RetryOutcome, ScenarioLayout, Snapshot,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// Recorders whose snapshots the workers share (worker `i` sends profile `i % PROFILES`): enough
/// that the fleet's merge sees different histograms, few enough that building them each second
/// costs this process milliseconds.
const PROFILES: usize = 8;

/// Dropped iterations each worker reports from `--fail-at` on; the printed plan aborts at half
/// the fleet's (`--print-plan`), so about half the reports of that second cross it.
const DROPS_AT_FAIL: u64 = 10;

/// How often `/metrics` is read while a status probe waits: the latency's resolution.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// How long a status probe waits before it counts the status as not seen.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams that may be between connect and Assign at once: under the listener's 256 streams
/// waiting for their Hello (pacer_controller::listener), so none is refused as a flood.
const JOINING_AT_ONCE: usize = 64;

/// How long a worker waits for its Assign, its Start, or the close after Finished.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// Heartbeats to the controller (its default interval; it declares a worker lost after 5 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Probability that an attempt is answered 429 (then retried once, successfully).
const THROTTLED_SHARE: f64 = 0.03;

/// Probability that a request fails (a 500, not retried).
const FAILED_SHARE: f64 = 0.002;

/// Spread of the lognormal latencies (sigma of the log): p99 is about 4x the median.
const LATENCY_SIGMA: f64 = 0.6;

/// The bounds of the per-request median latencies: the first request's is the low one, the
/// last request's the high one, the others spread geometrically between them.
const MEDIAN_MS: (f64, f64) = (20.0, 200.0);

struct Args {
    controller: String,
    workers: u32,
    seconds: u64,
    scenarios: usize,
    requests: usize,
    /// Requests of each plan request per worker and second.
    rate: u64,
    session_token: String,
    test_id: String,
    metrics: Option<String>,
    probe_every: u64,
    fail_at: Option<u64>,
    print_plan: bool,
    measure_reports: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        controller: "http://127.0.0.1:7700".into(),
        workers: 1000,
        seconds: 60,
        scenarios: 3,
        requests: 10,
        rate: 2,
        session_token: std::env::var("PACER_SESSION_TOKEN").unwrap_or_default(),
        test_id: String::new(),
        metrics: None,
        probe_every: 5,
        fail_at: None,
        print_plan: false,
        measure_reports: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--print-plan" {
            a.print_plan = true;
            continue;
        }
        if k == "--measure-reports" {
            a.measure_reports = true;
            continue;
        }
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let bad = |_| format!("{k}: {v:?} is not a whole number");
        match k.as_str() {
            "--controller" => a.controller = v,
            "--workers" => a.workers = v.parse().map_err(bad)?,
            "--seconds" => a.seconds = v.parse().map_err(bad)?,
            "--scenarios" => a.scenarios = v.parse().map_err(bad)?,
            "--requests" => a.requests = v.parse().map_err(bad)?,
            "--rate" => a.rate = v.parse().map_err(bad)?,
            "--session-token" => a.session_token = v,
            "--test-id" => a.test_id = v,
            "--metrics" => a.metrics = Some(v),
            "--probe-every" => a.probe_every = v.parse().map_err(bad)?,
            "--fail-at" => a.fail_at = Some(v.parse().map_err(bad)?),
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if !(1..=10_000).contains(&a.workers) {
        return Err(format!("--workers: {} is not within 1..=10000", a.workers));
    }
    if !(1..=3600).contains(&a.seconds) {
        return Err(format!("--seconds: {} is not within 1..=3600", a.seconds));
    }
    if !(1..=20).contains(&a.scenarios) || !(1..=50).contains(&a.requests) {
        return Err("--scenarios must be within 1..=20 and --requests within 1..=50".into());
    }
    if !(1..=1000).contains(&a.rate) {
        return Err(format!("--rate: {} is not within 1..=1000", a.rate));
    }
    if a.probe_every == 0 {
        return Err("--probe-every: must be at least 1".into());
    }
    if !a.controller.contains("://") {
        a.controller = format!("http://{}", a.controller);
    }
    Ok(a)
}

/// The plan the controller must run for this layout: `--scenarios` x `--requests`, lasting
/// `--seconds`, two per-worker limits, and the abort threshold `--fail-at` crosses.
fn plan_yaml(a: &Args) -> String {
    let drops = u64::from(a.workers) * DROPS_AT_FAIL / 2;
    let mut s = format!(
        "# Written by worker_sim --print-plan: the layout the simulator reports. Its target is never\n\
         # contacted (the simulated workers send no HTTP).\n\
         name: worker-sim\ntarget: http://127.0.0.1:9\n\
         limits:\n  - {{name: api, limit: 1000/s, burst: 10}}\n  - {{name: search, limit: 100/s, burst: 5}}\n\
         thresholds:\n  dropped_iterations: [{{threshold: \"count<{drops}\", abortOnFail: true}}]\n\
         scenarios:\n"
    );
    for sc in 0..a.scenarios {
        s.push_str(&format!(
            "  - name: s{sc}\n    executor: constant-arrival-rate\n    rate: {}/s\n    duration: {}s\n    requests:\n",
            a.rate.saturating_mul(u64::from(a.workers)),
            a.seconds
        ));
        for r in 0..a.requests {
            s.push_str(&format!("      - {{name: r{r}, path: /s{sc}/r{r}}}\n"));
        }
    }
    s
}

/// One second's reports, per profile: the delta since the previous second as a report carries
/// it, and the cumulative snapshot (what the workers' next deltas continue, and the fleet's
/// totals for the status probe); the limits table.
struct Tick {
    second: u64,
    at: Instant,
    /// `delta_continuing` of the previous second's cumulative (the whole for second 1), JSON.
    deltas: Vec<Vec<u8>>,
    /// The cumulative snapshots, packed.
    cumulative: Vec<Snapshot>,
    /// The cumulative snapshots' JSON, for Finished: encoded on first use, once per profile.
    wholes: Vec<OnceLock<Vec<u8>>>,
    /// The empty deltas after this second, for a Finished after a Stop: the same.
    nothing: Vec<OnceLock<Vec<u8>>>,
    limits: Vec<u8>,
    last: bool,
}

impl Tick {
    /// Profile `profile`'s cumulative snapshot as JSON (Finished's `snapshot_json`) when it
    /// fits `max` (`Assign.detail_max_bytes`), and whether it was left out, as a worker does.
    fn whole_within(&self, profile: usize, max: u64) -> (Vec<u8>, bool) {
        let whole = self.whole_json(profile);
        if whole.len() as u64 <= max {
            (whole.clone(), false)
        } else {
            (Vec::new(), true)
        }
    }

    /// Profile `profile`'s cumulative snapshot as JSON, made once per profile.
    fn whole_json(&self, profile: usize) -> &Vec<u8> {
        self.wholes[profile].get_or_init(|| self.cumulative[profile].to_json().into_bytes())
    }

    /// Profile `profile`'s empty delta after this second (a Finished after a Stop), made once
    /// per profile: made per worker, the thousand Stops of an abort would take the
    /// simulator's core seconds, and the abort's measured delivery with them.
    fn nothing_after(&self, profile: usize) -> Vec<u8> {
        self.nothing[profile]
            .get_or_init(|| {
                let c = &self.cumulative[profile];
                c.delta_continuing(c)
                    .map(|d| d.to_json().into_bytes())
                    .unwrap_or_else(|e| panic!("a snapshot continues itself: {e}"))
            })
            .clone()
    }

    /// What a worker of `profile` that last sent `since` (none: nothing) reports for this
    /// second: the delta after it, as JSON. The one-second delta is shared; a worker that
    /// missed a second makes its own.
    fn delta_after(&self, profile: usize, since: Option<&Tick>) -> Vec<u8> {
        let previous = since.map_or(0, |t| t.second);
        if previous + 1 == self.second {
            return self.deltas[profile].clone();
        }
        match since {
            None => self.whole_json(profile).clone(),
            Some(t) => self.cumulative[profile]
                .delta_continuing(&t.cumulative[profile])
                .map(|d| d.to_json().into_bytes())
                .unwrap_or_else(|e| {
                    panic!("second {} does not continue {}: {e}", self.second, t.second)
                }),
        }
    }
}

/// What the workers share.
struct Ctx {
    args: Args,
    endpoint: Endpoint,
    joining: Semaphore,
    /// The layout and limits of the plan, from the first Assign.
    plan: tokio::sync::OnceCell<(Layout, Vec<pacer_plan::Limit>)>,
    /// The common start on this process's clock, from the first Start.
    start: watch::Sender<Option<Instant>>,
    ticks: watch::Sender<Option<Arc<Tick>>>,
    /// Reports queued per second (index: the second).
    queued: Vec<AtomicU32>,
    assigned: AtomicU32,
    report_bytes: AtomicU64,
    /// When each worker's Stop or Abort arrived.
    stops: parking_lot::Mutex<Vec<Instant>>,
    /// The second whose reports crossed the abort threshold, and its instant.
    crossing: parking_lot::Mutex<Option<(u64, Instant)>>,
    /// The status probes' latencies, seconds (`None`: not seen within [`PROBE_TIMEOUT`]).
    latencies: parking_lot::Mutex<Vec<Option<f64>>>,
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("worker_sim: {e}");
            std::process::exit(2);
        }
    };
    if a.print_plan {
        print!("{}", plan_yaml(&a));
        return;
    }
    if a.measure_reports {
        measure_reports(&a);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    std::process::exit(rt.block_on(run(a)));
}

async fn run(a: Args) -> i32 {
    let endpoint = match Endpoint::from_shared(a.controller.clone()) {
        Ok(e) => e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true),
        Err(e) => {
            eprintln!("worker_sim: --controller {:?}: {e}", a.controller);
            return 2;
        }
    };
    let seconds = a.seconds;
    let n = a.workers;
    let ctx = Arc::new(Ctx {
        queued: (0..=seconds + 1).map(|_| AtomicU32::new(0)).collect(),
        args: a,
        endpoint,
        joining: Semaphore::new(JOINING_AT_ONCE),
        plan: tokio::sync::OnceCell::new(),
        start: watch::Sender::new(None),
        ticks: watch::Sender::new(None),
        assigned: AtomicU32::new(0),
        report_bytes: AtomicU64::new(0),
        stops: parking_lot::Mutex::new(Vec::new()),
        crossing: parking_lot::Mutex::new(None),
        latencies: parking_lot::Mutex::new(Vec::new()),
    });
    let began = Instant::now();
    let workers: Vec<_> = (0..n)
        .map(|i| tokio::spawn(worker(i, ctx.clone())))
        .collect();
    let generator = tokio::spawn(generate(ctx.clone()));
    let prober = tokio::spawn(probe(ctx.clone()));
    let mut failed = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("worker {i}: {e}")),
            Err(e) => failed.push(format!("worker {i}: {e}")),
        }
    }
    generator.abort();
    prober.abort();
    let latencies = ctx.latencies.lock().clone();
    let start = *ctx.start.borrow();
    let joined = start.map(|s| s.saturating_duration_since(began));
    println!(
        "workers: {n} ({} assigned, {} failed); all started {:.1}s after the first connect",
        ctx.assigned.load(Ordering::Relaxed),
        failed.len(),
        joined.unwrap_or_default().as_secs_f64()
    );
    for f in failed.iter().take(5) {
        println!("  {f}");
    }
    let sent_secs = start.map_or(1.0, |s| s.elapsed().as_secs_f64().max(1.0));
    let mb = ctx.report_bytes.load(Ordering::Relaxed) as f64 / 1e6;
    println!(
        "reports: {mb:.1} MB of deltas ({:.2} MB/s, {:.1} KB per report)",
        mb / sent_secs,
        mb * 1e3
            / ctx
                .queued
                .iter()
                .map(|q| f64::from(q.load(Ordering::Relaxed)))
                .sum::<f64>()
                .max(1.0)
    );
    let mut result = format!(
        "RESULT workers={n} failed={} join_s={:.2} report_mb_s={:.2}",
        failed.len(),
        joined.unwrap_or_default().as_secs_f64(),
        mb / sent_secs
    );
    let seen: Vec<f64> = latencies.iter().filter_map(|l| *l).collect();
    if !latencies.is_empty() {
        println!(
            "status latency (report instant -> /metrics shows it, {} probes, {} not seen within {PROBE_TIMEOUT:?}): p50 {} max {} (resolution {POLL_EVERY:?})",
            latencies.len(),
            latencies.len() - seen.len(),
            ms(percentile(&seen, 50.0)),
            ms(percentile(&seen, 100.0)),
        );
        result.push_str(&format!(
            " status_probes={} status_unseen={} status_p50_ms={} status_max_ms={}",
            latencies.len(),
            latencies.len() - seen.len(),
            ms(percentile(&seen, 50.0)),
            ms(percentile(&seen, 100.0))
        ));
    }
    if let Some((second, at)) = *ctx.crossing.lock() {
        let mut after: Vec<f64> = ctx
            .stops
            .lock()
            .iter()
            .map(|s| s.saturating_duration_since(at).as_secs_f64())
            .collect();
        after.sort_by(f64::total_cmp);
        println!(
            "abort: second {second}'s reports cross the threshold; Stop reached {} of {n} workers: first {} p50 {} last {} after that second's instant",
            after.len(),
            ms(percentile(&after, 0.0)),
            ms(percentile(&after, 50.0)),
            ms(percentile(&after, 100.0))
        );
        result.push_str(&format!(
            " abort_stopped={} abort_first_ms={} abort_p50_ms={} abort_last_ms={}",
            after.len(),
            ms(percentile(&after, 0.0)),
            ms(percentile(&after, 50.0)),
            ms(percentile(&after, 100.0))
        ));
    }
    println!("{result}");
    i32::from(!failed.is_empty())
}

fn ms(s: Option<f64>) -> String {
    s.map_or_else(|| "nan".into(), |s| format!("{:.0}", s * 1e3))
}

/// The `p`th percentile (nearest rank) of `xs`, sorted or not.
fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let last = v.len().checked_sub(1)?;
    let i = ((p / 100.0) * last as f64).round() as usize;
    v.get(i.min(last)).copied()
}

/// One simulated worker, from connect to the close after its Finished.
async fn worker(i: u32, ctx: Arc<Ctx>) -> Result<(), String> {
    let joining = ctx.joining.acquire().await.map_err(|e| e.to_string())?;
    let channel = connect(&ctx.endpoint).await?;
    let mut client = CoordinatorClient::new(channel)
        .max_decoding_message_size(pacer_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pacer_proto::MAX_MESSAGE_BYTES);
    let (tx, rx) = tokio::sync::mpsc::channel::<WorkerMessage>(16);
    let send = |body: Out| {
        let tx = tx.clone();
        async move {
            tx.send(WorkerMessage { body: Some(body) })
                .await
                .map_err(|_| "the stream closed".to_string())
        }
    };
    send(Out::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        test_id: ctx.args.test_id.clone(),
        worker_index: Some(i),
        version: env!("CARGO_PKG_VERSION").into(),
        session_token: ctx.args.session_token.clone(),
        name: format!("sim-{i}"),
        resume: None,
        takes_served_budget: true,
    }))
    .await?;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("session refused: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let assign = match next(&mut inbound).await? {
        In::Assign(a) => a,
        other => return Err(format!("{} before Assign", other.kind())),
    };
    ctx.plan
        .get_or_try_init(|| async {
            let plan = pacer_worker::plan_from_assign(&assign).map_err(|e| e.to_string())?;
            Ok::<_, String>((Layout::of(&plan), plan.limits.clone()))
        })
        .await?;
    ctx.assigned.fetch_add(1, Ordering::Relaxed);
    drop(joining);
    send(Out::Ready(Ready {})).await?;
    let mut ticks = ctx.ticks.subscribe();
    let mut beats = tokio::time::interval(HEARTBEAT_EVERY);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let profile = i as usize % PROFILES;
    let mut started = false;
    let mut last: Option<Arc<Tick>> = None;
    let mut finished = false;
    let deadline = tokio::time::sleep(Duration::from_secs(ctx.args.seconds) + ANSWER_WITHIN);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(ControllerMessage { body: Some(body) })) => match body {
                    In::Start(s) => {
                        let at = Instant::now() + Duration::from_micros(s.start_in_us);
                        ctx.start.send_if_modified(|v| {
                            let fresh = v.is_none();
                            if fresh {
                                *v = Some(at);
                            }
                            fresh
                        });
                        started = true;
                    }
                    In::Stop(_) | In::Abort(_) => {
                        ctx.stops.lock().push(Instant::now());
                        if !finished {
                            finished = true;
                            send(finish(last.as_deref(), profile, true, assign.detail_max_bytes)).await?;
                        }
                    }
                    _ => {}
                },
                Ok(Some(_)) => {}
                Ok(None) if finished => return Ok(()),
                Ok(None) => return Err("the controller closed the stream before Finished".into()),
                Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
            },
            _ = beats.tick() => {
                let sent_us = ctx.endpoint_age_us();
                let beat = send(Out::Heartbeat(Heartbeat { sent_us, counted_seq: 0 })).await;
                // After Finished the controller closes the stream: that is the receipt.
                if beat.is_err() && finished {
                    return Ok(());
                }
                beat?;
            }
            changed = ticks.changed(), if started && !finished => {
                if changed.is_err() {
                    return Err("the generator ended".into());
                }
                let Some(tick) = ticks.borrow_and_update().clone() else { continue };
                let r = report(&tick, last.as_deref(), profile);
                ctx.report_bytes.fetch_add(r.snapshot_json.len() as u64, Ordering::Relaxed);
                let body = if tick.last {
                    finished = true;
                    let (snapshot_json, detail_left_out) =
                        tick.whole_within(profile, assign.detail_max_bytes);
                    Out::Finished(Finished {
                        report: Some(r),
                        stopped_early: false,
                        error: String::new(),
                        snapshot_json,
                        detail_left_out,
                    })
                } else {
                    Out::Report(r)
                };
                send(body).await?;
                if let Some(q) = ctx.queued.get(tick.second as usize) {
                    q.fetch_add(1, Ordering::Relaxed);
                }
                last = Some(tick);
            }
            _ = &mut deadline => return Err("the run outlived its bound".into()),
        }
    }
}

impl Ctx {
    /// Microseconds since the common start (0 before it): heartbeats' `sent_us`.
    fn endpoint_age_us(&self) -> u64 {
        self.start.borrow().map_or(0, |s| {
            Instant::now().saturating_duration_since(s).as_micros() as u64
        })
    }
}

/// The report of `tick` (numbered by its second) for a worker that last sent `since` (its
/// `seq`, the second, is `since_seq`; none: 0 and everything so far).
fn report(tick: &Tick, since: Option<&Tick>, profile: usize) -> Report {
    Report {
        seq: tick.second,
        since_seq: since.map_or(0, |t| t.second),
        elapsed_us: tick.second * 1_000_000,
        snapshot_json: tick.delta_after(profile, since),
        limits_json: tick.limits.clone(),
    }
}

/// Finished after a Stop or Abort: the final delta, empty (nothing was recorded after `last`,
/// the last report sent; numbered after it), and the cumulative snapshot if it fits
/// `detail_max` (`Assign.detail_max_bytes`); no report before the first second.
fn finish(last: Option<&Tick>, profile: usize, stopped_early: bool, detail_max: u64) -> Out {
    let report = last.map(|t| Report {
        seq: t.second + 1,
        since_seq: t.second,
        elapsed_us: t.second * 1_000_000,
        snapshot_json: t.nothing_after(profile),
        limits_json: t.limits.clone(),
    });
    let (snapshot_json, detail_left_out) = last
        .map(|t| t.whole_within(profile, detail_max))
        .unwrap_or_default();
    Out::Finished(Finished {
        report,
        stopped_early,
        error: String::new(),
        snapshot_json,
        detail_left_out,
    })
}

/// Connect one worker's own connection, retrying a refused connect a few times (the listener
/// answers a burst of connects in its own time).
async fn connect(endpoint: &Endpoint) -> Result<tonic::transport::Channel, String> {
    let mut last = String::new();
    for attempt in 0..10u32 {
        match endpoint.connect().await {
            Ok(c) => return Ok(c),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100) * (attempt + 1)).await;
    }
    Err(format!("cannot connect: {last}"))
}

async fn next(inbound: &mut tonic::Streaming<ControllerMessage>) -> Result<In, String> {
    match tokio::time::timeout(ANSWER_WITHIN, inbound.message()).await {
        Err(_) => Err(format!("no answer within {ANSWER_WITHIN:?}")),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Ok(Ok(None)) => Err("the controller closed the stream".into()),
        Ok(Ok(Some(m))) => m.body.ok_or_else(|| "a message without a body".into()),
    }
}

/// Build each second's reports ahead of its instant and publish them at it.
async fn generate(ctx: Arc<Ctx>) {
    let mut start_rx = ctx.start.subscribe();
    let Ok(start) = start_rx
        .wait_for(Option::is_some)
        .await
        .map(|s| s.unwrap_or_else(Instant::now))
    else {
        return;
    };
    let Some((layout, limits)) = ctx.plan.get().cloned() else {
        return;
    };
    let recorders: Vec<Recorder> = (0..PROFILES)
        .map(|_| Recorder::new(layout.clone()))
        .collect();
    let fail_from = ctx.args.fail_at.unwrap_or(u64::MAX);
    let mut previous: Option<Vec<Snapshot>> = None;
    for second in 1..=ctx.args.seconds {
        for r in &recorders {
            record_second(r, &layout, limits.len(), ctx.args.rate, second >= fail_from);
        }
        let cumulative: Vec<Snapshot> = recorders.iter().map(|r| r.snapshot().packed()).collect();
        let deltas: Vec<Vec<u8>> = cumulative
            .iter()
            .enumerate()
            .map(|(p, now)| match previous.as_ref() {
                None => now.to_json().into_bytes(),
                Some(before) => now
                    .delta_continuing(&before[p])
                    .map(|d| d.to_json().into_bytes())
                    .unwrap_or_else(|e| panic!("a recorder's snapshot continues: {e}")),
            })
            .collect();
        previous = Some(cumulative.clone());
        let limits_json = serde_json::to_vec(&pacing(&limits, second)).unwrap_or_default();
        let at = start + Duration::from_secs(second);
        tokio::time::sleep_until(at).await;
        if second == fail_from {
            *ctx.crossing.lock() = Some((second, at));
        }
        let tick = Tick {
            second,
            at,
            deltas,
            wholes: cumulative.iter().map(|_| OnceLock::new()).collect(),
            nothing: cumulative.iter().map(|_| OnceLock::new()).collect(),
            cumulative,
            limits: limits_json,
            last: second == ctx.args.seconds,
        };
        ctx.ticks.send_replace(Some(Arc::new(tick)));
    }
}

/// One second of one profile's traffic: `rate` requests of every plan request, their attempts
/// (a 429 retried once now and then), iterations, and the drops of a failing second.
fn record_second(r: &Recorder, layout: &Layout, limits: usize, rate: u64, failing: bool) {
    let nreq = layout
        .scenarios
        .iter()
        .map(|s| s.requests.len())
        .max()
        .unwrap_or(1);
    for (si, sc) in layout.scenarios.iter().enumerate() {
        for _ in 0..rate {
            let mut iteration = Duration::ZERO;
            let mut iteration_failed = false;
            for ri in 0..sc.requests.len() {
                let step = if nreq > 1 {
                    ri as f64 / (nreq - 1) as f64
                } else {
                    0.0
                };
                let median = MEDIAN_MS.0 * (MEDIAN_MS.1 / MEDIAN_MS.0).powf(step);
                let service = lognormal_ms(median);
                let limit_bit = if limits == 0 {
                    0
                } else {
                    1u64 << (ri % limits)
                };
                let throttled = rand::random::<f64>() < THROTTLED_SHARE;
                let failed = rand::random::<f64>() < FAILED_SHARE;
                let mut backoff = Duration::ZERO;
                if throttled {
                    r.record_attempt(
                        si,
                        ri,
                        &Attempt {
                            service_time: lognormal_ms(5.0),
                            status: Some(429),
                            bytes_sent: 200,
                            bytes_received: 120,
                            retry_after: Some(Duration::from_millis(500)),
                            limits: limit_bit,
                            ..Default::default()
                        },
                    );
                    backoff = Duration::from_millis(500);
                }
                let timeout = failed && rand::random::<bool>();
                r.record_attempt(
                    si,
                    ri,
                    &Attempt {
                        service_time: service,
                        status: if timeout {
                            None
                        } else if failed {
                            Some(500)
                        } else {
                            Some(200)
                        },
                        error: timeout.then_some(ErrorKind::Timeout),
                        bytes_sent: 200,
                        bytes_received: 1500,
                        limits: limit_bit,
                        ..Default::default()
                    },
                );
                let duration = service + backoff + lognormal_ms(1.0);
                iteration += duration;
                iteration_failed |= failed;
                r.record_request(
                    si,
                    ri,
                    &RequestOutcome {
                        duration,
                        limiter_wait: lognormal_ms(1.0),
                        send_lag: Some(Duration::from_micros(200)),
                        paused: Duration::ZERO,
                        backoff,
                        attempts: 1 + u32::from(throttled),
                        failed,
                        checks_passed: u32::from(!failed),
                        checks_failed: u32::from(failed),
                        retry_outcome: if throttled {
                            RetryOutcome::SucceededAfterRetry
                        } else if failed {
                            RetryOutcome::NotRetryable
                        } else {
                            RetryOutcome::NotRetried
                        },
                    },
                );
            }
            r.record_iteration(
                si,
                &IterationOutcome {
                    duration: iteration,
                    failed: iteration_failed,
                    interrupted: false,
                },
            );
        }
    }
    if failing {
        r.record_dropped(0, DROPS_AT_FAIL);
    }
}

/// `--measure-reports`: the cost of one worker's report to the controller as the test goes on
/// (see the module docs): protocol 2's path, a delta decoded and merged into a running total.
/// The plan's layout and its two limits, one worker's rate.
fn measure_reports(a: &Args) {
    const AT: [u64; 5] = [1, 10, 60, 300, 600];
    const ROUNDS: usize = 20;
    let layout = Layout {
        scenarios: (0..a.scenarios)
            .map(|s| ScenarioLayout {
                name: format!("s{s}"),
                requests: (0..a.requests).map(|r| format!("r{r}")).collect(),
            })
            .collect(),
    };
    let rec = Recorder::new(layout.clone());
    fn median_ms(rounds: usize, mut f: impl FnMut() -> f64) -> f64 {
        let mut xs: Vec<f64> = (0..rounds).map(|_| f()).collect();
        xs.sort_by(f64::total_cmp);
        xs[rounds / 2]
    }
    // What the worker keeps (its last report's cumulative, packed) and what the controller
    // keeps (the total of the deltas it counted).
    let mut previous: Option<Snapshot> = None;
    let mut total = Snapshot::empty(&layout);
    println!(
        "# protocol 2, one worker's report each second; at the seconds listed: delta_bytes = the report's snapshot_json (the delta since the previous second); decode_ms = Snapshot::from_json_bytes of it and merge_ms = merge_in_place of it into the running total (what a controller does per report; medians of {ROUNDS}); worker_ms = the worker making it (snapshot, packed, delta_continuing, to_json); cumulative_bytes = the cumulative snapshot a protocol-1 report carried"
    );
    println!("second  delta_bytes  decode_ms  merge_ms  worker_ms  cumulative_bytes");
    for second in 1..=a.seconds {
        record_second(&rec, &layout, 2, a.rate, false);
        let t = std::time::Instant::now();
        let cumulative = rec.snapshot().packed();
        let json = match previous.as_ref() {
            None => cumulative.to_json(),
            Some(before) => cumulative
                .delta_continuing(before)
                .expect("a later snapshot continues")
                .to_json(),
        }
        .into_bytes();
        let worker_ms = t.elapsed().as_secs_f64() * 1e3;
        let delta = Snapshot::from_json_bytes(&json).expect("own delta decodes");
        if AT.contains(&second) {
            let decode = median_ms(ROUNDS, || {
                let t = std::time::Instant::now();
                let _ = Snapshot::from_json_bytes(&json).expect("own delta decodes");
                t.elapsed().as_secs_f64() * 1e3
            });
            let merge = median_ms(ROUNDS, || {
                let mut sum = total.clone();
                let t = std::time::Instant::now();
                sum.merge_in_place(&delta).expect("deltas add up");
                t.elapsed().as_secs_f64() * 1e3
            });
            println!(
                "{second:>6}  {:>11}  {decode:>9.3}  {merge:>8.3}  {worker_ms:>9.3}  {:>16}",
                json.len(),
                cumulative.to_json().len()
            );
        }
        total.merge_in_place(&delta).expect("deltas add up");
        previous = Some(cumulative);
    }
    let exact = total == rec.snapshot();
    println!(
        "# the total of the {} deltas {} the worker's cumulative snapshot",
        a.seconds,
        if exact { "is" } else { "is NOT" }
    );
}

/// A lognormal duration around `median_ms` (Box-Muller).
fn lognormal_ms(median_ms: f64) -> Duration {
    let u1 = rand::random::<f64>().max(f64::MIN_POSITIVE);
    let u2 = rand::random::<f64>();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    Duration::from_secs_f64((median_ms * (LATENCY_SIGMA * z).exp() / 1e3).min(60.0))
}

/// The limits table a worker's limiter would send after `second` seconds.
fn pacing(limits: &[pacer_plan::Limit], second: u64) -> Vec<LimitPacing> {
    limits
        .iter()
        .map(|l| LimitPacing {
            name: l.name.clone(),
            declared: format!("{}/{}s", l.limit.count(), l.limit.per().as_secs_f64()),
            window_secs: l.window.as_secs_f64(),
            burst: l.burst,
            scope: l.scope,
            pacing_rate: l.limit.as_per_sec() * 0.98,
            margin: 0.02,
            adaptive: l.adaptive,
            current_rate: None,
            sustainable_rate: None,
            pauses: second / 10,
            paused_secs: second as f64 / 20.0,
            fleet: (l.scope == LimitScope::Fleet).then(Default::default),
            server: None,
        })
        .collect()
}

/// Every `--probe-every` seconds, how long after that second's instant `/metrics` showed the
/// fleet's total of that second (into `ctx.latencies`; runs until aborted).
async fn probe(ctx: Arc<Ctx>) {
    let Some(addr) = ctx.args.metrics.clone() else {
        return;
    };
    let mut ticks = ctx.ticks.subscribe();
    let end = ctx
        .args
        .fail_at
        .unwrap_or(ctx.args.seconds)
        .min(ctx.args.seconds);
    while ticks.changed().await.is_ok() {
        let Some(tick) = ticks.borrow_and_update().clone() else {
            continue;
        };
        if tick.second % ctx.args.probe_every != 0 || tick.second >= end {
            continue;
        }
        let target = fleet_attempts(&ctx, &tick);
        let mut seen = None;
        while tick.at.elapsed() < PROBE_TIMEOUT {
            if scrape_reqs(&addr).await.is_some_and(|n| n >= target) {
                seen = Some(tick.at.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        ctx.latencies.lock().push(seen);
    }
}

/// The fleet's HTTP exchanges once every worker's report of `tick` is counted.
fn fleet_attempts(ctx: &Ctx, tick: &Tick) -> u64 {
    let workers = u64::from(ctx.args.workers);
    tick.cumulative
        .iter()
        .enumerate()
        .map(|(p, s)| {
            // Workers p, p + PROFILES, ... send this profile's reports.
            let senders = workers.saturating_sub(p as u64).div_ceil(PROFILES as u64);
            s.total().attempts.saturating_mul(senders)
        })
        .fold(0u64, u64::saturating_add)
}

/// The sum of `pacer_http_reqs_total` at `addr`'s `/metrics` (plain HTTP/1.1 on loopback).
async fn scrape_reqs(addr: &str) -> Option<u64> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&body);
    let mut total = 0.0;
    for line in text.lines() {
        if line.starts_with("pacer_http_reqs_total") {
            total += line.rsplit(' ').next()?.parse::<f64>().ok()?;
        }
    }
    Some(total as u64)
}
