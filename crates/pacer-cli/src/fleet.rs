//! `pacer run --redis URL --fleet ID`: this process joins a fleet. Processes started with the
//! same Redis and fleet id share every `scope: fleet` limit and every `share: fleet` token;
//! without them one process keeps every limit itself.

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
    /// How long to keep sending at a safe share while Redis fails, before pausing until it is
    /// back.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::flags::parse_duration)]
    pub redis_safe_mode: Duration,
    /// PEM file of the CA(s) to trust for `rediss://` instead of the system's roots.
    #[arg(long, env = "PACER_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<std::path::PathBuf>,
}

impl FleetArgs {
    /// `--fleet` names a fleet in Redis: it means nothing without `--redis`.
    pub fn check_fleet_has_redis(&self) -> anyhow::Result<()> {
        if self.fleet.is_some() && self.redis.is_none() {
            anyhow::bail!("--fleet needs --redis URL (or PACER_REDIS_URL)");
        }
        Ok(())
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
        return Ok(LimiterSetup::local(&plan.limits));
    };
    let Some(id) = &args.fleet else {
        anyhow::bail!(
            "--redis needs --fleet ID (or PACER_FLEET): the test id the fleet's processes share"
        );
    };
    let mut cfg = FleetConfig::new(url.clone(), id.clone());
    cfg.safe_mode_max = args.redis_safe_mode;
    cfg.ca_pem = args.ca_pem()?;
    Ok(LimiterSetup::fleet(plan, cfg, recorder).await?)
}
