//! The scripts' semantics and the fleet limiter, against a real `redis-server` on a loopback
//! port (started here, stopped at the end). A missing `redis-server` fails the test with the
//! way to install it: nothing is skipped silently.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pacer_plan::spec::LimitScope;
use pacer_plan::{Limit, Rate};
use redis::Value;
use redis::aio::MultiplexedConnection;

use super::scripts::{self, LeaseReply};
use super::*;
use crate::{Feedback, Limiter, RequestMeta, Token};

/// A throwaway `redis-server` on 127.0.0.1.
pub(crate) struct RedisServer {
    pub port: u16,
    password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With `requirepass`: clients must AUTH (the URL's password).
    pub fn start_with(password: Option<&str>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut s = Self {
            port,
            password: password.map(str::to_string),
            child: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): run `make deps` to install it")
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(c) = redis::Client::open(self.url())
                && let Ok(mut c) = c.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not answer on port {} within 10 s",
            self.port
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn conn(r: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(r.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn limit(name: &str, rate: &str, burst: u32) -> Limit {
    let r: Rate = rate.parse().unwrap();
    Limit {
        name: name.into(),
        limit: r,
        shape: pacer_plan::LimitShape::SlidingWindow,
        burst,
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

/// One limit as the scripts take it: (key, ceiling, burst, window_us, adaptive).
struct L {
    key: String,
    name: String,
    ceiling: f64,
    burst: u32,
    window_us: u64,
    adaptive: bool,
}

fn l(name: &str, ceiling: f64, burst: u32, window: Duration) -> L {
    L {
        key: format!("{{pacer:t}}:limit:{name}"),
        name: name.into(),
        ceiling,
        burst,
        window_us: window.as_micros() as u64,
        adaptive: false,
    }
}

async fn lease(
    c: &mut MultiplexedConnection,
    ls: &[&L],
    want: u32,
    max_ahead: Duration,
    debt: u64,
) -> LeaseReply {
    let mut inv = scripts::LEASE.prepare_invoke();
    for x in ls {
        inv.key(&x.key);
    }
    inv.arg(want)
        .arg(max_ahead.as_micros() as u64)
        .arg(60_000u64);
    for x in ls {
        inv.arg(x.ceiling)
            .arg(x.burst)
            .arg(x.window_us)
            .arg(u8::from(x.adaptive))
            .arg(debt);
    }
    let v: Value = inv.invoke_async(c).await.unwrap();
    scripts::parse_lease(&v, ls.len(), want, max_ahead).unwrap()
}

async fn feedback(
    c: &mut MultiplexedConnection,
    ls: &[&L],
    retry_after: Duration,
) -> scripts::FeedbackReply {
    let mut inv = scripts::FEEDBACK.prepare_invoke();
    for x in ls {
        inv.key(&x.key);
    }
    inv.arg("{pacer:t}:events")
        .arg(retry_after.as_micros() as u64)
        .arg(60_000u64);
    for x in ls {
        inv.arg(&x.name)
            .arg(x.ceiling)
            .arg(x.burst)
            .arg(u8::from(x.adaptive));
    }
    let v: Value = inv.invoke_async(c).await.unwrap();
    scripts::parse_feedback(&v, ls.len()).unwrap()
}

fn us(d: Duration) -> i64 {
    d.as_micros() as i64
}

#[tokio::test]
async fn a_lease_is_slots_of_the_gcra_schedule() {
    let r = RedisServer::start();
    let mut c = conn(&r).await;
    // 100/s burst 3: three at once, then one every 10 ms
    let a = l("a", 100.0, 3, Duration::from_secs(1));
    let got = lease(&mut c, &[&a], 6, Duration::from_secs(1), 0).await;
    let offs: Vec<i64> = got.offsets.iter().map(|d| us(*d)).collect();
    assert_eq!(offs.len(), 6);
    assert_eq!(&offs[..3], &[0, 0, 0], "{offs:?}");
    for w in offs[2..].windows(2) {
        assert!((w[1] - w[0] - 10_000).abs() <= 1, "{offs:?}");
    }
    // the next lease continues the schedule (no second burst)
    let next = lease(&mut c, &[&a], 1, Duration::from_secs(1), 0).await;
    let first = us(next.offsets[0]);
    assert!(
        (first - (offs[5] + 10_000)).abs() < 5_000,
        "{first} after {offs:?}"
    );
}

#[tokio::test]
async fn no_slot_beyond_the_horizon_and_waits_are_durations() {
    let r = RedisServer::start();
    let mut c = conn(&r).await;
    let a = l("a", 10.0, 1, Duration::from_secs(1));
    let got = lease(&mut c, &[&a], 100, Duration::from_millis(500), 0).await;
    // slots at 0, 100, ..., 500 ms
    assert_eq!(got.offsets.len(), 6, "{:?}", got.offsets);
    let again = lease(&mut c, &[&a], 1, Duration::from_millis(500), 0).await;
    assert!(again.offsets.is_empty());
    assert!(
        again.wait > Duration::from_millis(50) && again.wait <= Duration::from_millis(101),
        "{:?}",
        again.wait
    );
}

#[tokio::test]
async fn every_limit_of_a_request_or_none() {
    let r = RedisServer::start();
    let mut c = conn(&r).await;
    let fast = l("fast", 1000.0, 1, Duration::from_secs(1));
    let slow = l("slow", 10.0, 1, Duration::from_secs(1));
    // A request matching both is paced by the slower one...
    let both = lease(&mut c, &[&fast, &slow], 3, Duration::from_secs(1), 0).await;
    let offs: Vec<i64> = both.offsets.iter().map(|d| us(*d)).collect();
    assert_eq!(offs.len(), 3);
    assert!((offs[1] - 100_000).abs() < 2_000, "{offs:?}");
    // ...and each of its tokens counted against the fast limit too: a fast-only lease starts
    // after the last of them.
    let fast_only = lease(&mut c, &[&fast], 1, Duration::from_secs(1), 0).await;
    assert!(
        us(fast_only.offsets[0]) >= offs[2] - 2_000,
        "{:?} vs {offs:?}",
        fast_only.offsets
    );
}

#[tokio::test]
async fn pauses_are_fleet_wide_only_extended_and_resume_at_the_rate() {
    let r = RedisServer::start();
    let mut c = conn(&r).await;
    let mut sub = redis::Client::open(r.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    sub.subscribe("{pacer:t}:events").await.unwrap();
    let a = l("a", 100.0, 5, Duration::from_secs(1));
    lease(&mut c, &[&a], 1, Duration::from_secs(1), 0).await;
    let fb = feedback(&mut c, &[&a], Duration::from_secs(1)).await;
    assert!(fb.pauses[0] > Duration::from_millis(990), "{:?}", fb.pauses);
    // every worker hears it at once
    let msg = tokio::time::timeout(Duration::from_secs(2), async {
        use futures::StreamExt;
        sub.on_message().next().await.unwrap()
    })
    .await
    .unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "pause 1000000 a");
    // a shorter Retry-After does not shorten it
    let fb = feedback(&mut c, &[&a], Duration::from_millis(100)).await;
    assert!(fb.pauses[0] > Duration::from_millis(900), "{:?}", fb.pauses);
    // while paused nothing is granted and the reply says for how long
    let asked = std::time::Instant::now();
    let p = lease(&mut c, &[&a], 5, Duration::from_secs(2), 0).await;
    assert!(p.offsets.is_empty());
    assert!(p.pauses[0] > Duration::from_millis(800), "{:?}", p.pauses);
    assert_eq!(p.wait, p.pauses[0]);
    // after it: one at a time at the rate from the pause's end, not the burst of 5
    tokio::time::sleep(p.pauses[0] + Duration::from_millis(1)).await;
    let after = lease(&mut c, &[&a], 5, Duration::from_secs(1), 0).await;
    // How late this lease can be after the pause's end, at most: a busy machine wakes the
    // sleep late, and the slots missed meanwhile are granted at once (offset 0).
    let late = us(asked.elapsed().saturating_sub(p.pauses[0]));
    let offs: Vec<i64> = after.offsets.iter().map(|d| us(*d)).collect();
    assert_eq!(offs.len(), 5);
    // Token k is at slot k after the pause's end (10 ms apart), or at once if that slot passed.
    let first_slot = offs[4] - 40_000;
    for (k, off) in offs.iter().enumerate() {
        let slot = (first_slot + 10_000 * k as i64).max(0);
        assert!((off - slot).abs() <= 1, "{offs:?}");
    }
    // The slots start at the pause's end: not earlier (a burst of 5 would put them all at 0,
    // 40 ms before the last slot), and the first is not in the future.
    assert!(
        first_slot >= -late - 1_000,
        "{offs:?}, at most {late} µs late"
    );
    assert!(first_slot <= 1, "{offs:?}");
}

/// One turn at `learn.lua` for limit `a` by process `me`: what it saw, and what its learner
/// (continuing `version`, -1: none) decided, if anything.
#[allow(clippy::too_many_arguments)]
async fn learn_turn(
    c: &mut MultiplexedConnection,
    a: &L,
    me: &str,
    turn: Duration,
    seen: (u64, u64),
    version: i64,
    decided: Option<(&str, f64, f64, Duration)>,
) -> scripts::LearnReply {
    let (blob, factor, sustained, pause) = decided.unwrap_or(("", 0.0, 0.0, Duration::ZERO));
    let mut inv = scripts::LEARN.key(format!("{{pacer:t}}:learn:{}", a.name));
    inv.key(&a.key)
        .arg(me)
        .arg(turn.as_millis() as u64)
        .arg(seen.0)
        .arg(seen.1)
        .arg(0u8)
        .arg("")
        .arg(version)
        .arg(blob)
        .arg(factor)
        .arg(sustained)
        .arg(pause.as_micros() as u64)
        .arg("{pacer:t}:events")
        .arg(&a.name)
        .arg(60_000u64)
        .arg(a.ceiling)
        .arg(a.burst);
    let v: Value = inv.invoke_async(c).await.unwrap();
    scripts::parse_learn(&v).unwrap()
}

#[tokio::test]
async fn one_process_learns_for_the_fleet_each_answer_counted_once_and_a_lapsed_one_replaced() {
    let r = RedisServer::start();
    let mut c = conn(&r).await;
    let mut a = l("a", 100.0, 1, Duration::from_secs(1));
    a.adaptive = true;
    let turn = Duration::from_millis(300);
    // A takes the turn (nothing stored yet: it starts a learner of its own)...
    let t = learn_turn(&mut c, &a, "A", turn, (10, 0), -1, None).await;
    assert!(t.learner && !t.in_step && t.stored.is_none(), "{t:?}");
    assert_eq!((t.version, t.accepted, t.refused), (0, 10, 0));
    // ...B only reports...
    let t = learn_turn(&mut c, &a, "B", turn, (5, 2), -1, None).await;
    assert!(!t.learner, "{t:?}");
    // ...and A, storing its learner and the rate it decided (half the ceiling), takes B's
    // answers once.
    let decided = Some(("learn1 A-1", 0.5, 0.25, Duration::ZERO));
    let t = learn_turn(&mut c, &a, "A", turn, (1, 0), 0, decided).await;
    assert!(t.learner && t.in_step, "{t:?}");
    assert_eq!((t.version, t.accepted, t.refused), (1, 6, 2));
    let t = learn_turn(&mut c, &a, "A", turn, (0, 0), 1, None).await;
    assert_eq!((t.version, t.accepted, t.refused), (1, 0, 0));
    // Every lease is granted at the learned rate, and says it.
    let g = lease(&mut c, &[&a], 3, Duration::from_secs(1), 0).await;
    assert_eq!((g.factors[0], g.sustained[0]), (0.5, 0.25));
    let step = us(g.offsets[2]) - us(g.offsets[1]);
    assert!((step - 20_000).abs() < 50, "{step}");
    // A stops (died): after its turn lapses B takes over from A's stored learner...
    learn_turn(&mut c, &a, "B", turn, (3, 0), -1, None).await;
    tokio::time::sleep(turn + Duration::from_millis(20)).await;
    let t = learn_turn(&mut c, &a, "B", turn, (0, 1), -1, None).await;
    assert!(t.learner && !t.in_step, "{t:?}");
    assert_eq!(t.stored.as_deref(), Some("learn1 A-1"));
    assert_eq!((t.version, t.accepted, t.refused), (1, 3, 1));
    // ...and A, back, is not the learner, and a write from its stale learner is not stored.
    let stale = Some(("learn1 A-2", 1.0, 0.0, Duration::ZERO));
    let t = learn_turn(&mut c, &a, "A", turn, (0, 0), 1, stale).await;
    assert!(!t.learner, "{t:?}");
    // B's cut: a slower rate and a pause, heard by every process.
    let mut sub = redis::Client::open(r.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    sub.subscribe("{pacer:t}:events").await.unwrap();
    let cut = Some(("learn1 B-1", 0.2, 0.0, Duration::from_millis(100)));
    let t = learn_turn(&mut c, &a, "B", turn, (0, 0), 1, cut).await;
    assert!(t.learner && t.in_step && t.version == 2, "{t:?}");
    let msg = tokio::time::timeout(Duration::from_secs(2), async {
        use futures::StreamExt;
        sub.on_message().next().await.unwrap()
    })
    .await
    .unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "pause 100000 a");
    let g = lease(&mut c, &[&a], 1, Duration::from_secs(1), 0).await;
    assert_eq!(g.factors[0], 0.2);
    assert!(g.pauses[0] > Duration::from_millis(50), "{:?}", g.pauses);
}

#[tokio::test]
async fn a_state_of_the_aimd_days_is_read_for_its_rate_and_pause() {
    let r = RedisServer::start();
    let mut c = conn(&r).await;
    let mut a = l("a", 100.0, 1, Duration::from_secs(1));
    a.adaptive = true;
    // "v1 tat pause factor last_decrease window_start window_start_factor last_429 sustained"
    // (the AIMD days; the first of its fields is now the slots granted)
    let _: () = redis::cmd("SET")
        .arg(&a.key)
        .arg("v1 0 0 0.5 123 456 0.5 789 0.3")
        .query_async(&mut c)
        .await
        .unwrap();
    let g = lease(&mut c, &[&a], 2, Duration::from_secs(1), 0).await;
    assert_eq!((g.factors[0], g.sustained[0]), (0.5, 0.3));
    // The first of the AIMD's fields is now the fleet's slot count (this lease's came after
    // 123); the others are not raised by a quiet window any more, and are written as zeros.
    assert_eq!(g.before, vec![123]);
    let raw: String = redis::cmd("GET")
        .arg(&a.key)
        .query_async(&mut c)
        .await
        .unwrap();
    let f: Vec<&str> = raw.split_whitespace().collect();
    assert_eq!(
        (f.len(), f[0], f[3], f[8]),
        (9, "v1", "0.500000", "0.300000")
    );
    assert_eq!(&f[4..8], &["125", "0", "0", "0"], "{raw}");
    // A record of another shape is a fresh limit, not an error.
    for bad in ["v1 0 0 nan 0 0 0 0 0", "v3 1 2", "garbage"] {
        let _: () = redis::cmd("SET")
            .arg(&a.key)
            .arg(bad)
            .query_async(&mut c)
            .await
            .unwrap();
        let g = lease(&mut c, &[&a], 1, Duration::from_secs(1), 0).await;
        assert_eq!((g.factors[0], g.sustained[0]), (1.0, 0.0), "{bad}");
    }
}

#[tokio::test]
async fn safe_mode_debt_is_charged_and_malformed_state_starts_fresh() {
    let r = RedisServer::start();
    let mut c = conn(&r).await;
    let a = l("a", 100.0, 1, Duration::from_secs(1));
    let g = lease(&mut c, &[&a], 1, Duration::from_secs(1), 20).await;
    // 20 tokens sent in safe mode: the first slot is 20 intervals out
    assert!(
        (us(g.offsets[0]) - 200_000).abs() < 2_000,
        "{:?}",
        g.offsets
    );
    let _: () = redis::cmd("SET")
        .arg(&a.key)
        .arg("v1 not numbers")
        .query_async(&mut c)
        .await
        .unwrap();
    let g = lease(&mut c, &[&a], 1, Duration::from_secs(1), 0).await;
    assert_eq!(g.offsets, vec![Duration::ZERO]);
}

fn cfg(r: &RedisServer, test: &str) -> FleetConfig {
    let mut c = FleetConfig::new(r.url(), test);
    c.safe_mode_max = Duration::from_millis(800);
    c
}

#[tokio::test]
async fn workers_register_and_the_last_one_deletes_the_tests_keys() {
    let r = RedisServer::start();
    let mut c = conn(&r).await;
    let a = Fleet::connect(cfg(&r, "t")).await.unwrap();
    let b = Fleet::connect(cfg(&r, "t")).await.unwrap();
    assert_eq!(b.heartbeat().await.unwrap(), 2);
    // both run the same plan, so both know its keys
    let plan = [limit("per-token", "100/s", 1)];
    let lim = FleetLimiter::new(a.clone(), &plan, FleetOptions::default());
    let _also = FleetLimiter::new(b.clone(), &plan, FleetOptions::default());
    let meta = RequestMeta {
        method: "GET",
        path: "/",
        request: "r",
    };
    lim.acquire(&meta).await.unwrap();
    let store = TokenStore::new(b.clone());
    store
        .try_lock("cred", Duration::from_secs(5))
        .await
        .unwrap();
    store
        .put("cred", &Token::new("secret-value"), Duration::from_secs(60))
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{pacer:t}*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(!a.leave().await.unwrap(), "b is still there");
    assert!(b.leave().await.unwrap(), "b is the last one");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{pacer:t}*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

fn budget_cfg(r: &RedisServer, test: &str, budget: &str) -> FleetConfig {
    let mut c = cfg(r, test);
    c.budget = Some(budget.into());
    c.budget_idle = BUDGET_IDLE_MIN;
    c
}

async fn keys_matching(c: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(c)
        .await
        .unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn two_tests_on_one_budget_share_its_limit_and_a_disagreeing_one_is_refused() {
    let r = RedisServer::start();
    let a = Fleet::connect(budget_cfg(&r, "test-a", "acme"))
        .await
        .unwrap();
    let b = Fleet::connect(budget_cfg(&r, "test-b", "acme"))
        .await
        .unwrap();
    // both tests count as one fleet: the budget's
    assert_eq!(b.heartbeat().await.unwrap(), 2);
    let plan = [limit("org", "100/s", 1)];
    a.declare(&plan).await.unwrap();
    b.declare(&plan).await.unwrap();
    let la = FleetLimiter::new(a.clone(), &plan, FleetOptions::default());
    let lb = FleetLimiter::new(b.clone(), &plan, FleetOptions::default());
    let meta = RequestMeta {
        method: "GET",
        path: "/",
        request: "r",
    };
    // one GCRA for both tests: 40 grants at 100/s take about 0.4 s, not 0.2 s
    let started = std::time::Instant::now();
    let run = |l: FleetLimiter| async move {
        for _ in 0..20 {
            l.acquire(&meta).await.unwrap();
        }
    };
    tokio::join!(run(la), run(lb));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(330), "{took:?}");

    let c = Fleet::connect(budget_cfg(&r, "test-c", "acme"))
        .await
        .unwrap();
    let e = c.declare(&[limit("org", "200/s", 1)]).await.unwrap_err();
    let text = e.to_string();
    for part in [
        "\"acme\"",
        "\"org\"",
        "100/s",
        "200/s",
        "\"test-a\"",
        "\"test-c\"",
    ] {
        assert!(text.contains(part), "{part} missing: {text}");
    }
    // another budget, or no budget, is free to declare what it likes
    let d = Fleet::connect(budget_cfg(&r, "test-c", "other"))
        .await
        .unwrap();
    d.declare(&[limit("org", "200/s", 1)]).await.unwrap();
    for f in [a, b, c, d] {
        f.leave().await.unwrap();
    }
}

#[tokio::test]
async fn a_budgets_keys_survive_its_tests_and_expire_when_idle() {
    let r = RedisServer::start();
    let mut c = conn(&r).await;
    let a = Fleet::connect(budget_cfg(&r, "test-a", "acme"))
        .await
        .unwrap();
    let plan = [limit("org", "100/s", 1)];
    a.declare(&plan).await.unwrap();
    let lim = FleetLimiter::new(a.clone(), &plan, FleetOptions::default());
    let meta = RequestMeta {
        method: "GET",
        path: "/",
        request: "r",
    };
    lim.acquire(&meta).await.unwrap();
    // The slots granted are noted for the budget's status on a task of their own (notes.rs).
    for _ in 0..100 {
        if !keys_matching(&mut c, "{pacer:budget:acme}:granted")
            .await
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.leave().await.unwrap(), "the budget's last process");
    let keys = keys_matching(&mut c, "{pacer:budget:acme}*").await;
    assert_eq!(
        keys,
        [
            "{pacer:budget:acme}:def:org",
            // the slots granted, for the budget's status (notes.rs, status.rs)
            "{pacer:budget:acme}:granted",
            "{pacer:budget:acme}:limit:org",
            // the test's share of the limit and the budget's registry of tests (fair.rs)
            "{pacer:budget:acme}:limit:org:test:test-a",
            "{pacer:budget:acme}:tests"
        ],
        "the budget outlives its last test"
    );
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut c).await.unwrap();
        let idle = BUDGET_IDLE_MIN.as_millis() as i64;
        assert!(ttl > idle - 5_000 && ttl <= idle + 2_000, "{k}: {ttl} ms");
    }
    // the first declarer is remembered while the budget lives
    let b = Fleet::connect(budget_cfg(&r, "test-b", "acme"))
        .await
        .unwrap();
    let e = b.declare(&[limit("org", "50/s", 1)]).await.unwrap_err();
    assert!(e.to_string().contains("\"test-a\""), "{e}");
    b.leave().await.unwrap();
    // nothing refreshes them now: gone after the idle time
    tokio::time::sleep(BUDGET_IDLE_MIN + Duration::from_secs(2)).await;
    assert!(
        keys_matching(&mut c, "{pacer:budget:acme}*")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_budget_idle_time_out_of_bounds_is_refused() {
    let r = RedisServer::start();
    let mut c = budget_cfg(&r, "t", "acme");
    c.budget_idle = Duration::from_secs(1);
    let e = Fleet::connect(c).await.unwrap_err().to_string();
    assert!(e.contains("idle time"), "{e}");
}

#[tokio::test]
async fn the_token_cache_has_one_refresher_and_drops_only_the_token_that_failed() {
    let r = RedisServer::start();
    let a = Fleet::connect(cfg(&r, "t")).await.unwrap();
    let b = Fleet::connect(cfg(&r, "t")).await.unwrap();
    let (sa, sb) = (TokenStore::new(a), TokenStore::new(b));
    assert_eq!(sa.get("g").await.unwrap(), None);
    assert!(sa.try_lock("g", Duration::from_secs(5)).await.unwrap());
    assert!(!sb.try_lock("g", Duration::from_secs(5)).await.unwrap());
    // b waits for the token; a stores it and b wakes up at once
    let waiter = tokio::spawn({
        let sb = sb.clone();
        async move {
            let t0 = tokio::time::Instant::now();
            sb.wait_for_token("g", Duration::from_secs(5)).await;
            t0.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t1 = Token::new("t-1");
    sa.put("g", &t1, Duration::from_secs(30)).await.unwrap();
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    let (got, ttl) = sb.get("g").await.unwrap().unwrap();
    assert_eq!(got, t1);
    assert!(ttl > Duration::from_secs(29) && ttl <= Duration::from_secs(30));
    // the lock went with the put
    assert!(sb.try_lock("g", Duration::from_secs(5)).await.unwrap());
    sb.unlock("g").await.unwrap();
    // a 401 with an older token does not drop the current one
    assert!(!sb.invalidate("g", &Token::new("t-0")).await.unwrap());
    assert!(sb.invalidate("g", &t1).await.unwrap());
    assert_eq!(sa.get("g").await.unwrap(), None);
}

const META: RequestMeta<'static> = RequestMeta {
    method: "GET",
    path: "/x",
    request: "x",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_together_stay_at_the_fleet_rate() {
    let r = RedisServer::start();
    let limits = [limit("l", "200/s", 1)];
    let mut tasks = Vec::new();
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_millis(1500);
    for _ in 0..2 {
        let f = Fleet::connect(cfg(&r, "rate")).await.unwrap();
        let lim = Arc::new(FleetLimiter::new(f, &limits, FleetOptions::default()));
        for _ in 0..20 {
            let lim = lim.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u32;
                while lim.acquire(&META).await.is_ok() && tokio::time::Instant::now() < end {
                    n += 1;
                }
                n
            }));
        }
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let rate = f64::from(total) / 1.5;
    let pacing = pacing_rate_for(&limits[0]);
    assert!(
        rate <= pacing * 1.02 + 2.0 && rate >= pacing * 0.9,
        "{rate:.1}/s, paced at {pacing:.1}/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_token_bucket_at_its_rate_and_never_overfill_it() {
    let r = RedisServer::start();
    let mut bucket = limit("b", "50/s", 10);
    bucket.shape = pacer_plan::LimitShape::TokenBucket;
    let pacing = super::fleet_pacing(&bucket, crate::gcra::DEFAULT_SPREAD);
    // 50/s with D = 150 ms: 7.5 tokens of spread, 8 of the 10 kept back; the rate is the
    // bucket's own (less 0.5%).
    assert_eq!(pacing.burst, 2, "{pacing:?}");
    assert!(pacing.rate >= 0.97 * 50.0, "{pacing:?}");
    let limits = [bucket];
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let f = Fleet::connect(cfg(&r, "bucket")).await.unwrap();
        let lim = Arc::new(FleetLimiter::new(f, &limits, FleetOptions::default()));
        for _ in 0..10 {
            let lim = lim.clone();
            tasks.push(tokio::spawn(async move {
                let mut at = Vec::new();
                while lim.acquire(&META).await.is_ok() && tokio::time::Instant::now() < end {
                    at.push(start.elapsed().as_secs_f64());
                }
                at
            }));
        }
    }
    let mut grants = Vec::new();
    for t in tasks {
        grants.extend(t.await.unwrap());
    }
    grants.sort_by(f64::total_cmp);
    let rate = grants.len() as f64 / 2.0;
    assert!(
        (0.9 * 50.0..=50.0 + 10.0 / 2.0).contains(&rate),
        "{rate:.1}/s from {} grants",
        grants.len()
    );
    // The server's bucket (10 tokens, 50/s, full at the start) accepts every grant as it was
    // made: the tokens pacer kept back are left for the spread.
    let (mut tokens, mut last, mut refused) = (10.0f64, 0.0f64, 0);
    for g in grants {
        tokens = (tokens + (g - last) * 50.0).min(10.0);
        last = g;
        if tokens >= 1.0 - 1e-9 {
            tokens -= 1.0;
        } else {
            refused += 1;
        }
    }
    assert_eq!(refused, 0);
}

fn pacing_rate_for(l: &Limit) -> f64 {
    super::fleet_pacing_rate(l, crate::gcra::DEFAULT_SPREAD)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_reaches_the_other_worker_and_safe_mode_is_bounded_then_recovers() {
    let mut r = RedisServer::start();
    let limits = [limit("l", "100/s", 1)];
    let fa = Fleet::connect(cfg(&r, "p")).await.unwrap();
    let fb = Fleet::connect(cfg(&r, "p")).await.unwrap();
    let a = FleetLimiter::new(fa, &limits, FleetOptions::default());
    let b = FleetLimiter::new(fb.clone(), &limits, FleetOptions::default());
    a.acquire(&META).await.unwrap();
    b.acquire(&META).await.unwrap();
    // a 429 seen by a pauses b
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
    assert_eq!(b.report()[0].pauses, 1);

    // Redis gone: safe mode for 800 ms, then requests fail with the reason
    r.stop();
    let t0 = tokio::time::Instant::now();
    let mut sent = 0;
    let err = loop {
        match b.acquire(&META).await {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
    };
    let el = t0.elapsed();
    assert!(sent > 0, "safe mode sends at a safe share");
    assert!(
        el >= Duration::from_millis(800) && el < Duration::from_secs(3),
        "{el:?}"
    );
    // at most about half the rate of the fleet of 2 (plus the lease in hand)
    assert!(
        f64::from(sent) <= 0.8 * 100.0 / 2.0 / 2.0 * 1.0 + 15.0,
        "{sent} in safe mode"
    );
    assert!(err.to_string().contains("safe-mode bound"), "{err}");
    let rep = &b.report()[0];
    let fl = rep.fleet.as_ref().unwrap();
    assert!(fl.safe_mode >= Duration::from_millis(790), "{fl:?}");
    assert!(fl.unavailable_reason.is_some());

    // back: it resumes by itself
    r.restart();
    let t0 = tokio::time::Instant::now();
    loop {
        if b.acquire(&META).await.is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no recovery after Redis came back"
        );
    }
    assert_eq!(fb.mode().0, Mode::Healthy);
}

#[tokio::test]
async fn auth_goes_in_the_url_and_never_shows_in_errors() {
    let r = RedisServer::start_with(Some("s3cret-pw"));
    let f = Fleet::connect(cfg(&r, "auth")).await.unwrap();
    assert_eq!(f.workers(), 1);
    let wrong = FleetConfig::new(format!("redis://:wrong-pw@127.0.0.1:{}", r.port), "auth");
    let e = Fleet::connect(wrong).await.unwrap_err().to_string();
    assert!(!e.contains("wrong-pw"), "{e}");
    assert!(e.contains("127.0.0.1"), "{e}");
    let none = FleetConfig::new(format!("redis://127.0.0.1:{}", r.port), "auth");
    assert!(Fleet::connect(none).await.is_err());
    assert!(!format!("{:?}", cfg(&r, "auth")).contains("s3cret-pw"));
}
