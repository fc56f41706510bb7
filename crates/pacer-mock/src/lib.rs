//! pacer-mock: a target API that enforces rate limits the way SaaS APIs do (shaped like
//! Genesys Cloud), for pacer's demos, tests and benchmarks.
//!
//! It issues OAuth2 client-credentials tokens, answers a few realistic endpoints (analytics
//! conversation details query, `users/me`, the asynchronous analytics jobs API, a catch-all),
//! enforces named limits per token, client, org or globally (fixed or sliding windows, token
//! buckets, nginx's leaky bucket) with Genesys' `inin-ratelimit-*` headers (or `X-RateLimit-*`,
//! the IETF fields, or none, per limit), and injects faults on demand:
//! forced 429s and 401s, unavailable periods, latency distributions, stalls, odd `Retry-After`
//! values. Its statistics prove what clients did: for every limit and key, the most requests
//! offered and accepted in any window of the limit's length.
//!
//! Entry points: [`serve`] (in-process, e.g. tests) and [`run_cli`] (`pacer mock`).
//!
//! Module map: `config` (the YAML model), `args` (flags), `server` (router and handle),
//! `api` (the path of an API request), `oauth` (token endpoint), `tokens`, `limits`,
//! `endpoints` (fake data), `latency`, `control` (faults), `stats`, `state`.

mod api;
mod args;
mod config;
mod control;
mod endpoints;
mod error;
mod latency;
mod limits;
mod oauth;
mod server;
mod state;
mod stats;
mod tokens;

pub use args::{MockArgs, Switch, TokenLimitSpec, UnavailableSpec};
pub use config::{
    Algorithm, AuthMode, ClientConfig, EndpointsConfig, HeadersConfig, LatencyConfig, LimitConfig,
    LimitKey, MAX_STATIC_BODY, MockConfig, ResetFormat, RetryAfterFormat, StallConfig,
    TokenRateLimit, UnavailableConfig,
};
pub use control::{Control, FaultsUpdate, FaultsView, Force401, Force429};
pub use error::MockError;
pub use limits::{KeyStats, LimitStats};
pub use server::{MockServer, serve};
pub use stats::{
    Arrival, ArrivalsSummary, ArrivalsView, AuthStats, FaultStats, RequestStats, StatsView,
    TokenStats, WorkerStats,
};

/// `pacer mock`: prints the effective config and exits with `--print-config`; otherwise binds
/// `--listen`, prints `pacer mock listening on http://ADDR` and serves until Ctrl-C (or
/// SIGTERM).
pub async fn run_cli(args: MockArgs) -> Result<(), MockError> {
    let print_config = args.print_config;
    let config = args.into_config()?;
    if print_config {
        let yaml =
            serde_saphyr::to_string(&config).map_err(|e| MockError::RenderConfig(e.to_string()))?;
        print!("{yaml}");
        return Ok(());
    }
    let addr = config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MockError::Bind { addr, source })?;
    let server = serve(config, listener).await?;
    println!("pacer mock listening on http://{}", server.addr());
    stop_signal().await;
    tracing::info!("stopping the mock API");
    server.shutdown().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM (what Kubernetes sends) on Unix.
async fn stop_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
