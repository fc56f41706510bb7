//! Fair shares between the tests of a budget (`fair.rs`, `lua/lease.lua`), against a real
//! `redis-server` on loopback: weights split a limit between tests with a backlog, a test that
//! needs less gets all it asks and leaves the rest, a pause stops every test on the budget, and
//! the registry says who uses the budget with what share.

use std::sync::Arc;
use std::time::Duration;

use pacer_plan::spec::LimitScope;
use pacer_plan::{Limit, Rate};

use super::redis_tests::RedisServer;
use super::*;
use crate::{Feedback, Limiter, RequestMeta};

const META: RequestMeta<'static> = RequestMeta {
    method: "GET",
    path: "/x",
    request: "x",
};

fn limit(rate: &str) -> Limit {
    let r: Rate = rate.parse().unwrap();
    Limit {
        name: "org".into(),
        limit: r,
        shape: pacer_plan::LimitShape::SlidingWindow,
        burst: 1,
        window: r.per(),
        scope: LimitScope::Fleet,
        method_in: vec![],
        path_prefix: None,
        request_in: vec![],
        adaptive: false,
        spread: None,
        reserve: None,
    }
}

async fn test_on_budget(
    r: &RedisServer,
    test: &str,
    weight: Option<f64>,
    limits: &[Limit],
) -> (Arc<Fleet>, Arc<FleetLimiter>) {
    let mut c = FleetConfig::new(r.url(), test);
    c.budget = Some("acme".into());
    c.budget_idle = BUDGET_IDLE_MIN;
    c.weight = weight;
    let f = Fleet::connect(c).await.unwrap();
    f.declare(limits).await.unwrap();
    let l = Arc::new(FleetLimiter::new(
        f.clone(),
        limits,
        FleetOptions::default(),
    ));
    (f, l)
}

