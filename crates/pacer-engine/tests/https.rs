//! The engine's HTTP client over TLS, against a real HTTPS server on 127.0.0.1 with a
//! self-signed certificate: `http.insecureSkipVerify` accepts it (and HTTP/2 is negotiated by
//! ALPN when the server offers it), the default refuses it as a TLS error, and a closed port
//! is a connect error.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use pacer_stats::RequestStats;

mod common;

/// Requests the server answered, by protocol.
#[derive(Default)]
struct Seen {
    h1: AtomicU64,
    h2: AtomicU64,
}

/// An HTTPS server on 127.0.0.1 offering `alpn` (h2 and/or http/1.1).
async fn serve_tls(alpn: &[&[u8]]) -> (SocketAddr, Arc<Seen>) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = hyper_util::rt::TokioIo::new(tls);
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let c = if req.version() == hyper::Version::HTTP_2 {
                        &seen.h2
                    } else {
                        &seen.h1
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                common::serve_connection(io, h2, svc).await;
            });
        }
    });
    (addr, seen)
}

/// 10 iterations of one GET against `target`, over 2 VUs.
async fn run(target: &str, http: &str) -> RequestStats {
    common::get_iterations(target, http, 2, 10, "0s").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_a_self_signed_server_and_negotiates_h2() {
    let (addr, seen) = serve_tls(&[b"h2", b"http/1.1"]).await;
    let t = run(
        &format!("https://localhost:{}", addr.port()),
        "{ insecureSkipVerify: true }",
    )
    .await;
    assert_eq!(t.status.get(&200), Some(&10), "{:?}", t.errors);
    assert_eq!(seen.h2.load(Ordering::Relaxed), 10, "ALPN picked h2");
    assert_eq!(seen.h1.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_only_servers_are_spoken_to_in_http1() {
    let (addr, seen) = serve_tls(&[b"http/1.1"]).await;
    let t = run(
        &format!("https://localhost:{}", addr.port()),
        "{ insecureSkipVerify: true }",
    )
    .await;
    assert_eq!(t.status.get(&200), Some(&10), "{:?}", t.errors);
    assert_eq!(seen.h1.load(Ordering::Relaxed), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_issuer_is_a_tls_error_by_default() {
    let (addr, seen) = serve_tls(&[b"h2", b"http/1.1"]).await;
    let t = run(&format!("https://localhost:{}", addr.port()), "{}").await;
    assert_eq!(t.attempts, 10);
    assert_eq!(t.errors.get("tls"), Some(&10), "{:?}", t.errors);
    assert_eq!(
        seen.h1.load(Ordering::Relaxed) + seen.h2.load(Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let t = run(&format!("http://127.0.0.1:{port}"), "{}").await;
    assert_eq!(t.errors.get("connect"), Some(&10), "{:?}", t.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_timeout_at_http_timeout() {
    // Accepts and reads, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let started = std::time::Instant::now();
    let t = run(&format!("http://{addr}"), "{ timeout: 200ms }").await;
    assert_eq!(t.errors.get("timeout"), Some(&10), "{:?}", t.errors);
    // 2 VUs, 5 timeouts each: about 1 s, far from hanging.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
