//! The engine's connection pool against real servers on 127.0.0.1: a run never holds more
//! connections than requests in flight, connections the server closes cost no request, and
//! HTTP/2 by prior knowledge multiplexes every VU over one connection.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
    h2: AtomicU64,
}

/// A hyper server on 127.0.0.1 (HTTP/1.1, or HTTP/2 without TLS when `h2c`) that counts the
/// connections it accepted; `close` answers every request with `Connection: close`.
async fn serve(h2c: bool, close: bool) -> (SocketAddr, Arc<Counts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::Relaxed);
            let c = c.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(tcp);
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    c.requests.fetch_add(1, Ordering::Relaxed);
                    if req.version() == hyper::Version::HTTP_2 {
                        c.h2.fetch_add(1, Ordering::Relaxed);
                    }
                    async move {
                        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                        if close {
                            resp.headers_mut()
                                .insert("connection", "close".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                common::serve_connection(io, h2c, svc).await;
            });
        }
    });
    (addr, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_never_outnumber_the_requests_in_flight() {
    let (addr, counts) = serve(false, false).await;
    let t = common::get_iterations(&format!("http://{addr}"), "{}", 16, 2000, "0s").await;
    assert_eq!(t.status.get(&200), Some(&2000), "{:?}", t.errors);
    assert_eq!(counts.requests.load(Ordering::Relaxed), 2000);
    let conns = counts.connections.load(Ordering::Relaxed);
    assert!(
        (1..=16).contains(&conns),
        "16 VUs opened {conns} connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_costs_no_request() {
    let (addr, counts) = serve(false, true).await;
    let t = common::get_iterations(&format!("http://{addr}"), "{}", 4, 200, "0s").await;
    assert_eq!(t.status.get(&200), Some(&200), "{:?}", t.errors);
    assert_eq!(t.attempts, 200);
    assert_eq!(counts.requests.load(Ordering::Relaxed), 200);
    assert_eq!(counts.connections.load(Ordering::Relaxed), 200);
}

/// A server that answers one request per connection without saying so, then closes the
/// connection 20 ms later: the idle connection is seen closed and a new one is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_the_server_closed_are_not_reused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let c = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    let t = common::get_iterations(&format!("http://{addr}"), "{}", 1, 5, "200ms").await;
    assert_eq!(t.status.get(&200), Some(&5), "{:?}", t.errors);
    assert_eq!(connections.load(Ordering::Relaxed), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_by_prior_knowledge_multiplexes_one_connection() {
    let (addr, counts) = serve(true, false).await;
    let t =
        common::get_iterations(&format!("http://{addr}"), "{ http2: true }", 32, 1000, "0s").await;
    assert_eq!(t.status.get(&200), Some(&1000), "{:?}", t.errors);
    assert_eq!(counts.h2.load(Ordering::Relaxed), 1000);
    assert_eq!(counts.connections.load(Ordering::Relaxed), 1);
}
