//! `pacer controller` (wait for workers on other machines) and `pacer run --workers N` (spawn
//! N worker processes of this binary on loopback). Both drive a `pacer_controller::Coordinator`
//! and print the same progress and summary as `pacer run`, plus a row per worker.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pacer_controller::{ControllerConfig, ControllerError, Coordinator, ProgressTracker};
use pacer_plan::Plan;
use tokio_util::sync::CancellationToken;

use crate::exit::{self, Exit};
use crate::report::{ReportArgs, ReportSink, SnapshotSource, no_limits};
use crate::run::RunArgs;
use crate::flags::parse_duration;

/// Bytes of randomness in a generated session token (printed as twice as many hex
/// characters: well above [`pacer_proto::MIN_SESSION_TOKEN_BYTES`]).
const SESSION_TOKEN_RANDOM_BYTES: usize = 16;

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// The plan (YAML or JSON), or a LoadTest manifest whose spec.plan is used.
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// How many workers to wait for (default: the plan's `workers`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub expect_workers: Option<u32>,
    /// Uneven shares: one weight per worker, comma separated (default: all equal).
    #[arg(long, value_name = "W,W,...", value_delimiter = ',')]
    pub weights: Vec<u32>,
    /// Where workers dial in. Use 0.0.0.0:7700 for workers on other machines (plaintext
    /// gRPC: the plan, secrets resolved, travels to the workers; use a trusted network).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// The test's id (default: a new one). Give the same id (and token) to a restarted
    /// controller so running workers are taken back.
    #[arg(long, env = "PACER_TEST_ID")]
    pub test_id: Option<String>,
    /// The secret workers must present, at least 16 bytes (default: a new one of 32 hex
    /// characters, printed).
    #[arg(long, env = "PACER_SESSION_TOKEN", hide_env_values = true)]
    pub session_token: Option<String>,
    /// Give up when not every worker is ready after this long.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub wait_for_workers: Duration,
    /// A worker silent this long is lost (its last report is kept; see the plan's
    /// onWorkerLoss).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub lost_after: Duration,
    #[command(flatten)]
    pub display: DisplayArgs,
    /// `--report`, `--out`, `--metrics`: over the fleet's merged numbers.
    #[command(flatten)]
    pub report: crate::report::ReportArgs,
}

/// Output options shared by both modes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DisplayArgs {
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Print no live progress (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Seconds between progress lines when stderr is not a terminal.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub progress_every: u64,
    /// Ask every worker to send `X-Pacer-Worker: <index>` with each request.
    #[arg(long)]
    pub worker_header: bool,
    /// Do not color the summary.
    #[arg(long)]
    pub no_color: bool,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// `pacer controller`.
pub async fn run(args: ControllerArgs) -> Exit {
    let plan = match pacer_plan::load_file(&args.plan) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("{e}");
            return exit::for_plan_error(&e);
        }
    };
    let workers = args.expect_workers.unwrap_or(plan.workers).max(1);
    let weights = if args.weights.is_empty() {
        vec![1; workers as usize]
    } else if args.weights.len() != workers as usize {
        eprintln!(
            "--weights: {} weights for {workers} workers (give one per worker)",
            args.weights.len()
        );
        return Exit::Invalid;
    } else {
        args.weights.clone()
    };
    if let Some(token) = &args.session_token
        && let Err(e) = crate::worker::check_session_token(token)
    {
        eprintln!("error: {e}");
        return Exit::Invalid;
    }
    let generated_token = args.session_token.is_none();
    let mut cfg = ControllerConfig::new(
        args.test_id.clone().unwrap_or_else(|| random_hex(6)),
        args.session_token
            .clone()
            .unwrap_or_else(|| random_hex(SESSION_TOKEN_RANDOM_BYTES)),
        workers,
    );
    cfg.weights = weights;
    cfg.wait_for_workers = args.wait_for_workers;
    cfg.lost_after = args.lost_after;
    cfg.send_worker_header = args.display.worker_header;
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return Exit::Failure;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    eprintln!(
        "controller: test {} waits for {workers} worker(s) on {addr} (up to {}s)",
        cfg.test_id,
        cfg.wait_for_workers.as_secs()
    );
    if generated_token {
        eprintln!(
            "controller: start each worker with: PACER_SESSION_TOKEN={} pacer worker --connect {addr} --test-id {}",
            cfg.session_token, cfg.test_id
        );
    }
    let coordinator = match Coordinator::new(plan.clone(), cfg) {
        Ok(c) => c,
        Err(e) => {
            crate::exit::print_error(&e);
            return Exit::Invalid;
        }
    };
    let shutdown = CancellationToken::new();
    let server = coordinator.serve(listener, shutdown.clone());
    let exit = drive(&coordinator, &plan, &args.display, &args.report).await;
    // Let the last streams close before the server goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    exit
}

/// `pacer run --workers N`: this binary as controller, N worker processes on loopback.
pub async fn run_local(plan: Arc<Plan>, args: &RunArgs, workers: u32) -> Exit {
    match run_local_inner(plan, args, workers).await {
        Ok(e) => e,
        Err(e) => {
            crate::exit::print_anyhow(&e);
            Exit::Failure
        }
    }
}

