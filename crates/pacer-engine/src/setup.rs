//! The limiter and token source a run plugs into the engine: this process's own, or a fleet's
//! shared through Redis. `pacer run --redis`, `pacer worker` (with PACER_REDIS_URL, as the
//! Kubernetes operator starts it) and `pacer run --workers N --redis` all build them here.

use std::sync::Arc;

use pacer_limiter::fleet::{
    Fleet, FleetConfig, FleetError, FleetLimiter, FleetOptions, TokenStore,
};
use pacer_limiter::served::{LeaseLink, ServedLimiter, ServedTokens, TokenFetcher, TokenLink};
use pacer_limiter::{Limiter, LocalLimiter, TokenSource};
use pacer_plan::{Limit, Plan};
use pacer_stats::{FleetPacing, LimitPacing, Recorder};

use crate::auth::FleetTokens;
use crate::http::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("joining the fleet: {0}")]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What a worker's controller serves (its Assign).
#[derive(Clone, Copy, Debug)]
pub struct ServedByController<'a> {
    /// The `scope: fleet` limits are leased from it.
    pub limits: bool,
    /// These credentials' tokens come from it.
    pub credentials: &'a [u32],
    /// The fleet's size.
    pub workers: u32,
}

/// A worker's setup when its controller serves the fleet ([`LimiterSetup::served`]).
pub struct Served {
    pub setup: LimiterSetup,
    /// The leases' limiter, when the controller serves the limits.
    pub limiter: Option<Arc<ServedLimiter>>,
    /// The served tokens, when the controller serves some.
    pub tokens: Option<Arc<ServedTokens>>,
}

/// How a controller that serves its workers the plan's `share: fleet` OAuth2 tokens (no
/// Redis) fetches them, and the recorder its fetches are counted in (laid out like the plan).
pub struct ServedFetch {
    pub fetcher: Arc<dyn TokenFetcher>,
    pub recorder: Arc<Recorder>,
}

/// The plan's [`ServedFetch`]: `None` when it has no `share: fleet` OAuth2 credential.
pub fn served_token_fetcher(plan: &Plan) -> Result<Option<ServedFetch>, SetupError> {
    let client = crate::http::build_token_client(&plan.http)?;
    Ok(
        crate::auth::ServedFetcher::from_plan(plan, client).map(|f| ServedFetch {
            recorder: f.recorder.clone(),
            fetcher: Arc::new(f),
        }),
    )
}

/// A run's limiter and token source, and the fleet it joined (if any).
pub struct LimiterSetup {
    pub limiter: Arc<dyn Limiter>,
    /// `None`: the engine caches tokens in this process.
    pub tokens: Option<Arc<dyn TokenSource>>,
    fleet: Option<Arc<Fleet>>,
    /// The limits the limiter keeps (a worker's share of them without Redis).
    limits: Vec<Limit>,
}

impl LimiterSetup {
    /// One process alone keeps these limits (worker- and fleet-scoped alike).
    pub fn local(limits: &[Limit]) -> Self {
        Self {
            limiter: Arc::new(LocalLimiter::new(limits)),
            tokens: None,
            fleet: None,
            limits: limits.to_vec(),
        }
    }

    /// Join the fleet `cfg.test_id` in Redis: `scope: fleet` limits are paced from one
    /// budget (the plan's whole limits, not a share), `share: fleet` tokens fetched once.
    /// With a named budget (`cfg.budget`, `pacer run --budget`, else the plan's `budget:`)
    /// every test naming it shares them, and a declaration of its limits that disagrees with
    /// the budget's is refused before anything is sent.
    pub async fn fleet(
        plan: &Plan,
        mut cfg: FleetConfig,
        recorder: &Arc<Recorder>,
    ) -> Result<Self, SetupError> {
        if cfg.budget.is_none() {
            cfg.budget = plan.budget().map(str::to_string);
        }
        // The plan's weight goes with the plan's budget (validation refuses one without the
        // other); `--weight` overrides it.
        if cfg.weight.is_none() && cfg.budget.is_some() {
            cfg.weight = plan.weight();
        }
        let fleet = Fleet::connect(cfg).await?;
        if let Err(e) = fleet.declare(&plan.limits).await {
            // Not one of the budget's processes after all: say so to the others at once.
            if let Err(le) = fleet.leave().await {
                tracing::debug!(error = %le, "leaving the fleet after a refused declaration");
            }
            return Err(e.into());
        }
        let limiter = Arc::new(FleetLimiter::new(
            fleet.clone(),
            &plan.limits,
            FleetOptions::default(),
        ));
        // Token fetches are rare: a small client of their own.
        let client = crate::http::build_token_client(&plan.http)?;
        let tokens: Arc<dyn TokenSource> = Arc::new(FleetTokens::from_plan(
            plan,
            client,
            recorder.clone(),
            TokenStore::new(fleet.clone()),
        ));
        Ok(Self {
            limiter,
            tokens: Some(tokens),
            fleet: Some(fleet),
            limits: plan.limits.clone(),
        })
    }

