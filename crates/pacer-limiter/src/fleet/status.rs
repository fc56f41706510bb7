//! A budget's state as it stands in Redis, read from outside the fleet (the operator's
//! `RateBudget` status, docs/kubernetes.md): the processes that beat in its workers set, each
//! limit's pause and the slots it was granted, the definitions recorded, the last 429. One
//! script reads it all at one instant of the Redis server's clock (`lua/status.lua`).
//!
//! The reader joins nothing: it registers no worker and writes no key. Redis replies are
//! untrusted: a reply of the wrong shape is [`FleetError::Reply`] naming the field, never a
//! panic, and text from Redis (process ids, definitions) is bounded before it is kept.

use std::time::Duration;

use redis::Value;

use super::{FleetError, Keys, redacted_url, scripts};

/// A process is shown while its last heartbeat is younger than this: the bound after which
/// the fleet itself counts it gone.
pub const PROCESS_FRESH: Duration = super::HEARTBEAT_STALE;
/// The most processes a snapshot keeps (the count stays exact): a status is not a process list.
pub const MAX_PROCESSES: usize = 200;
/// The most characters kept of any text Redis sends back (ids, definitions, limit names).
pub const MAX_TEXT: usize = 200;
/// The most limits one read asks for (keys of one script call).
pub const MAX_LIMITS: usize = 64;
/// How long a read may take, connection included.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// One process of the budget (a worker pod, a `pacer run`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Its id in the workers set (`<host>-<pid>-<random>`; a pod's host is its name).
    pub id: String,
    /// Its last heartbeat, ms of the Redis server's clock.
    pub last_beat_ms: u64,
}

/// One limit of the budget.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitSnapshot {
    pub name: String,
    /// Slots granted since `<tag>:granted` was created (it expires with the budget).
    pub granted: u64,
    /// A Retry-After pause in force: until when (ms of the Redis server's clock).
    pub paused_until_ms: Option<u64>,
    /// The definition recorded for the budget, and the test that declared it first.
    pub definition: Option<String>,
    pub declared_by: Option<String>,
    /// What the server's rate-limit headers last said of it, as a process noted it
    /// (`<tag>:server:<limit>`, [`super::server`]): what is left, its limit, its reset.
    pub server: Option<super::server::ServerState>,
}

/// The last 429 a process of the budget saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Last429 {
    /// The limits the refused request matched.
    pub limits: Vec<String>,
    pub at_ms: u64,
    pub retry_after: Option<Duration>,
    pub process: String,
    /// The limit the server stated in that answer (`X-RateLimit-Limit`, `inin-ratelimit-allowed`,
    /// IETF `q`), when it did.
    pub server_limit: Option<u64>,
}

/// A budget at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetSnapshot {
    /// The Redis server's clock (ms) when it was read.
    pub now_ms: u64,
    /// Processes with a heartbeat within [`PROCESS_FRESH`] (at most [`MAX_PROCESSES`]).
    pub processes: Vec<Process>,
    /// How many there are (also those not kept).
    pub process_count: usize,
    pub limits: Vec<LimitSnapshot>,
    pub last_429: Option<Last429>,
    /// The budget's registry of tests (`<tag>:tests`, [`super::fair`]): each test's weight,
    /// share and rate, LoadTests and laptops alike (at most [`MAX_PROCESSES`]).
    pub tests: Vec<super::fair::BudgetTest>,
}

impl BudgetSnapshot {
    /// Slots granted per second to `limit` between `earlier` and this snapshot; `None` when it
    /// cannot be told (no earlier read, the clock did not move, the count was reset).
    pub fn rate_since(&self, earlier: &BudgetSnapshot, limit: &str) -> Option<f64> {
        let dt_ms = self.now_ms.checked_sub(earlier.now_ms).filter(|d| *d > 0)?;
        let now = self.limits.iter().find(|l| l.name == limit)?.granted;
        let then = earlier.limits.iter().find(|l| l.name == limit)?.granted;
        let n = now.checked_sub(then)?;
        Some(n as f64 * 1000.0 / dt_ms as f64)
    }
}

/// Reads budgets from one Redis.
pub struct BudgetReader {
    client: redis::Client,
    addr: String,
}

impl std::fmt::Debug for BudgetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetReader")
            .field("redis", &self.addr)
            .finish_non_exhaustive()
    }
}

const OP: &str = "the budget status script";

