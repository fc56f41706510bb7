//! `pacer worker`: join a controller's test and run this worker's shard (the logic is in
//! `pacer_worker`). Exit code 0 when the final results were delivered, 1 otherwise.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::exit::Exit;

#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The controller's gRPC address (`host:port`), as `pacer controller --listen` shows it.
    #[arg(long, value_name = "ADDR")]
    pub connect: String,
    /// The CA (PEM) that signed the controller's certificate: the worker speaks TLS and
    /// verifies the controller before sending its session token. Re-read at each connection.
    #[arg(
        long,
        env = "PACER_CA",
        value_name = "FILE",
        conflicts_with = "insecure_plaintext"
    )]
    pub ca: Option<PathBuf>,
    /// The CA as PEM text rather than a file (the operator's worker pods get it from their
    /// session Secret).
    #[arg(long, env = "PACER_CA_PEM", hide = true, hide_env_values = true, conflicts_with_all = ["ca", "insecure_plaintext"])]
    pub ca_pem: Option<String>,
    /// The name the controller's certificate must carry (default: the host of --connect).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Speak to the controller without TLS: the session token and the plan cross the network
    /// in the clear, and an impostor cannot be told from the controller. Only on a network you
    /// trust (or loopback).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// The test's session token (printed by the controller; prefer the environment variable;
    /// at least 16 bytes).
    #[arg(long, env = "PACER_SESSION_TOKEN", hide_env_values = true)]
    pub session_token: String,
    /// The test to join (refused by a controller running another test). Default: any.
    #[arg(long, env = "PACER_TEST_ID")]
    pub test_id: Option<String>,
    /// The worker index to run (0-based). Default: the controller picks a free one.
    #[arg(long)]
    pub index: Option<u32>,
    /// A name for the controller's displays (default host:pid).
    #[arg(long)]
    pub name: Option<String>,
    /// Send `X-Pacer-Worker: <index>` with every request even if the controller does not ask.
    #[arg(long)]
    pub worker_header: bool,
    /// Keep trying to reach the controller this long at first.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::flags::parse_duration)]
    pub connect_for: Duration,
    /// After losing the controller, keep running the shard and reconnecting this long.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::flags::parse_duration)]
    pub reconnect_for: Duration,
    /// Stop this worker's load once no controller has been heard from this long (5s to 1h):
    /// longer than a controller's restart or failover, short enough that a controller gone
    /// for good leaves little load behind. The worker still reconnects to deliver its results.
    #[arg(long, env = "PACER_LOST_AFTER", value_name = "DURATION", default_value = "30s", value_parser = crate::flags::parse_lost_after)]
    pub lost_after: Duration,
    /// Abort when standard input reaches its end (`pacer run --workers` ties its worker
    /// processes to itself this way, so they die with it).
    #[arg(long, hide = true)]
    pub exit_with_stdin: bool,
    /// Resolve the plan's `${env:NAME}` references in this worker's environment (worker pods
    /// of the Kubernetes operator: their credentials come from Secrets, never through the
    /// controller).
    #[arg(long)]
    pub resolve_plan_env: bool,
    /// The fleet's Redis (`--redis`, PACER_REDIS_URL): join the budget of `scope: fleet`
    /// limits and `share: fleet` tokens. `--fleet` defaults to the controller's test id.
    /// Without Redis the controller serves them (leases of one budget and the tokens, over the
    /// session).
    #[command(flatten)]
    pub fleet: crate::fleet::FleetArgs,
}

