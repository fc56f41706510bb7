//! Fleet limiter simulation (a benchmark, not a test): many simulated workers in one process,
//! each with its own connection to one Redis and its own `FleetLimiter`, share one
//! `scope: fleet` limit. Each worker offers its share of the load (times `--demand`) as an open
//! arrival stream with at most `--in-flight` requests waiting; a request "is sent" when its
//! `acquire` returns. Prints the achieved rate, the worst window against the limit, Redis calls
//! per second and Redis' CPU.
//!
//!   cargo run --release -p pacer-limiter --example fleet_sim -- --redis redis://127.0.0.1:6379
//!
//! `bench/fleet-sim.sh` starts a throwaway redis-server and runs this with the defaults
//! (1000 workers, 20000/s over a 10 s window, 15 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pacer_limiter::fleet::{Fleet, FleetConfig, FleetLimiter, FleetOptions, fleet_pacing_rate};
use pacer_limiter::{Limiter, RequestMeta};
use pacer_plan::spec::LimitScope;
use pacer_plan::{Limit, Rate};
use tokio::time::Instant;

struct Args {
    redis: String,
    workers: usize,
    rate: u64,
    window: u64,
    seconds: u64,
    demand: f64,
    in_flight: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        redis: std::env::var("PACER_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        workers: 1000,
        rate: 20_000,
        window: 10,
        seconds: 15,
        demand: 1.25,
        in_flight: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let bad = |_| format!("{k}: {v:?} is not a number");
        match k.as_str() {
            "--redis" => a.redis = v,
            "--workers" => a.workers = v.parse().map_err(bad)?,
            "--rate" => a.rate = v.parse().map_err(bad)?,
            "--window" => a.window = v.parse().map_err(bad)?,
            "--seconds" => a.seconds = v.parse().map_err(bad)?,
            "--demand" => a.demand = v.parse().map_err(|_| format!("{k}: {v:?}"))?,
            "--in-flight" => a.in_flight = v.parse().map_err(bad)?,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok(a)
}

const META: RequestMeta<'static> = RequestMeta {
    method: "GET",
    path: "/",
    request: "r",
};

/// Commands run and CPU seconds used by Redis so far.
async fn redis_totals(c: &mut redis::aio::MultiplexedConnection) -> (u64, f64) {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap_or_default();
    let calls = stats
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|v| v.split(',').next()?.parse::<u64>().ok())
        .sum();
    let cpu: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(c)
        .await
        .unwrap_or_default();
    let secs = cpu
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum();
    (calls, secs)
}

