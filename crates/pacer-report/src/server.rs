//! A tiny HTTP server for `/metrics`, shared by `pacer run --metrics`, and later the worker and
//! the controller: give it a [`MetricsSource`] (usually a closure that takes a snapshot and
//! calls [`crate::prom::render`]) and a listener.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ReportError;
use crate::prom::CONTENT_TYPE;

/// Produces the metrics text on every scrape.
pub trait MetricsSource: Send + Sync + 'static {
    fn render(&self) -> String;
}

impl<F: Fn() -> String + Send + Sync + 'static> MetricsSource for F {
    fn render(&self) -> String {
        self()
    }
}

/// A running `/metrics` server; stops on [`MetricsServer::shutdown`] or when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

async fn metrics(State(source): State<Arc<dyn MetricsSource>>) -> impl IntoResponse {
    // Rendering clones a snapshot: keep it off the async workers.
    let text = tokio::task::spawn_blocking(move || source.render()).await;
    match text {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "rendering metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
    }
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "pacer: metrics at /metrics\n",
    )
}

impl MetricsServer {
    /// Bind `addr` and serve `/metrics` from `source`.
    pub async fn bind(
        addr: SocketAddr,
        source: Arc<dyn MetricsSource>,
    ) -> Result<Self, ReportError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| ReportError::Bind { addr, source: e })?;
        Self::serve(listener, source)
    }

    /// Serve `/metrics` on an already bound listener.
    pub fn serve(
        listener: TcpListener,
        source: Arc<dyn MetricsSource>,
    ) -> Result<Self, ReportError> {
        let addr = listener.local_addr().map_err(ReportError::Io)?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/", get(index))
            .with_state(source);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, finish the scrapes in flight (at most `grace`), and return.
    pub async fn shutdown(mut self, grace: std::time::Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            s.read_to_string(&mut out),
        )
        .await
        .unwrap()
        .unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_stops() {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = n.clone();
        let source = move || {
            let v = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("# TYPE x counter\nx {v}\n")
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = MetricsServer::serve(listener, Arc::new(source)).unwrap();
        let addr = server.local_addr();
        let first = get(addr, "/metrics").await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.contains("version=0.0.4"), "{first}");
        assert!(first.ends_with("x 0\n"), "{first}");
        assert!(get(addr, "/metrics").await.ends_with("x 1\n"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        server.shutdown(std::time::Duration::from_secs(2)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