/// `--ca` (TLS) or `--insecure-plaintext`: one is required.
fn transport(args: &WorkerArgs) -> Result<pacer_worker::Transport, String> {
    let ca = match (&args.ca, &args.ca_pem) {
        (Some(file), _) => Some(pacer_worker::CaSource::File(file.clone())),
        (None, Some(pem)) => Some(pacer_worker::CaSource::Pem(pem.clone())),
        (None, None) => None,
    };
    match (ca, args.insecure_plaintext) {
        (Some(ca), false) => {
            let trust = pacer_worker::TlsTrust {
                ca,
                server_name: args.server_name.clone(),
            };
            // A CA that cannot be read is a wrong argument (exit 2), not a failed run.
            trust.check().map_err(|e| e.to_string())?;
            Ok(pacer_worker::Transport::Tls(trust))
        }
        (None, true) if args.server_name.is_some() => {
            Err("--server-name: only with --ca (TLS)".into())
        }
        (None, true) => Ok(pacer_worker::Transport::InsecurePlaintext),
        _ => Err(
            "give --ca FILE (the CA that signed the controller's certificate), or --insecure-plaintext to send the session token and receive the plan in the clear".into(),
        ),
    }
}

/// `--session-token` / `PACER_SESSION_TOKEN` must be at least
/// [`pacer_proto::MIN_SESSION_TOKEN_BYTES`] long (controllers refuse shorter ones). Checked by
/// hand rather than by a clap value parser, whose error would print the value: a secret.
pub(crate) fn check_session_token(token: &str) -> Result<(), String> {
    let min = pacer_proto::MIN_SESSION_TOKEN_BYTES;
    if token.len() < min {
        return Err(format!(
            "--session-token (PACER_SESSION_TOKEN): {} bytes is too short: at least {min} are required (e.g. the output of `openssl rand -hex 16`)",
            token.len()
        ));
    }
    Ok(())
}

fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}:{}", std::process::id())
}

/// The fleet's Redis to join (`--fleet` defaults to the controller's test id).
fn redis_join(f: &crate::fleet::FleetArgs) -> anyhow::Result<Option<pacer_worker::RedisJoin>> {
    f.check_fleet_has_redis()?;
    let Some(url) = &f.redis else {
        return Ok(None);
    };
    Ok(Some(pacer_worker::RedisJoin {
        url: url.clone(),
        fleet: f.fleet.clone(),
        budget: f.budget.clone(),
        budget_idle: f.budget_idle,
        weight: f.weight,
        safe_mode_max: f.redis_safe_mode,
        ca_pem: f.ca_pem()?,
    }))
}

pub async fn run(args: WorkerArgs) -> Exit {
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("worker: interrupted; aborting the shard and reporting what it did");
                cancel.cancel();
            }
        }
    });
    if args.exit_with_stdin {
        // A plain thread: a blocked read must not hold up the runtime's shutdown.
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            cancel.cancel();
        });
    }
    if let Err(e) = check_session_token(&args.session_token) {
        eprintln!("worker: error: {e}");
        return Exit::Invalid;
    }
    let transport = match transport(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("worker: error: {e}");
            return Exit::Invalid;
        }
    };
    let redis = match redis_join(&args.fleet) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("worker: error: {e}");
            return Exit::Invalid;
        }
    };
    let cfg = pacer_worker::WorkerConfig {
        controller: args.connect.clone(),
        transport,
        test_id: args.test_id.clone(),
        index: args.index,
        session_token: args.session_token.clone(),
        name: args.name.clone().unwrap_or_else(default_name),
        force_worker_header: args.worker_header,
        connect_for: args.connect_for,
        reconnect_for: args.reconnect_for,
        lost_after: args.lost_after,
        resolve_plan_env: args.resolve_plan_env,
        redis,
    };
    match pacer_worker::run(cfg, cancel).await {
        Ok(o) => {
            tracing::info!(
                "worker {} of test {}: done, {} requests",
                o.index,
                o.test_id,
                o.http_reqs
            );
            match o.engine_error {
                Some(e) => {
                    eprintln!("worker {}: {e}", o.index);
                    Exit::Failure
                }
                None => Exit::Passed,
            }
        }
        Err(e) => {
            eprintln!("worker: error: {e}");
            Exit::Failure
        }
    }
}
