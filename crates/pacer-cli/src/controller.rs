//! `pacer controller`: wait for workers on other machines, then drive the test as `pacer run
//! --workers N` does ([`crate::coordinate::drive`]: the same progress and summary as `pacer
//! run`, plus a row per worker). Also the test's id and session token when none is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pacer_controller::listener::Transport;
use pacer_controller::tls::ServerTls;
use pacer_controller::{ControllerConfig, Coordinator};
use tokio_util::sync::CancellationToken;

use crate::exit::{self, Exit};
use crate::flags::parse_duration;
use crate::output::OutputArgs;
use crate::report::ReportOutputs;

/// Bytes of randomness in a generated session token (printed as twice as many hex
/// characters: well above [`pacer_proto::MIN_SESSION_TOKEN_BYTES`]).
pub(crate) const SESSION_TOKEN_RANDOM_BYTES: usize = 16;

/// Bytes of randomness in a generated test id (12 hex characters): an id tells tests apart in
/// logs, Redis keys and a worker's `--test-id`; it is not a secret.
pub(crate) const TEST_ID_RANDOM_BYTES: usize = 6;

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
    /// Where workers dial in. Use 0.0.0.0:7700 for workers on other machines.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// `--tls-cert`/`--tls-key` (TLS, workers verify with `--ca`) or `--insecure-plaintext`.
    #[command(flatten)]
    pub tls: ServerTlsArgs,
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
    /// `--summary-json`, `--quiet`, `--progress-every`, `--no-color`.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Ask every worker to send `X-Pacer-Worker: <index>` with each request.
    #[arg(long)]
    pub worker_header: bool,
    /// `--report`, `--out`, `--metrics`: over the fleet's merged numbers.
    #[command(flatten)]
    pub report: ReportOutputs,
}

/// How the controller's listener speaks: TLS with a certificate, or plaintext on request.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerTlsArgs {
    /// The certificate (PEM chain, leaf first) presented to workers, for the name they dial.
    /// Re-read when the file changes: a renewed certificate needs no restart.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "insecure_plaintext"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM), re-read with it.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve gRPC without TLS: the session token and the plan (secrets resolved) cross the
    /// network readable by anyone on it, and workers cannot tell this controller from an
    /// impostor. Only on a network you trust (or loopback).
    #[arg(long)]
    pub insecure_plaintext: bool,
}

impl ServerTlsArgs {
    /// The listener's transport; one of the two choices is required.
    pub fn transport(&self) -> anyhow::Result<Transport> {
        match (&self.tls_cert, &self.tls_key, self.insecure_plaintext) {
            (Some(cert), Some(key), false) => Ok(Transport::Tls(ServerTls::from_files(
                cert.clone(),
                key.clone(),
            )?)),
            (None, None, true) => Ok(Transport::InsecurePlaintext),
            _ => anyhow::bail!(
                "give --tls-cert FILE and --tls-key FILE (workers verify the certificate with --ca), or --insecure-plaintext to send the session token and the plan in the clear"
            ),
        }
    }
}

/// `--weights`: one per worker, or all equal when none is given.
fn worker_weights(given: &[u32], workers: u32) -> Result<Vec<u32>, String> {
    if given.is_empty() {
        return Ok(vec![1; workers as usize]);
    }
    if given.len() != workers as usize {
        return Err(format!(
            "--weights: {} weights for {workers} workers (give one per worker)",
            given.len()
        ));
    }
    Ok(given.to_vec())
}

/// `bytes` random bytes as hex: generated test ids and session tokens.
pub(crate) fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// `pacer controller`.
pub async fn run(args: ControllerArgs) -> Exit {
    let plan = match exit::load_plan(&args.plan) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let workers = args.expect_workers.unwrap_or(plan.workers).max(1);
    let weights = match worker_weights(&args.weights, workers) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{e}");
            return Exit::Invalid;
        }
    };
    if let Some(token) = &args.session_token
        && let Err(e) = crate::worker::check_session_token(token)
    {
        eprintln!("error: {e}");
        return Exit::Invalid;
    }
    let transport = match args.tls.transport() {
        Ok(t) => t,
        Err(e) => {
            crate::exit::print_anyhow(&e);
            return Exit::Invalid;
        }
    };
    let worker_trust = match transport {
        Transport::Tls(_) => "--ca CA_FILE",
        Transport::InsecurePlaintext => "--insecure-plaintext",
    };
    let generated_token = args.session_token.is_none();
    let mut cfg = ControllerConfig::new(
        args.test_id
            .clone()
            .unwrap_or_else(|| random_hex(TEST_ID_RANDOM_BYTES)),
        args.session_token
            .clone()
            .unwrap_or_else(|| random_hex(SESSION_TOKEN_RANDOM_BYTES)),
        workers,
    );
    cfg.weights = weights;
    cfg.wait_for_workers = args.wait_for_workers;
    cfg.lost_after = args.lost_after;
    cfg.send_worker_header = args.worker_header;
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
            "controller: start each worker with: PACER_SESSION_TOKEN={} pacer worker --connect {addr} --test-id {} {worker_trust}",
            cfg.session.token().unwrap_or_default(),
            cfg.test_id
        );
    }
    // The controller serves its fleet one budget for the `scope: fleet` limits (leases) and one
    // token per `share: fleet` credential; workers given a Redis share through it instead.
    cfg.serve_limits = true;
    let tokens = match pacer_engine::setup::served_token_fetcher(&plan) {
        Ok(t) => t.map(|f| pacer_controller::served::TokenService {
            fetcher: f.fetcher,
            recorder: f.recorder,
        }),
        Err(e) => {
            crate::exit::print_error(&e);
            return Exit::Invalid;
        }
    };
    let coordinator = match Coordinator::serving(plan.clone(), cfg, tokens) {
        Ok(c) => c,
        Err(e) => {
            crate::exit::print_error(&e);
            return Exit::Invalid;
        }
    };
    let shutdown = CancellationToken::new();
    let server = coordinator.serve_with(listener, transport, shutdown.clone());
    let exit = crate::coordinate::drive(&coordinator, &plan, &args.output, &args.report).await;
    // Let the last streams close before the server goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(crate::coordinate::SERVER_STOP_WAIT, server).await;
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_one_per_worker_or_all_equal() {
        assert_eq!(worker_weights(&[], 3), Ok(vec![1, 1, 1]));
        assert_eq!(worker_weights(&[2, 1], 2), Ok(vec![2, 1]));
        let e = worker_weights(&[2, 1], 3).unwrap_err();
        assert!(e.contains("2 weights for 3 workers"), "{e}");
    }

    #[test]
    fn generated_ids_and_tokens_are_hex_of_their_size() {
        let token = random_hex(SESSION_TOKEN_RANDOM_BYTES);
        assert_eq!(token.len(), 2 * SESSION_TOKEN_RANDOM_BYTES);
        assert!(token.len() >= pacer_proto::MIN_SESSION_TOKEN_BYTES);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(random_hex(TEST_ID_RANDOM_BYTES).len(), 12);
    }
}
