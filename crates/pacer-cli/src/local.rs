//! `pacer run --workers N`: this binary as the controller on loopback and N `pacer worker`
//! processes of it, to use every core. The test is driven as `pacer controller` drives one
//! ([`crate::coordinate::drive`]); the workers die with this process (`--exit-with-stdin`).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pacer_controller::{ControllerConfig, Coordinator};
use pacer_plan::Plan;
use tokio_util::sync::CancellationToken;

use crate::controller::{SESSION_TOKEN_RANDOM_BYTES, TEST_ID_RANDOM_BYTES, random_hex};
use crate::exit::Exit;
use crate::fleet::FleetArgs;
use crate::output::OutputArgs;
use crate::report::ReportOutputs;

/// How long the local workers have to start and join: processes of this binary on this
/// machine, so anything longer means they cannot.
const LOCAL_WAIT_FOR_WORKERS: Duration = Duration::from_secs(30);

/// How long a worker that finished its shard has to deliver its final report and exit before
/// it is killed.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(5);

/// What `pacer run --workers N` takes from its flags.
pub struct LocalRun<'a> {
    pub workers: u32,
    /// `--worker-header`: every worker sends `X-Pacer-Worker: <index>`.
    pub worker_header: bool,
    pub output: &'a OutputArgs,
    pub report: &'a ReportOutputs,
    pub fleet: &'a FleetArgs,
}

/// Run `plan` split across the local workers; errors are printed.
pub async fn run(plan: Arc<Plan>, args: LocalRun<'_>) -> Exit {
    match run_inner(plan, &args).await {
        Ok(e) => e,
        Err(e) => {
            crate::exit::print_anyhow(&e);
            Exit::Failure
        }
    }
}

async fn run_inner(plan: Arc<Plan>, args: &LocalRun<'_>) -> anyhow::Result<Exit> {
    args.fleet.check_fleet_has_redis()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut cfg = ControllerConfig::new(
        random_hex(TEST_ID_RANDOM_BYTES),
        random_hex(SESSION_TOKEN_RANDOM_BYTES),
        args.workers,
    );
    cfg.send_worker_header = args.worker_header;
    cfg.wait_for_workers = LOCAL_WAIT_FOR_WORKERS;
    let coordinator = Coordinator::new(plan.clone(), cfg.clone())?;
    let shutdown = CancellationToken::new();
    let server = coordinator.serve(listener, shutdown.clone());
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 0..args.workers {
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
            .with_context(|| format!("cannot start worker {i} ({})", exe.display()))?;
        children.push(child);
    }
    let exit = crate::coordinate::drive(&coordinator, &plan, args.output, args.report).await;
    // Workers exit once their final report is delivered; give them a moment, then make sure.
    for mut c in children {
        if tokio::time::timeout(WORKER_EXIT_GRACE, c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(crate::coordinate::SERVER_STOP_WAIT, server).await;
    Ok(exit)
}
