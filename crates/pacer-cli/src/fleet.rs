//! `pacer run --redis URL --fleet ID`: this process joins a fleet. Processes started with the
//! same Redis and fleet id share every `scope: fleet` limit and every `share: fleet` token;
//! without them one process keeps every limit itself. `--budget NAME` (or the plan's
//! `budget:`) shares them with every process of any test naming the same budget.

use std::sync::Arc;
use std::time::Duration;

use pacer_engine::setup::LimiterSetup;
use pacer_limiter::fleet::FleetConfig;
use pacer_plan::Plan;
use pacer_stats::Recorder;

#[derive(clap::Args, Clone)]
pub struct FleetArgs {
    /// Redis holding the fleet's budget: `redis://[:PASSWORD@]HOST:PORT[/DB]`, or `rediss://`
    /// for TLS. Prefer PACER_REDIS_URL, which keeps the password out of the process list.
    #[arg(
        long,
        env = "PACER_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
    /// The test's id in Redis: processes with the same id share the budget (A-Z a-z 0-9 . _ -).
    /// `pacer run --workers N` and `pacer worker` default to the controller's test id.
    #[arg(long, env = "PACER_FLEET", value_name = "ID")]
    pub fleet: Option<String>,
    /// The named budget to share through Redis, overriding the plan's `budget:`: every process
    /// of any test naming it shares its limits and tokens (A-Z a-z 0-9 . _ -, at most 64).
    /// With a budget, `--fleet` is optional.
    #[arg(long, env = "PACER_BUDGET", value_name = "NAME", value_parser = parse_budget)]
    pub budget: Option<String>,
    /// This test's weight among the tests on the budget, overriding the plan's `weight:`
    /// (default 1): tests with a backlog share each limit in proportion to their weights.
    /// Needs a budget.
    #[arg(long, env = "PACER_WEIGHT", value_name = "N", value_parser = crate::flags::parse_weight)]
    pub weight: Option<f64>,
    /// How long a budget's keys outlive their last use (default: 1 hour). For tests.
    #[arg(long, env = "PACER_BUDGET_IDLE", value_name = "DURATION", hide = true, value_parser = crate::flags::parse_duration)]
    pub budget_idle: Option<Duration>,
    /// How long to keep sending at a safe share while Redis fails, before pausing until it is
    /// back.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::flags::parse_duration)]
    pub redis_safe_mode: Duration,
    /// PEM file of the CA(s) to trust for `rediss://` instead of the system's roots.
    #[arg(long, env = "PACER_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<std::path::PathBuf>,
}

/// `--budget NAME`: the plan's rule for a budget's name.
fn parse_budget(s: &str) -> Result<String, String> {
    match pacer_plan::budget::name_problem(s) {
        Some(p) => Err(p),
        None => Ok(s.to_string()),
    }
}

impl FleetArgs {
    /// `--fleet` and `--budget` name things in Redis: they mean nothing without `--redis`.
    pub fn check_fleet_has_redis(&self) -> anyhow::Result<()> {
        if self.fleet.is_some() && self.redis.is_none() {
            anyhow::bail!("--fleet needs --redis URL (or PACER_REDIS_URL)");
        }
        if self.weight.is_some() && self.redis.is_none() {
            anyhow::bail!(
                "--weight needs --redis URL (or PACER_REDIS_URL): a weight is a share of a budget, \
                 shared through Redis"
            );
        }
        if self.budget.is_some() && self.redis.is_none() {
            anyhow::bail!(
                "--budget needs --redis URL (or PACER_REDIS_URL): a budget is shared through Redis"
            );
        }
        Ok(())
    }

    /// The fleet's Redis settings for test `test_id`, with the budget (`--budget`; the plan's
    /// `budget:` applies when it is `None`, see `LimiterSetup::fleet`).
    pub fn config(&self, url: &str, test_id: &str) -> anyhow::Result<FleetConfig> {
        let mut cfg = FleetConfig::new(url.to_string(), test_id.to_string());
        cfg.safe_mode_max = self.redis_safe_mode;
        cfg.ca_pem = self.ca_pem()?;
        cfg.budget = self.budget.clone();
        cfg.weight = self.weight;
        if let Some(idle) = self.budget_idle {
            cfg.budget_idle = idle;
        }
        Ok(cfg)
    }

    /// The CA to trust for `rediss://`, read from `--redis-ca`.
    pub fn ca_pem(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(path) = &self.redis_ca else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--redis-ca {}: {e}", path.display()))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            anyhow::bail!("--redis-ca {}: no PEM certificate in it", path.display());
        }
        Ok(Some(pem))
    }
}

impl std::fmt::Debug for FleetArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetArgs")
            .field(
                "redis",
                &self
                    .redis
                    .as_deref()
                    .map(pacer_limiter::fleet::redacted_url),
            )
            .field("fleet", &self.fleet)
            .field("budget", &self.budget)
            .field("budget_idle", &self.budget_idle)
            .field("weight", &self.weight)
            .field("redis_safe_mode", &self.redis_safe_mode)
            .field("redis_ca", &self.redis_ca)
            .finish()
    }
}

/// The limiter and token source of `pacer run`: alone, or one process of a fleet.
pub async fn setup(
    plan: &Plan,
    args: &FleetArgs,
    recorder: &Arc<Recorder>,
) -> anyhow::Result<LimiterSetup> {
    args.check_fleet_has_redis()?;
    // One process: every limit, worker- or fleet-scoped, is this process's to keep.
    let Some(url) = &args.redis else {
        if let Some(b) = plan.budget() {
            tracing::warn!(
                budget = b,
                "the plan names a budget but there is no --redis: this process keeps its limits \
                 and tokens to itself and shares nothing with the budget"
            );
        }
        return Ok(LimiterSetup::local(&plan.limits));
    };
    // With a budget the processes find each other by its name: this one's test id only says
    // who declared what, so it need not be shared.
    let budget = args.budget.as_deref().or(plan.budget());
    if args.weight.is_some() && budget.is_none() {
        anyhow::bail!(
            "--weight is a test's share of a budget: name the budget too (--budget NAME or the \
             plan's budget:)"
        );
    }
    let id = match (&args.fleet, budget) {
        (Some(id), _) => id.clone(),
        (None, Some(_)) => format!("run-{}", std::process::id()),
        (None, None) => anyhow::bail!(
            "--redis needs --fleet ID (or PACER_FLEET), or a budget (--budget NAME or the \
             plan's budget:): the name the fleet's processes share"
        ),
    };
    let cfg = args.config(url, &id)?;
    Ok(LimiterSetup::fleet(plan, cfg, recorder).await?)
}
