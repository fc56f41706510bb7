//! Fair shares between the tests of one budget, and the budget's registry of those tests.
//!
//! Without this, the tests on a budget compete for its one GCRA schedule: each gets about what
//! it asks for as often as the others, whatever its importance, and a test that asks for leases
//! more often takes more. With it each test may take slots of the budget's schedule only as fast
//! as its share: `weight / (its weight + the weights of the other tests with a backlog)` of each
//! limit. A test alone, or next to tests that need less than their shares, may use the whole
//! limit (work-conserving); tests with a backlog split it by weight; none starves while another
//! has a backlog. The decision is made in `lua/lease.lua` (one place, atomically with the grant);
//! this module passes it what it needs and reads the registry back for the budget's status.
//!
//! The registry is a HASH `<tag>:tests`, test id -> `"t1 weight backlog_ms seen_ms rate
//! win_start_ms win_count"` (ms of the Redis server's clock; `rate`: tokens granted to the test
//! per second over its last whole second). Leases write it; heartbeats refresh `seen_ms` and
//! remove tests not seen for [`TEST_STALE`].

use std::time::Duration;

use redis::Value;

use super::keys::Keys;
use super::{FleetError, HEARTBEAT_STALE, LEASE_MAX_SPAN};

/// A test counts as having a backlog for this long after a lease showed one (it wanted more
/// than it got). A hungry test asks for a lease about every [`LEASE_MAX_SPAN`] (200 ms), so one
/// late lease does not drop its claim (5 leases); a test that stopped wanting gives its share
/// back to the others within a second, well within a window of any limit worth sharing.
pub const BACKLOG_HOLD: Duration = Duration::from_secs(1);
/// How far a test may run ahead of its share: one lease span, so a lease is not cut short by
/// the share of the test that asks for it (the share binds over time, the budget's own GCRA at
/// every slot).
pub const SHARE_SLACK: Duration = LEASE_MAX_SPAN;
/// A test none of whose processes was seen (lease or heartbeat) for this long leaves the
/// registry: three heartbeats, the bound after which a worker no longer counts either. Its
/// share keys expire this long after their last slot.
pub const TEST_STALE: Duration = HEARTBEAT_STALE;

/// A process's requests that would wait this long for slots at its own recent rate mean its
/// test wants more than it gets (it is *hungry*). Two lease spans: a lease never covers more
/// than one span of the budget's schedule, so a test getting what it asks has at most about a
/// span of requests waiting (behind other tests' leases), and a test whose closed loop (VUs)
/// or full `maxInFlight` keeps more waiting is held back.
pub const HUNGRY_WAIT: Duration = Duration::from_millis(2 * LEASE_MAX_SPAN.as_millis() as u64);

/// A hungry process's test counts as having a backlog only while it is served at least this
/// share of an equal split of the limit between the tests active on the budget. Many requests
/// waiting do not by themselves mean a test is held back by the others: a test asking 20% of
/// the limit next to greedy ones waits behind their leases (each up to [`LEASE_MAX_SPAN`] of the
/// schedule) and may pile up requests while it is served all it asks; counting it would cap
/// the greedy tests at their shares and leave the rest of the limit unused. A test held to its
/// share by the others' shares is seen anyway: its own share stops its leases.
pub const HUNGRY_MIN_SHARE: f64 = 0.8;

/// The last argument of a lease that carries fair-share arguments (`lua/lease.lua`).
const FAIR_MARK: &str = "fair1";

/// Whether a process asking for `want` slots, with `need` requests waiting without a slot and
/// a demand of `demand` requests per second, wants more than it gets: more requests wait than
/// it may ask for at once, or than [`HUNGRY_WAIT`] of its demand.
pub(crate) fn hungry(need: usize, want: u32, demand: f64) -> bool {
    need > want as usize || need as f64 > demand * HUNGRY_WAIT.as_secs_f64()
}