fn malformed(what: impl Into<String>) -> FleetError {
    FleetError::Reply {
        op: OP,
        what: what.into(),
    }
}

impl BudgetReader {
    /// A reader of the Redis at `url` (`redis://`, `rediss://`; the password is never shown:
    /// errors name the address without it). `ca_pem`: CA(s) to trust for `rediss://`.
    pub fn new(url: &str, ca_pem: Option<Vec<u8>>) -> Result<Self, FleetError> {
        let addr = redacted_url(url);
        let client = match ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            ),
            None => redis::Client::open(url),
        }
        .map_err(|e| FleetError::Connect {
            addr: addr.clone(),
            reason: format!("invalid URL or CA: {}", e.category()),
        })?;
        Ok(Self { client, addr })
    }

    /// Where it reads (without user or password).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Read budget `budget` (its name as in the plan's `budget:`) and its `limits`.
    pub async fn read(&self, budget: &str, limits: &[&str]) -> Result<BudgetSnapshot, FleetError> {
        if limits.len() > MAX_LIMITS {
            return Err(FleetError::Config(format!(
                "a budget status reads at most {MAX_LIMITS} limits, not {}",
                limits.len()
            )));
        }
        let keys = Keys::of_budget(budget)?;
        let timeout = || FleetError::Timeout {
            op: OP,
            timeout: READ_TIMEOUT,
        };
        let mut conn =
            tokio::time::timeout(READ_TIMEOUT, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| timeout())?
                .map_err(|e| FleetError::Connect {
                    addr: self.addr.clone(),
                    reason: e.to_string(),
                })?;
        let mut inv = scripts::STATUS.prepare_invoke();
        inv.key(keys.workers())
            .key(keys.last429())
            .key(keys.granted());
        for l in limits {
            inv.key(keys.limit(l));
        }
        for l in limits {
            inv.key(keys.definition(l));
        }
        for l in limits {
            inv.key(keys.server(l));
        }
        inv.arg(limits.len());
        let reply: Value = tokio::time::timeout(READ_TIMEOUT, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| timeout())?
            .map_err(|e| FleetError::Redis {
                op: OP,
                reason: e.to_string(),
            })?;
        let mut snapshot = parse(&reply, limits)?;
        let mut tests = tokio::time::timeout(READ_TIMEOUT, super::fair::tests(&mut conn, budget))
            .await
            .map_err(|_| timeout())??;
        tests.truncate(MAX_PROCESSES);
        snapshot.tests = tests;
        Ok(snapshot)
    }
}

/// Text from Redis as it came (lossy UTF-8), for a caller that splits it first.
fn raw_text(v: &Value, field: &str) -> Result<String, FleetError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        _ => Err(malformed(format!("{field} is not text"))),
    }
}

/// Text that may be shown: no control characters, at most [`MAX_TEXT`] characters.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect()
}

fn text(v: &Value, field: &str) -> Result<String, FleetError> {
    raw_text(v, field).map(|s| clean(&s))
}

fn optional_raw_text(v: &Value, field: &str) -> Result<Option<String>, FleetError> {
    match v {
        Value::Nil | Value::Boolean(false) => Ok(None),
        other => raw_text(other, field).map(Some),
    }
}

fn unsigned(v: &Value, field: &str) -> Result<u64, FleetError> {
    match v {
        Value::Int(i) => u64::try_from(*i).map_err(|_| malformed(format!("{field} is negative"))),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| malformed(format!("{field} is not a whole number"))),
        _ => Err(malformed(format!("{field} is not a number"))),
    }
}

fn array<'a>(v: &'a Value, field: &str) -> Result<&'a [Value], FleetError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(&[]),
        _ => Err(malformed(format!("{field} is not an array"))),
    }
}

/// `field value field value ...` into pairs (an odd count is malformed).
fn pairs<'a>(v: &'a Value, field: &str) -> Result<Vec<(&'a Value, &'a Value)>, FleetError> {
    let a = array(v, field)?;
    if a.len() % 2 != 0 {
        return Err(malformed(format!("{field} has an odd number of entries")));
    }
    Ok(a.chunks_exact(2).map(|c| (&c[0], &c[1])).collect())
}