/// The most timestamps (sorted, µs) in any window of `w` µs.
fn worst_window(ts: &[u64], w: u64) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..ts.len() {
        while ts[hi] - ts[lo] >= w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[tokio::main]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fleet_sim: {e}");
            std::process::exit(2);
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let window = Duration::from_secs(a.window);
    let limit = Limit {
        name: "global".into(),
        limit: Rate::new(a.rate * a.window, window).expect("a positive rate"),
        shape: pacer_plan::LimitShape::SlidingWindow,
        burst: 1,
        window,
        scope: LimitScope::Fleet,
        method_in: vec![],
        path_prefix: None,
        request_in: vec![],
        adaptive: false,
        spread: None,
        reserve: None,
    };
    let pacing = fleet_pacing_rate(&limit, pacer_limiter::gcra::DEFAULT_SPREAD);
    let test_id = format!("sim-{}", std::process::id());
    println!(
        "fleet-sim: {} workers sharing {}/{}s ({}/s) through {}, paced at {:.0}/s; offered {:.0}/s \
         ({}x), at most {} waiting per worker; {} s",
        a.workers,
        a.rate * a.window,
        a.window,
        a.rate,
        pacer_limiter::fleet::redacted_url(&a.redis),
        pacing,
        a.rate as f64 * a.demand,
        a.demand,
        a.in_flight,
        a.seconds
    );

    // the workers join (50 at a time)
    let mut limiters = Vec::with_capacity(a.workers);
    for chunk in (0..a.workers).collect::<Vec<_>>().chunks(50) {
        let joins = chunk.iter().map(|_| {
            let cfg = FleetConfig::new(a.redis.clone(), test_id.clone());
            Fleet::connect(cfg)
        });
        for f in futures::future::join_all(joins).await {
            let f = f.unwrap_or_else(|e| {
                eprintln!("fleet_sim: {e}");
                std::process::exit(1)
            });
            limiters.push(Arc::new(FleetLimiter::new(
                f,
                std::slice::from_ref(&limit),
                FleetOptions::default(),
            )));
        }
    }
    let mut admin = redis::Client::open(a.redis.as_str())
        .expect("the Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("an admin connection to Redis");
    // let every worker learn the fleet's size
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (calls0, cpu0) = redis_totals(&mut admin).await;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(a.seconds);
    let sent = Arc::new(parking_lot::Mutex::new(Vec::<u64>::with_capacity(
        (a.rate * a.seconds * 11 / 10) as usize,
    )));
    let dropped = Arc::new(AtomicU64::new(0));
    let per_worker = a.rate as f64 * a.demand / a.workers as f64;
    let interval = Duration::from_secs_f64(1.0 / per_worker);
    let mut tasks = Vec::new();
    for lim in &limiters {
        let (lim, sent, dropped) = (lim.clone(), sent.clone(), dropped.clone());
        let max = a.in_flight;
        tasks.push(tokio::spawn(async move {
            let start = t0 + interval.mul_f64(rand::random::<f64>());
            let in_flight = Arc::new(AtomicU64::new(0));
            let mut k = 0u32;
            let mut reqs = tokio::task::JoinSet::new();
            loop {
                let at = start + interval * k;
                k += 1;
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                while reqs.try_join_next().is_some() {}
                if in_flight.load(Ordering::Relaxed) >= max as u64 {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (lim, sent, in_flight) = (lim.clone(), sent.clone(), in_flight.clone());
                reqs.spawn(async move {
                    if lim.acquire(&META).await.is_ok() {
                        let now = Instant::now();
                        if now < end {
                            sent.lock().push((now - t0).as_micros() as u64);
                        }
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            reqs.abort_all();
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (calls1, cpu1) = redis_totals(&mut admin).await;
    let client_calls: u64 = limiters
        .iter()
        .map(|l| l.report()[0].fleet.as_ref().map_or(0, |f| f.redis_calls))
        .sum();

    let mut ts = std::mem::take(&mut *sent.lock());
    ts.sort_unstable();
    let warmup = 2_000_000u64;
    let steady = ts.iter().filter(|t| **t >= warmup).count() as f64
        / (a.seconds as f64 - warmup as f64 / 1e6);
    let worst = worst_window(&ts, a.window * 1_000_000);
    let worst_1s = worst_window(&ts, 1_000_000);
    let allowed = a.rate * a.window;
    let commands = calls1.saturating_sub(calls0) as f64;
    println!(
        "achieved: {steady:.0}/s after a 2 s warm-up ({:.1}% of the limit, {:.1}% of the pacing \
         rate); {} sent, {} arrivals dropped (a worker's {} waiting were taken)",
        steady / a.rate as f64 * 100.0,
        steady / pacing * 100.0,
        ts.len(),
        dropped.load(Ordering::Relaxed),
        a.in_flight
    );
    println!(
        "worst {}s window: {worst} of {allowed} allowed ({:+.2}%); worst 1s window: {worst_1s} \
         ({:+.2}% of {}/s)",
        a.window,
        (worst as f64 / allowed as f64 - 1.0) * 100.0,
        (worst_1s as f64 / a.rate as f64 - 1.0) * 100.0,
        a.rate
    );
    println!(
        "Redis: {:.0} commands/s ({:.4} per request, scripts' inner commands included), {:.0} \
         client calls/s; CPU {:.1}% of one core",
        commands / elapsed,
        commands / ts.len().max(1) as f64,
        client_calls as f64 / elapsed,
        (cpu1 - cpu0) / elapsed * 100.0
    );
    for l in &limiters {
        let _ = l.fleet().leave().await;
    }
}
