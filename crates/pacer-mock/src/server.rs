//! Wiring: the axum router (token endpoint, `/_mock/*` control endpoints, the API fallback, or
//! the `--static` benchmark handler), and the handle of a running server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, json_response};
use crate::config::MockConfig;
use crate::control::{Control, FaultsUpdate};
use crate::endpoints::error_json;
use crate::error::MockError;
use crate::oauth;
use crate::state::Shared;
use crate::stats::StatsView;

/// How long `shutdown` lets in-flight responses (a stall, a slow latency) finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn router(shared: Arc<Shared>) -> Router {
    let control = Router::new()
        .route("/_mock/stats", get(stats))
        .route("/_mock/reset", post(reset));
    if shared.config.static_mode {
        return control.fallback(static_ok).with_state(shared);
    }
    control
        .route("/_mock/faults", get(faults).post(set_faults))
        .route("/_mock/arrivals", get(arrivals))
        .route("/oauth/token", post(oauth::handle))
        .fallback(api::handle)
        .with_state(shared)
}

async fn static_ok(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.static_requests.fetch_add(1, Ordering::Relaxed);
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        // A reference-counted clone: the body is never copied per answer.
        shared.static_body.clone(),
    )
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    json_value(&shared.stats())
}

async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.reset();
    tracing::info!("mock state reset");
    json_response(StatusCode::OK, &json!({"reset": true}))
}

async fn faults(State(shared): State<Arc<Shared>>) -> Response {
    json_value(&Control { shared }.faults())
}

async fn set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let update: FaultsUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return bad_request(format!("invalid faults update: {e}")),
    };
    tracing::info!(?update, "faults updated");
    match (Control { shared }).apply(update) {
        Ok(view) => json_value(&view),
        Err(e) => bad_request(e.to_string()),
    }
}

async fn arrivals(State(shared): State<Arc<Shared>>) -> Response {
    // Copy out first: serializing millions of entries must not hold the recorder's lock.
    let snapshot = shared.recorder.lock().arrivals();
    json_value(&crate::stats::ArrivalsView::from(snapshot))
}

fn bad_request(message: String) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &error_json(StatusCode::BAD_REQUEST, "bad.request", message),
    )
}

fn json_value<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a control response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A running mock API. Dropping it stops the server (gracefully, in the background); call
/// [`MockServer::shutdown`] to wait for that.
pub struct MockServer {
    addr: SocketAddr,
    control: Control,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The same data as `GET /_mock/stats`.
    pub fn stats(&self) -> StatsView {
        self.control.stats()
    }

    /// Faults, reset, arrivals: what `/_mock/*` offers, in process.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops accepting, lets in-flight requests finish (at most 5 s), and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "mock server ended with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "mock server task failed"),
                Err(_) => {
                    tracing::warn!("mock server did not stop in time; aborting it");
                    task.abort();
                }
            }
        }
        tracing::info!(addr = %self.addr, "mock server stopped");
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the mock API on `listener` in a background task and returns at once.
pub async fn serve(config: MockConfig, listener: TcpListener) -> Result<MockServer, MockError> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let static_mode = config.static_mode;
    let static_body = config.read_static_body()?;
    let shared = Arc::new(Shared::new(config, static_body));
    let app = router(shared.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    // Small JSON answers to request/response traffic: Nagle's algorithm would only add delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                // A dropped sender also stops the server.
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%addr, static_mode, "mock API serving");
    Ok(MockServer {
        addr,
        control: Control { shared },
        stop: Some(stop),
        task: Some(task),
    })
}