/// The pause end (µs of the Redis clock) in a limit's state
/// (`v1 tat pause factor granted 0 0 0 sustained`,
/// lua/state.lua). A state that does not parse is what the scripts take it for: a fresh limit.
fn pause_us(raw: &str) -> Option<f64> {
    let f: Vec<&str> = raw.split_whitespace().collect();
    if f.len() != 9 || f[0] != "v1" {
        return None;
    }
    let pause: f64 = f[2].parse().ok()?;
    (pause.is_finite() && pause >= 0.0).then_some(pause)
}

/// Parse `lua/status.lua`'s reply for `limits`.
fn parse(v: &Value, limits: &[&str]) -> Result<BudgetSnapshot, FleetError> {
    let a = array(v, "the reply")?;
    if a.len() != 7 {
        return Err(malformed(format!("{} fields instead of 7", a.len())));
    }
    let now_us = unsigned(&a[0], "the time")?;
    let now_ms = now_us / 1000;

    let mut processes = Vec::new();
    let mut process_count = 0;
    for (id, score) in pairs(&a[1], "the workers")? {
        let beat = match score {
            Value::Double(d) if d.is_finite() && *d >= 0.0 => *d as u64,
            other => unsigned(other, "a heartbeat")?,
        };
        if now_ms.saturating_sub(beat) > PROCESS_FRESH.as_millis() as u64 {
            continue;
        }
        process_count += 1;
        if processes.len() < MAX_PROCESSES {
            processes.push(Process {
                id: text(id, "a worker id")?,
                last_beat_ms: beat,
            });
        }
    }

    let mut last = std::collections::BTreeMap::new();
    for (k, val) in pairs(&a[2], "the last 429")? {
        last.insert(text(k, "a last-429 field")?, val);
    }
    let last_429 = if last.is_empty() {
        None
    } else {
        let get = |f: &str| {
            last.get(f)
                .copied()
                .ok_or_else(|| malformed(format!("the last 429 has no {f}")))
        };
        let retry_ms = unsigned(get("retry_after_ms")?, "retry_after_ms")?;
        Some(Last429 {
            limits: text(get("limits")?, "the last 429's limits")?
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            at_ms: unsigned(get("at_ms")?, "at_ms")?,
            retry_after: (retry_ms > 0).then(|| Duration::from_millis(retry_ms)),
            process: text(get("process")?, "the last 429's process")?,
            // Absent in a record of an older pacer, empty when the server stated none.
            server_limit: match last.get("server_limit") {
                Some(v) if !text(v, "server_limit")?.is_empty() => {
                    Some(unsigned(v, "server_limit")?)
                }
                _ => None,
            },
        })
    };

    let mut granted = std::collections::BTreeMap::new();
    for (k, n) in pairs(&a[3], "the granted counts")? {
        granted.insert(text(k, "a limit name")?, unsigned(n, "a granted count")?);
    }
    let states = array(&a[4], "the states")?;
    let defs = array(&a[5], "the definitions")?;
    let servers = array(&a[6], "the server records")?;
    if states.len() != limits.len() || defs.len() != limits.len() || servers.len() != limits.len() {
        return Err(malformed(format!(
            "{} states, {} definitions and {} server records for {} limits",
            states.len(),
            defs.len(),
            servers.len(),
            limits.len()
        )));
    }
    let mut out = Vec::with_capacity(limits.len());
    for (i, name) in limits.iter().enumerate() {
        let paused_until_ms = optional_raw_text(&states[i], "a limit's state")?
            .and_then(|raw| pause_us(&raw))
            .map(|p| (p / 1000.0) as u64)
            .filter(|p| *p > now_ms);
        // `<test>\n<definition>` (lua/declare.lua).
        let (declared_by, definition) = match optional_raw_text(&defs[i], "a definition")? {
            Some(raw) => match raw.split_once('\n') {
                Some((test, def)) => (Some(clean(test)), Some(clean(def))),
                None => (None, Some(clean(&raw))),
            },
            None => (None, None),
        };
        let mut server = std::collections::HashMap::new();
        for (k, val) in pairs(&servers[i], "a server record")? {
            server.insert(
                text(k, "a server record's field")?,
                text(val, "a server record's value")?,
            );
        }
        out.push(LimitSnapshot {
            server: super::server::parse(&server),
            name: (*name).to_string(),
            granted: granted.get(*name).copied().unwrap_or(0),
            paused_until_ms,
            definition,
            declared_by,
        });
    }
    Ok(BudgetSnapshot {
        now_ms,
        processes,
        process_count,
        limits: out,
        last_429,
        tests: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn reply(workers: Vec<Value>, last: Vec<Value>, granted: Vec<Value>) -> Value {
        Value::Array(vec![
            bulk("1700000010000000"),
            Value::Array(workers),
            Value::Array(last),
            Value::Array(granted),
            Value::Array(vec![bulk("v1 1 1700000012000000 1 0 0 1 0 0")]),
            Value::Array(vec![bulk(
                "t-1\n5/s within 1s, burst 1, shape sliding-window",
            )]),
            Value::Array(vec![Value::Array(vec![
                bulk("remaining"),
                bulk("7"),
                bulk("seen_ms"),
                bulk("1700000009500"),
                bulk("limit"),
                bulk("50"),
            ])]),
        ])
    }

    #[test]
    fn a_reply_is_parsed_strictly() {
        let v = reply(
            vec![
                bulk("pod-a-1-ff"),
                bulk("1700000009000"),
                bulk("old"),
                bulk("1"),
            ],
            vec![
                bulk("limits"),
                bulk("org"),
                bulk("at_ms"),
                bulk("1700000008000"),
                bulk("retry_after_ms"),
                bulk("2000"),
                bulk("process"),
                bulk("pod-a-1-ff"),
                bulk("server_limit"),
                bulk("50"),
            ],
            vec![bulk("org"), bulk("42")],
        );
        let s = parse(&v, &["org"]).expect("a valid reply");
        assert_eq!(s.now_ms, 1_700_000_010_000);
        assert_eq!(s.process_count, 1, "a stale process is not counted");
        assert_eq!(s.processes[0].id, "pod-a-1-ff");
        assert_eq!(s.limits[0].granted, 42);
        assert_eq!(s.limits[0].paused_until_ms, Some(1_700_000_012_000));
        assert_eq!(s.limits[0].declared_by.as_deref(), Some("t-1"));
        assert_eq!(
            s.limits[0].definition.as_deref(),
            Some("5/s within 1s, burst 1, shape sliding-window")
        );
        let l = s.last_429.as_ref().expect("a last 429");
        assert_eq!(l.limits, ["org"]);
        assert_eq!(l.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(l.server_limit, Some(50));
        let server = s.limits[0].server.as_ref().expect("the server's record");
        assert_eq!((server.remaining, server.limit), (7, Some(50)));

        let mut later = parse(&v, &["org"]).expect("valid");
        later.now_ms += 2000;
        later.limits[0].granted = 52;
        assert_eq!(later.rate_since(&s, "org"), Some(5.0));
        assert_eq!(s.rate_since(&later, "org"), None, "time went backwards");
    }

    #[test]
    fn malformed_replies_are_errors_never_panics() {
        for bad in [
            Value::Int(1),
            Value::Array(vec![]),
            reply(vec![bulk("odd")], vec![], vec![]),
            reply(vec![], vec![bulk("limits"), bulk("x")], vec![]),
            reply(vec![], vec![], vec![bulk("org"), bulk("-3")]),
            reply(vec![bulk("w"), bulk("soon")], vec![], vec![]),
        ] {
            let e = parse(&bad, &["org"]).expect_err("malformed");
            assert!(matches!(e, FleetError::Reply { .. }), "{e}");
        }
        // Two limits asked, one state: malformed.
        let e = parse(&reply(vec![], vec![], vec![]), &["org", "b"]).expect_err("short");
        assert!(e.to_string().contains("for 2 limits"), "{e}");
    }

    #[tokio::test]
    async fn a_redis_that_does_not_answer_is_named_without_its_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        // Nothing listens there now.
        let reader = BudgetReader::new(&format!("redis://pacer:hunter2@127.0.0.1:{port}"), None)
            .expect("a reader");
        assert!(!format!("{reader:?}").contains("hunter2"));
        let e = reader
            .read("b", &["org"])
            .await
            .expect_err("nothing answers");
        let text = format!("{} {e}", reader.addr());
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }

    #[test]
    fn a_state_that_does_not_parse_is_a_fresh_limit() {
        assert_eq!(pause_us("v1 1 5 1 0 0 1 0 0"), Some(5.0));
        assert_eq!(pause_us("v2 1 5 1 0 0 1 0 0"), None);
        assert_eq!(pause_us("v1 1 nan 1 0 0 1 0 0"), None);
        assert_eq!(pause_us("v1 1 -5 1 0 0 1 0 0"), None);
        assert_eq!(pause_us(""), None);
    }
}
