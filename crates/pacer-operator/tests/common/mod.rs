//! What the operator's in-process tests share: the HTTP server their workers load.

/// A local HTTP server answering `GET /ok` with `ok`, for a test's workers to load; its
/// address.
pub async fn target() -> std::net::SocketAddr {
    let app = axum::Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}
