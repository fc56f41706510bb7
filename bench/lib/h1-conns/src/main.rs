//! What one hyper HTTP/1.1 client connection costs in RSS, measured apart from pacer's engine:
//! N connections opened as pacer's pool opens them (`hyper::client::conn::http1`, a task per
//! connection, jemalloc as the allocator), then ROUNDS rounds of one GET in flight on each,
//! against `pacer mock --latency fixed:Ss`. Prints the RSS after connecting, with every request
//! in flight, and after each round. The difference between two settings (the read buffer, the
//! allocator's `_RJEM_MALLOC_CONF`) divided by N is what that setting saves per connection.
//! docs/benchmarks.md ("10,000 in flight") has the figures; bench/lib/h1-conns.sh runs it.
//!
//! Environment: ADDR (host:port of the mock), N (connections), ROUNDS (default 3), READBUF (an
//! exact read buffer size in bytes, hyper's `read_buf_exact_size`; unset: hyper's adaptive one).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// RSS is read this long after a round's requests are sent: well inside the mock's latency
/// (1 s or more), so every request is still in flight.
const IN_FLIGHT_PROBE: Duration = Duration::from_millis(700);

/// The most connections a run opens: a bound on the loop (the open-files limit is lower).
const MAX_CONNECTIONS: usize = 100_000;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn env_num(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("ADDR").map_err(|_| "ADDR: the mock's host:port is required")?;
    let n = env_num("N").ok_or("N: the number of connections is required")?;
    if n == 0 || n > MAX_CONNECTIONS {
        return Err(format!("N: between 1 and {MAX_CONNECTIONS}").into());
    }
    let rounds = env_num("ROUNDS").unwrap_or(3).clamp(1, 100);
    let read_buf = env_num("READBUF");
    let base = rss_kb();
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(&addr).await?;
        tcp.set_nodelay(true)?;
        let mut b = http1::Builder::new();
        if let Some(size) = read_buf {
            b.read_buf_exact_size(Some(size));
        }
        let (tx, conn) = b.handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        senders.push(tx);
    }
    let connected = rss_kb();
    println!("connections {n} read_buf {read_buf:?}: base {base} kB, connected {connected} kB");
    for round in 0..rounds {
        let mut set = tokio::task::JoinSet::new();
        for mut tx in senders.drain(..) {
            let host = addr.clone();
            set.spawn(async move {
                tx.ready().await.ok()?;
                let req = http::Request::get("/")
                    .header(http::header::HOST, host)
                    .body(Full::new(Bytes::new()))
                    .ok()?;
                let resp = tx.send_request(req).await.ok()?;
                resp.into_body().collect().await.ok()?;
                Some(tx)
            });
        }
        tokio::time::sleep(IN_FLIGHT_PROBE).await;
        let in_flight = rss_kb();
        while let Some(r) = set.join_next().await {
            if let Ok(Some(tx)) = r {
                senders.push(tx);
            }
        }
        let after = rss_kb();
        println!(
            "round {round}: in flight {in_flight} kB ({:.1} kB per connection over the base), \
             after {after} kB, {} connections left",
            (in_flight - base) as f64 / n as f64,
            senders.len()
        );
    }
    Ok(())
}