    /// A worker whose controller serves the fleet (no Redis; docs/distributed.md, "Tokens and
    /// limits without Redis"): with `serve_limits` the plan's non-adaptive `scope: fleet` limits
    /// are leased over `leases` (whole: `pacer_limiter::served::served_bits`), and the others
    /// kept here as `own_limits` has them (the worker's share); the tokens
    /// of `served_credentials` come over `tokens`, the others are this process's own. The
    /// served limiter and token source are returned too, for the session to deliver the
    /// controller's answers to.
    pub fn served(
        plan: &Plan,
        own_limits: &[Limit],
        what: ServedByController<'_>,
        leases: Arc<dyn LeaseLink>,
        tokens: Arc<dyn TokenLink>,
        recorder: &Arc<Recorder>,
    ) -> Result<Served, SetupError> {
        let ServedByController {
            limits: serve_limits,
            credentials: served_credentials,
            workers,
        } = what;
        let (limiter, served_limiter, limits): (Arc<dyn Limiter>, _, _) = if serve_limits {
            let l = Arc::new(ServedLimiter::new(
                leases,
                &plan.limits,
                own_limits,
                workers,
            ));
            // The served limits whole, the others as this worker keeps them.
            let served = pacer_limiter::served::served_bits(&plan.limits);
            let limits = plan
                .limits
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if i < 64 && served & (1 << i) != 0 {
                        l.clone()
                    } else {
                        own_limits.get(i).unwrap_or(l).clone()
                    }
                })
                .collect();
            (l.clone(), Some(l), limits)
        } else {
            (
                Arc::new(LocalLimiter::new(own_limits)),
                None,
                own_limits.to_vec(),
            )
        };
        let served_tokens = if served_credentials.is_empty() {
            None
        } else {
            let own: Arc<dyn TokenSource> = Arc::new(crate::auth::Tokens::from_plan(
                plan,
                crate::http::build_token_client(&plan.http)?,
                recorder.clone(),
            ));
            let names: Vec<String> = plan.auth.iter().map(|a| a.name.clone()).collect();
            Some(Arc::new(ServedTokens::new(
                tokens,
                &names,
                served_credentials,
                own,
            )))
        };
        Ok(Served {
            setup: Self {
                limiter,
                tokens: served_tokens.clone().map(|t| t as Arc<dyn TokenSource>),
                fleet: None,
                limits,
            },
            limiter: served_limiter,
            tokens: served_tokens,
        })
    }

    /// The summary's limits table: per limit, what pacer paced to and what happened.
    pub fn pacing(&self) -> Vec<LimitPacing> {
        self.limiter
            .report()
            .into_iter()
            .zip(&self.limits)
            .map(|(r, l)| LimitPacing {
                name: r.name,
                declared: r.declared,
                window_secs: l.window.as_secs_f64(),
                burst: r.burst,
                scope: l.scope,
                pacing_rate: r.pacing_rate,
                margin: r.margin,
                adaptive: r.adaptive,
                current_rate: r.adaptive.then_some(r.current_rate),
                sustainable_rate: r.sustainable_rate,
                pauses: r.pauses,
                paused_secs: r.paused.as_secs_f64(),
                fleet: r.fleet.map(|f| FleetPacing {
                    workers: f.workers,
                    redis_calls: f.redis_calls,
                    safe_mode_secs: f.safe_mode.as_secs_f64(),
                    unavailable_secs: f.unavailable.as_secs_f64(),
                    unavailable_reason: f.unavailable_reason,
                }),
                server: r.server.and_then(|h| {
                    Some(pacer_stats::ServerSaid {
                        remaining: h.remaining?,
                        limit: h.limit,
                        others_rate: h.others_rate,
                    })
                }),
            })
            .collect()
    }

    /// Leave the fleet; the last process deletes the test's keys in Redis (otherwise they
    /// expire by themselves). A budget's keys stay for its idle time.
    pub async fn finish(&self) {
        let Some(f) = &self.fleet else { return };
        match f.leave().await {
            Ok(true) => tracing::info!("last process of the fleet: deleted the test's keys"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "leaving the fleet failed; its keys expire by themselves")
            }
        }
    }
}