/// `tasks` requests in a loop, each taking a slot and going at once, until `end`: how many
/// went after `from`.
async fn greedy(
    lim: Arc<FleetLimiter>,
    tasks: usize,
    from: tokio::time::Instant,
    end: tokio::time::Instant,
) -> u64 {
    let mut all = Vec::new();
    for _ in 0..tasks {
        let lim = lim.clone();
        all.push(tokio::spawn(async move {
            let mut n = 0u64;
            while tokio::time::Instant::now() < end && lim.acquire(&META).await.is_ok() {
                if tokio::time::Instant::now() >= from && tokio::time::Instant::now() < end {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut n = 0;
    for t in all {
        n += t.await.unwrap();
    }
    n
}

/// Requests arriving at `rate` per second (each its own task, as an arrival executor spawns
/// them) until `end`: (sent after `from`, arrived after `from`).
async fn steady(
    lim: Arc<FleetLimiter>,
    rate: f64,
    from: tokio::time::Instant,
    end: tokio::time::Instant,
) -> (u64, u64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut all = Vec::new();
    let mut arrived = 0u64;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        if tokio::time::Instant::now() >= from {
            arrived += 1;
        }
        let lim = lim.clone();
        all.push(tokio::spawn(async move {
            let at = tokio::time::Instant::now();
            lim.acquire(&META).await.is_ok() && at >= from
        }));
    }
    let mut sent = 0;
    for t in all {
        let went = matches!(
            tokio::time::timeout(Duration::from_secs(5), t).await,
            Ok(Ok(true))
        );
        sent += u64::from(went);
    }
    (sent, arrived)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_greedy_tests_split_a_budget_by_weight_and_the_registry_shows_it() {
    let r = RedisServer::start();
    let limits = [limit("200/s")];
    let pacing = super::fleet_pacing_rate(&limits[0], crate::gcra::DEFAULT_SPREAD);
    let (fa, a) = test_on_budget(&r, "heavy", Some(3.0), &limits).await;
    let (fb, b) = test_on_budget(&r, "light", None, &limits).await;
    let start = tokio::time::Instant::now();
    // the first second converges; the next two are measured
    let (from, end) = (
        start + Duration::from_secs(1),
        start + Duration::from_secs(3),
    );
    // the registry, read while both run
    let read = async {
        tokio::time::sleep_until(start + Duration::from_secs(2)).await;
        let mut c = redis::Client::open(r.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        fair::tests(&mut c, "acme").await.unwrap()
    };
    let (na, nb, rows) = tokio::join!(
        greedy(a.clone(), 80, from, end),
        greedy(b.clone(), 80, from, end),
        read
    );
    let (ra, rb) = (na as f64 / 2.0, nb as f64 / 2.0);
    eprintln!(
        "weights 3:1 at {pacing:.1}/s: heavy {ra:.1}/s, light {rb:.1}/s, ratio {:.2}",
        ra / rb
    );
    assert!(ra + rb <= pacing * 1.05 + 2.0, "{ra} + {rb} over {pacing}");
    assert!(ra + rb >= pacing * 0.85, "{ra} + {rb} of {pacing}");
    assert!(
        (2.2..=4.0).contains(&(ra / rb)),
        "in proportion to 3:1: {ra:.1}/s and {rb:.1}/s"
    );

    eprintln!("{rows:?}");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (h, l) = (&rows[0], &rows[1]);
    assert_eq!((h.test.as_str(), l.test.as_str()), ("heavy", "light"));
    assert_eq!((h.weight, l.weight), (3.0, 1.0));
    assert!(h.backlog && l.backlog, "{rows:?}");
    assert!((h.share - 0.75).abs() < 1e-9 && (l.share - 0.25).abs() < 1e-9);
    assert!(h.rate > l.rate && l.rate > 0.0, "{rows:?}");
    assert!(h.last_seen <= fair::BACKLOG_HOLD, "{rows:?}");
    for f in [fa, fb] {
        f.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_that_needs_less_gets_all_it_asks_and_the_greedy_one_the_rest() {
    let r = RedisServer::start();
    let limits = [limit("200/s")];
    let pacing = super::fleet_pacing_rate(&limits[0], crate::gcra::DEFAULT_SPREAD);
    let (fa, small) = test_on_budget(&r, "small", None, &limits).await;
    let (fb, big) = test_on_budget(&r, "big", None, &limits).await;
    let start = tokio::time::Instant::now();
    let (from, end) = (
        start + Duration::from_secs(1),
        start + Duration::from_secs(3),
    );
    // 20% of the limit next to a test that wants it all
    let ((sent, arrived), nb) = tokio::join!(
        steady(small, 0.2 * pacing, from, end),
        greedy(big, 30, from, end)
    );
    let (rs, rb) = (sent as f64 / 2.0, nb as f64 / 2.0);
    eprintln!(
        "20% next to a greedy test at {pacing:.1}/s: small {rs:.1}/s ({sent} of {arrived} \
         arrived), greedy {rb:.1}/s"
    );
    assert!(sent as f64 >= 0.9 * arrived as f64, "{sent} of {arrived}");
    assert!(
        rb >= 0.6 * pacing,
        "the greedy test gets the rest: {rb:.1}/s"
    );
    assert!(rs + rb <= pacing * 1.05 + 2.0, "{rs} + {rb} over {pacing}");
    for f in [fa, fb] {
        f.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_alone_on_its_budget_uses_the_whole_limit_whatever_its_weight() {
    let r = RedisServer::start();
    let limits = [limit("200/s")];
    let pacing = super::fleet_pacing_rate(&limits[0], crate::gcra::DEFAULT_SPREAD);
    let (f, l) = test_on_budget(&r, "alone", Some(0.5), &limits).await;
    // another test on the budget that stopped wanting long ago does not hold a share
    let mut c = redis::Client::open(r.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(f.keys().tests())
        .arg("idle")
        .arg("t1 100.000000 0 0 0.000 0 0")
        .query_async(&mut c)
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let (from, end) = (
        start + Duration::from_millis(500),
        start + Duration::from_secs(2),
    );
    let n = greedy(l, 30, from, end).await;
    let rate = n as f64 / 1.5;
    eprintln!("alone with weight 0.5: {rate:.1}/s of {pacing:.1}/s");
    assert!(rate >= 0.85 * pacing, "{rate:.1}/s of {pacing:.1}/s");
    // the heartbeat removes the test not seen for longer than fair::TEST_STALE
    f.heartbeat().await.unwrap();
    let rows = fair::tests(&mut c, "acme").await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.test.as_str()).collect::<Vec<_>>(),
        ["alone"]
    );
    assert_eq!(rows[0].weight, 0.5);
    f.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_pause_stops_every_test_on_the_budget() {
    let r = RedisServer::start();
    let limits = [limit("100/s")];
    let (fa, a) = test_on_budget(&r, "pa", None, &limits).await;
    let (fb, b) = test_on_budget(&r, "pb", Some(5.0), &limits).await;
    a.acquire(&META).await.unwrap();
    b.acquire(&META).await.unwrap();
    // a 429 seen by one test pauses the other
    a.feedback(
        &META,
        &Feedback {
            status: 429,
            retry_after: Some(Duration::from_millis(600)),
            pause_origin: crate::PauseOrigin::Server,
            stated_rate: None,
            server: None,
            sent_ago: Duration::ZERO,
        },
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = tokio::time::Instant::now();
    let g = b.acquire(&META).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t0.elapsed()
    );
    assert!(g.paused >= Duration::from_millis(450), "{g:?}");
    for f in [fa, fb] {
        f.leave().await.unwrap();
    }
}

#[tokio::test]
async fn a_weight_needs_a_budget_and_bounds() {
    let r = RedisServer::start();
    let mut c = FleetConfig::new(r.url(), "t");
    c.weight = Some(2.0);
    let e = Fleet::connect(c.clone()).await.unwrap_err().to_string();
    assert!(e.contains("budget"), "{e}");
    c.budget = Some("acme".into());
    c.weight = Some(0.0);
    let e = Fleet::connect(c).await.unwrap_err().to_string();
    assert!(e.contains("weight 0"), "{e}");
}