/// Add this test's fair-share keys and arguments to a lease of the limits `limits` (names, in
/// the order of the lease's limit keys). The keys go after the limits' own keys, the arguments
/// after every other argument.
pub(crate) fn lease_tail<'a>(
    inv: &mut redis::ScriptInvocation<'_>,
    keys: &Keys,
    limits: impl Iterator<Item = &'a str>,
    weight: f64,
    hungry: bool,
) {
    for name in limits {
        inv.key(keys.share(name));
    }
    inv.key(keys.tests());
    inv.arg(keys.test())
        .arg(weight_arg(weight))
        .arg(u8::from(hungry))
        .arg(BACKLOG_HOLD.as_millis() as u64)
        .arg(SHARE_SLACK.as_micros() as u64)
        .arg(TEST_STALE.as_millis() as u64)
        .arg(HUNGRY_MIN_SHARE)
        .arg(FAIR_MARK);
}

/// A weight as the scripts read it (Lua's `tonumber`).
pub(crate) fn weight_arg(weight: f64) -> String {
    format!("{weight:.6}")
}

/// One test using a budget, as its registry says.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetTest {
    /// The test's id (a LoadTest's test id, `pacer run --fleet`, or `run-<pid>`).
    pub test: String,
    pub weight: f64,
    /// Whether it wanted more than it got within the last [`BACKLOG_HOLD`].
    pub backlog: bool,
    /// Tokens (requests through the budget's limits) granted to it per second, over its last
    /// whole second of leases.
    pub rate: f64,
    /// How long ago any of its processes was last seen.
    pub last_seen: Duration,
    /// Its share of each limit now: `weight / (sum of the weights of the tests with a
    /// backlog, itself included)` (the rule `lua/lease.lua` applies).
    pub share: f64,
}

/// The tests using budget `budget`, read from its Redis (any connection, no fleet needed),
/// sorted by test id.
pub async fn tests<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    budget: &str,
) -> Result<Vec<BudgetTest>, FleetError> {
    let keys = Keys::of_budget(budget)?;
    let mut pipe = redis::pipe();
    pipe.cmd("TIME").cmd("HGETALL").arg(keys.tests());
    let v: Value = pipe
        .query_async(conn)
        .await
        .map_err(|e| FleetError::Redis {
            op: "reading the budget's tests",
            reason: e.to_string(),
        })?;
    let (now_ms, all) = match &v {
        Value::Array(a) if a.len() == 2 => (time_ms(&a[0])?, &a[1]),
        _ => return Err(malformed("the reply is not TIME and HGETALL")),
    };
    parse_tests(all, now_ms)
}

const OP: &str = "reading the budget's tests";

