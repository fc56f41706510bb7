//! Send lag (`http_req_send_lag`, the summary's `send_lag_ms`): from a request's intended start
//! to its first send, the wait on pacer's own limiter excluded. Recorded once per logical
//! request, against a real HTTP server on 127.0.0.1.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pacer_limiter::{Feedback, Grant, Limiter, LimiterError, RequestMeta, Unlimited};
use pacer_stats::RequestStats;

mod common;

/// Paces nothing, but every acquire waits `WAIT` first, as a limiter holding a request would.
struct SlowLimiter;

const WAIT: Duration = Duration::from_millis(100);

#[async_trait]
impl Limiter for SlowLimiter {
    async fn acquire(&self, _: &RequestMeta<'_>) -> Result<Grant, LimiterError> {
        let started = Instant::now();
        tokio::time::sleep(WAIT).await;
        Ok(Grant {
            waited: started.elapsed(),
            ..Grant::default()
        })
    }
    fn feedback(&self, _: &RequestMeta<'_>, _: &Feedback) {}
}

async fn serve() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Runs `rate/s` for 1 s with two requests per iteration; returns the totals.
async fn run(limiter: Arc<dyn Limiter>) -> RequestStats {
    let addr = serve().await;
    common::run_plan(
        &format!(
            "name: lag\ntarget: http://{addr}\nscenarios:\n  - name: s\n    executor: constant-arrival-rate\n    rate: 20/s\n    duration: 1s\n    requests:\n      - {{ name: a, path: /a }}\n      - {{ name: b, path: /b }}\n"
        ),
        limiter,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sent_request_records_its_lag_within_its_duration() {
    let t = run(Arc::new(Unlimited)).await;
    assert_eq!(t.requests, 40, "20 iterations of two requests");
    assert_eq!(t.status.get(&200), Some(&40));
    assert_eq!(t.send_lag.count(), t.requests);
    // The lag is part of the duration (intended start to the end of the response).
    assert!(t.send_lag.max() <= t.duration.max(), "{t:?}");
    assert!(t.send_lag.mean() <= t.duration.mean(), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiters_wait_is_not_send_lag() {
    let t = run(Arc::new(SlowLimiter)).await;
    assert_eq!(t.send_lag.count(), 40);
    let wait_ms = t.limiter_wait.mean().unwrap() / 1000.0;
    let lag_ms = t.send_lag.mean().unwrap() / 1000.0;
    assert!(wait_ms >= 100.0, "limiter wait {wait_ms} ms");
    // Without the exclusion every lag would be at least the 100 ms wait.
    assert!(
        lag_ms < 50.0,
        "send lag {lag_ms} ms includes the limiter's wait"
    );
}
