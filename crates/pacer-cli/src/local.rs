//! `pacer run --workers N`: this binary as the controller on loopback and N `pacer worker`
//! processes of it, to use every core. The test is driven as `pacer controller` drives one
//! ([`crate::coordinate::drive`]); the workers die with this process (`--exit-with-stdin`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pacer_controller::served::TokenService;
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

/// How long a local worker keeps its shard running while it cannot reach this process: short,
/// since a controller on loopback that is gone does not come back (and the worker dies with it
/// through `--exit-with-stdin` anyway).
const LOCAL_RECONNECT_FOR: Duration = Duration::from_secs(10);

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
    // Without Redis this process serves the fleet: one budget for the `scope: fleet` limits
    // (leases) and one token per `share: fleet` credential, over the workers' sessions.
    let serve = args.fleet.redis.is_none();
    cfg.serve_limits = serve;
    let tokens = if serve {
        pacer_engine::setup::served_token_fetcher(&plan)?.map(|f| TokenService {
            fetcher: f.fetcher,
            recorder: f.recorder,
        })
    } else {
        None
    };
    let coordinator = Coordinator::serving(plan.clone(), cfg.clone(), tokens)?;
    let shutdown = CancellationToken::new();
    let server = coordinator.serve(listener, shutdown.clone());
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 0..args.workers {
        let mut cmd = worker_command(&exe, addr, i, &cfg, args.fleet);
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

/// The command line of local worker `index`: it dials `addr` for `cfg`'s test, in plaintext
/// (`--insecure-plaintext`): the listener is on 127.0.0.1 only, and bytes on loopback never
/// leave this machine's kernel; whoever could read them there (root) can read this process's
/// memory as well, token and plan included, so TLS would protect nothing (docs/distributed.md,
/// "TLS"). Secrets travel
/// in the environment (the session token; with `--redis`, the fleet's URL, which may hold a
/// password), never in the arguments a process list shows; without `--redis`, the fleet's
/// variables of this process's environment are not passed on.
fn worker_command(
    exe: &Path,
    addr: SocketAddr,
    index: u32,
    cfg: &ControllerConfig,
    fleet: &FleetArgs,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["worker", "--connect", &addr.to_string()])
        .args(["--index", &index.to_string(), "--test-id", &cfg.test_id])
        .args(["--name", &format!("local-{index}"), "--exit-with-stdin"])
        .arg("--insecure-plaintext")
        .arg("--connect-for")
        .arg(format!("{}s", LOCAL_WAIT_FOR_WORKERS.as_secs()))
        .arg("--reconnect-for")
        .arg(format!("{}s", LOCAL_RECONNECT_FOR.as_secs()))
        .env(
            "PACER_SESSION_TOKEN",
            cfg.session.token().unwrap_or_default(),
        )
        // A CA of this process's environment would contradict --insecure-plaintext.
        .env_remove("PACER_CA")
        .env_remove("PACER_CA_PEM");
    // With --redis the workers share the fleet's budget in Redis; the fleet id is --fleet or
    // this run's test id.
    match &fleet.redis {
        Some(url) => {
            let id = fleet.fleet.as_deref().unwrap_or(&cfg.test_id);
            cmd.env("PACER_REDIS_URL", url)
                .env("PACER_FLEET", id)
                .arg("--redis-safe-mode")
                .arg(format!("{}ms", fleet.redis_safe_mode.as_millis()));
            if let Some(ca) = &fleet.redis_ca {
                cmd.arg("--redis-ca").arg(ca);
            }
            match &fleet.budget {
                Some(b) => cmd.env("PACER_BUDGET", b),
                None => cmd.env_remove("PACER_BUDGET"),
            };
            match fleet.weight {
                Some(w) => cmd.env("PACER_WEIGHT", w.to_string()),
                None => cmd.env_remove("PACER_WEIGHT"),
            };
            if let Some(idle) = fleet.budget_idle {
                cmd.env("PACER_BUDGET_IDLE", format!("{}ms", idle.as_millis()));
            }
        }
        None => {
            cmd.env_remove("PACER_REDIS_URL")
                .env_remove("PACER_FLEET")
                .env_remove("PACER_BUDGET")
                .env_remove("PACER_BUDGET_IDLE")
                .env_remove("PACER_WEIGHT")
                .env_remove("PACER_REDIS_CA");
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const URL: &str = "redis://:hunter2@127.0.0.1:6379";

    fn command(fleet: &FleetArgs) -> tokio::process::Command {
        let cfg = ControllerConfig::new("t1", TOKEN, 2);
        worker_command(
            Path::new("/bin/pacer"),
            "127.0.0.1:7700".parse().unwrap(),
            1,
            &cfg,
            fleet,
        )
    }

    fn args(cmd: &tokio::process::Command) -> Vec<String> {
        cmd.as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn env<'a>(cmd: &'a tokio::process::Command, name: &str) -> Option<Option<&'a OsStr>> {
        cmd.as_std()
            .get_envs()
            .find(|(k, _)| *k == OsStr::new(name))
            .map(|(_, v)| v)
    }

    #[test]
    fn a_worker_joins_this_test_with_its_secrets_in_the_environment() {
        let fleet = FleetArgs {
            redis: Some(URL.into()),
            fleet: None,
            budget: None,
            budget_idle: None,
            weight: None,
            redis_safe_mode: Duration::from_secs(10),
            redis_ca: None,
        };
        let cmd = command(&fleet);
        let argv = args(&cmd).join(" ");
        assert!(
            argv.starts_with("worker --connect 127.0.0.1:7700 --index 1 --test-id t1 --name local-1 --exit-with-stdin --insecure-plaintext --connect-for 30s --reconnect-for 10s"),
            "{argv}"
        );
        assert!(argv.ends_with("--redis-safe-mode 10000ms"), "{argv}");
        assert!(!argv.contains(TOKEN) && !argv.contains("hunter2"), "{argv}");
        assert_eq!(
            env(&cmd, "PACER_SESSION_TOKEN"),
            Some(Some(OsStr::new(TOKEN)))
        );
        assert_eq!(env(&cmd, "PACER_REDIS_URL"), Some(Some(OsStr::new(URL))));
        assert_eq!(
            env(&cmd, "PACER_FLEET"),
            Some(Some(OsStr::new("t1"))),
            "the test id by default"
        );
    }

    #[test]
    fn without_redis_the_fleet_variables_are_not_passed_on() {
        let fleet = FleetArgs {
            redis: None,
            fleet: None,
            budget: None,
            budget_idle: None,
            weight: None,
            redis_safe_mode: Duration::from_secs(10),
            redis_ca: None,
        };
        let cmd = command(&fleet);
        assert!(!args(&cmd).iter().any(|a| a.starts_with("--redis")));
        for name in ["PACER_REDIS_URL", "PACER_FLEET", "PACER_REDIS_CA"] {
            assert_eq!(env(&cmd, name), Some(None), "{name} removed");
        }
    }
}