fn malformed(what: impl Into<String>) -> FleetError {
    FleetError::Reply {
        op: OP,
        what: what.into(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn time_ms(v: &Value) -> Result<u64, FleetError> {
    let parts = match v {
        Value::Array(a) if a.len() == 2 => a,
        _ => return Err(malformed("TIME is not two numbers")),
    };
    let num = |v: &Value| -> Option<u64> {
        match v {
            Value::Int(i) => u64::try_from(*i).ok(),
            other => text(other)?.parse().ok(),
        }
    };
    let (s, us) = (num(&parts[0]), num(&parts[1]));
    s.zip(us)
        .and_then(|(s, us)| s.checked_mul(1000)?.checked_add(us / 1000))
        .ok_or_else(|| malformed("TIME is not two numbers"))
}

/// The registry's HGETALL (`field, value, ...`, or a RESP3 map) read at `now_ms` (Redis' clock).
/// A record of another format version is skipped (a newer pacer may write one); a record that
/// claims this version and does not parse is an error.
pub fn parse_tests(v: &Value, now_ms: u64) -> Result<Vec<BudgetTest>, FleetError> {
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Array(a) if a.len() % 2 == 0 => a.chunks(2).map(|c| (&c[0], &c[1])).collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        Value::Nil => Vec::new(),
        _ => return Err(malformed("the registry is not a hash")),
    };
    struct Row {
        test: String,
        weight: f64,
        backlog: bool,
        rate: f64,
        last_seen: Duration,
    }
    let mut rows = Vec::with_capacity(pairs.len());
    for (k, rec) in pairs {
        let test = text(k).ok_or_else(|| malformed("a test id is not text"))?;
        let rec = text(rec).ok_or_else(|| malformed(format!("test {test:?}: not text")))?;
        let f: Vec<&str> = rec.split_whitespace().collect();
        if f.first() != Some(&"t1") {
            continue;
        }
        let bad = |what: &str| malformed(format!("test {test:?}: {what}"));
        if f.len() != 7 {
            return Err(bad("a record of 7 fields expected"));
        }
        let num = |i: usize, what: &str| -> Result<f64, FleetError> {
            f[i].parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| bad(what))
        };
        let weight = num(1, "the weight")?;
        if weight <= 0.0 {
            return Err(bad("the weight is not positive"));
        }
        let backlog_ms = num(2, "the backlog time")?;
        let seen_ms = num(3, "the last sighting")?;
        let rate = num(4, "the rate")?;
        let now = now_ms as f64;
        rows.push(Row {
            test,
            weight,
            backlog: now - backlog_ms <= BACKLOG_HOLD.as_millis() as f64
                && now - seen_ms <= BACKLOG_HOLD.as_millis() as f64,
            rate,
            last_seen: Duration::from_millis((now - seen_ms).max(0.0) as u64),
        });
    }
    let backlogged: f64 = rows.iter().filter(|r| r.backlog).map(|r| r.weight).sum();
    let mut out: Vec<BudgetTest> = rows
        .into_iter()
        .map(|r| {
            let others = backlogged - if r.backlog { r.weight } else { 0.0 };
            BudgetTest {
                share: r.weight / (r.weight + others),
                test: r.test,
                weight: r.weight,
                backlog: r.backlog,
                rate: r.rate,
                last_seen: r.last_seen,
            }
        })
        .collect();
    out.sort_by(|a, b| a.test.cmp(&b.test));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Value {
        Value::BulkString(t.as_bytes().to_vec())
    }

    #[test]
    fn the_registry_parses_strictly_and_shares_go_by_weight_among_the_backlogged() {
        let now = 100_000;
        let v = Value::Array(vec![
            s("a"),
            s("t1 3.000000 99900 99950 74.500 99000 10"),
            s("b"),
            s("t1 1.000000 99800 99990 25.000 99000 3"),
            // no backlog for 5 s: its share is what it would get if it wanted more
            s("c"),
            s("t1 1.000000 95000 99990 5.000 99000 1"),
            // a newer format is skipped
            s("d"),
            s("t2 whatever"),
        ]);
        let t = parse_tests(&v, now).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].test, "a");
        assert!(t[0].backlog && t[1].backlog && !t[2].backlog);
        assert!((t[0].share - 0.75).abs() < 1e-9, "{t:?}");
        assert!((t[1].share - 0.25).abs() < 1e-9);
        assert!((t[2].share - 0.2).abs() < 1e-9);
        assert_eq!(t[0].last_seen, Duration::from_millis(50));
        assert_eq!(t[0].rate, 74.5);
        assert!(parse_tests(&Value::Nil, now).unwrap().is_empty());

        for bad in [
            Value::Int(1),
            Value::Array(vec![s("a")]),
            Value::Array(vec![s("a"), s("t1 1 2 3")]),
            Value::Array(vec![s("a"), s("t1 0 1 1 1 1 1")]),
            Value::Array(vec![s("a"), s("t1 -1 1 1 1 1 1")]),
            Value::Array(vec![s("a"), s("t1 nan 1 1 1 1 1")]),
            Value::Array(vec![s("a"), s("t1 1 x 1 1 1 1")]),
            Value::Array(vec![Value::Int(3), s("t1 1 1 1 1 1 1")]),
            Value::Array(vec![s("a"), Value::BulkString(vec![0xff])]),
        ] {
            assert!(parse_tests(&bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_process_is_hungry_when_more_requests_wait_than_it_can_ask_for_or_get_soon() {
        // more waiting than one lease may ask for
        assert!(hungry(40, 34, 1000.0));
        // 30 VUs at 50/s: each waits 600 ms
        assert!(hungry(30, 30, 50.0));
        // 20/s arrivals with 2 waiting: 100 ms
        assert!(!hungry(2, 2, 20.0));
        assert!(!hungry(0, 1, 0.0));
    }

    #[test]
    fn redis_time_is_checked() {
        assert_eq!(
            time_ms(&Value::Array(vec![s("1700000000"), s("123456")])).unwrap(),
            1_700_000_000_123
        );
        assert!(time_ms(&Value::Array(vec![s("-1"), s("0")])).is_err());
        assert!(time_ms(&Value::Array(vec![s("1")])).is_err());
        assert!(time_ms(&Value::Array(vec![s("99999999999999999999"), s("0")])).is_err());
    }
}
