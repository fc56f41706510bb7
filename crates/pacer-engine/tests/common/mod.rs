//! Shared by the engine's integration tests: run a plan in this process and return its totals,
//! and serve one connection of a test server with hyper.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)] // each test crate uses its own part of this module

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use pacer_engine::{Deps, RunControl, RunOptions};
use pacer_limiter::{Limiter, Unlimited};
use pacer_plan::{Refs, load_str};
use pacer_stats::{Recorder, RequestStats};

/// Runs the plan `yaml` to its end with `limiter`; the totals over every request.
pub async fn run_plan(yaml: &str, limiter: Arc<dyn Limiter>) -> RequestStats {
    let plan = Arc::new(load_str(yaml, "plan.yaml", &Refs::default()).unwrap());
    let recorder = Arc::new(Recorder::new(pacer_stats::Layout::of(&plan)));
    pacer_engine::run(
        plan,
        Deps {
            limiter,
            tokens: None,
            recorder: recorder.clone(),
        },
        RunOptions::default(),
        RunControl::default(),
    )
    .await
    .unwrap();
    recorder.snapshot().total()
}

/// One GET of `/a`, `iterations` times over `vus` VUs (`shared-iterations`, no retries), against
/// `target` with the plan's `http` options.
pub async fn get_iterations(
    target: &str,
    http: &str,
    vus: u32,
    iterations: u32,
    think: &str,
) -> RequestStats {
    run_plan(
        &format!(
            "name: t\ntarget: {target}\nhttp: {http}\nretry: {{ maxAttempts: 1 }}\nscenarios:\n  - name: s\n    executor: shared-iterations\n    vus: {vus}\n    iterations: {iterations}\n    thinkTime: {think}\n    requests:\n      - {{ name: a, path: /a }}\n"
        ),
        Arc::new(Unlimited),
    )
    .await
}

/// Serves one connection with `svc`, in HTTP/2 when `h2`, else HTTP/1.1, until it closes.
pub async fn serve_connection<I, S>(io: I, h2: bool, svc: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<Full<Bytes>>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}