async fn run_local_inner(plan: Arc<Plan>, args: &RunArgs, workers: u32) -> anyhow::Result<Exit> {
    args.fleet.check_fleet_has_redis()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut cfg = ControllerConfig::new(
        random_hex(6),
        random_hex(SESSION_TOKEN_RANDOM_BYTES),
        workers,
    );
    cfg.send_worker_header = args.worker_header;
    cfg.wait_for_workers = Duration::from_secs(30);
    let coordinator = Coordinator::new(plan.clone(), cfg.clone())?;
    let shutdown = CancellationToken::new();
    let server = coordinator.serve(listener, shutdown.clone());
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 0..workers {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["worker", "--connect", &addr.to_string()])
            .args(["--index", &i.to_string(), "--test-id", &cfg.test_id])
            .args(["--name", &format!("local-{i}"), "--exit-with-stdin"])
            .args(["--connect-for", "30s", "--reconnect-for", "10s"])
            .env("PACER_SESSION_TOKEN", &cfg.session_token);
        // With --redis the workers share the fleet's budget in Redis (the URL through the
        // environment, so its password stays out of the process list); the fleet id is
        // --fleet or this run's test id.
        match &args.fleet.redis {
            Some(url) => {
                let id = args.fleet.fleet.as_deref().unwrap_or(&cfg.test_id);
                cmd.env("PACER_REDIS_URL", url)
                    .env("PACER_FLEET", id)
                    .arg("--redis-safe-mode")
                    .arg(format!("{}ms", args.fleet.redis_safe_mode.as_millis()));
                if let Some(ca) = &args.fleet.redis_ca {
                    cmd.arg("--redis-ca").arg(ca);
                }
            }
            None => {
                cmd.env_remove("PACER_REDIS_URL")
                    .env_remove("PACER_FLEET")
                    .env_remove("PACER_REDIS_CA");
            }
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start worker {i} ({}): {e}", exe.display()))?;
        children.push(child);
    }
    let display = DisplayArgs {
        summary_json: args.summary_json.clone(),
        quiet: args.quiet,
        progress_every: args.progress_every,
        worker_header: args.worker_header,
        no_color: args.no_color,
    };
    let exit = drive(&coordinator, &plan, &display, &args.report).await;
    // Workers exit once their final report is delivered; give them a moment, then make sure.
    for mut c in children {
        if tokio::time::timeout(Duration::from_secs(5), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(exit)
}

/// Run the coordinator with progress, Ctrl-C handling and the summary; the exit code is
/// `pacer run`'s: 0 passed, 99 a threshold failed (or abortOnFail), 1 the run failed.
async fn drive(
    coordinator: &Coordinator,
    plan: &Arc<Plan>,
    display: &DisplayArgs,
    report: &ReportArgs,
) -> Exit {
    // Reports and metrics read the fleet's merge of every worker's latest snapshot.
    let source: SnapshotSource = {
        let c = coordinator.clone();
        Arc::new(move || c.status().merged)
    };
    let metrics =
        match crate::metrics::start(report.metrics, plan, source.clone(), no_limits()).await {
            Ok(m) => m,
            Err(e) => {
                crate::exit::print_anyhow(&e);
                return Exit::Failure;
            }
        };
    let sink = ReportSink::start(
        report,
        plan,
        &pacer_stats::Layout::of(plan),
        source,
        no_limits(),
    );
    let signals = tokio::spawn({
        let c = coordinator.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\nstopping every worker: in-flight iterations get their gracefulStop (Ctrl-C again to abort)"
                );
                c.stop("interrupted (Ctrl-C)");
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("aborting");
                    c.abort("interrupted twice (Ctrl-C)");
                }
            }
        }
    });
    let interactive = std::io::stderr().is_terminal();
    let progress = (!display.quiet).then(|| {
        let c = coordinator.clone();
        let every = Duration::from_secs(if interactive {
            1
        } else {
            display.progress_every
        });
        let planned = plan.planned_duration();
        tokio::spawn(async move {
            let mut tracker = ProgressTracker::default();
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let status = c.status();
                if !status.started {
                    continue;
                }
                for line in tracker.lines(&status, planned) {
                    eprintln!("{line}");
                }
            }
        })
    });
    let result = coordinator.run().await;
    signals.abort();
    if let Some(p) = progress {
        p.abort();
    }
    let outcome = match result {
        Ok(o) => o,
        Err(e @ ControllerError::WorkersMissing { .. }) => {
            crate::exit::print_error(&e);
            return Exit::Failure;
        }
        Err(e) => {
            crate::exit::print_error(&e);
            return Exit::Failure;
        }
    };
    let summary = outcome.summary(plan);
    let color = !display.no_color && std::io::stdout().is_terminal();
    println!("{}", outcome.render_text(&summary, color));
    if let Some(path) = &display.summary_json
        && let Err(e) = std::fs::write(path, outcome.render_json(&summary))
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return Exit::Failure;
    }
    if let Some(sink) = sink {
        let workers: Vec<pacer_report::WorkerRow> = outcome
            .workers
            .iter()
            .zip(&outcome.worker_snapshots)
            .filter_map(|(w, snap)| {
                snap.as_ref().map(|s| {
                    pacer_report::WorkerRow::from_snapshot(
                        &format!("{} {}", w.index, w.name),
                        s,
                        outcome.elapsed,
                    )
                })
            })
            .collect();
        if let Err(e) = sink
            .finish(
                report,
                plan,
                &outcome.merged,
                &summary,
                &workers,
                outcome.abort_reason.as_deref(),
            )
            .await
        {
            crate::exit::print_anyhow(&e);
            return Exit::Failure;
        }
    }
    if let Some(m) = metrics {
        m.shutdown(Duration::from_secs(1)).await;
    }
    if outcome.failure.is_some() {
        Exit::Failure
    } else if summary.passed && outcome.abort_reason.is_none() {
        Exit::Passed
    } else {
        Exit::ThresholdFailed
    }
}
