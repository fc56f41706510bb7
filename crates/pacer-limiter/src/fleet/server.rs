//! The server's rate-limit headers in a fleet: each process reads them from its own answers
//! into a [`Headroom`] per fleet limit (every process sees the same organisation-wide
//! remaining), and steers the shared GCRA by the rate it passes to `lease.lua` in place of the
//! ceiling (the script is unchanged: a lease's rate is an argument; [`Headroom::fleet_rate`]).
//! An aligned fixed window is leased at its own rate `(L - 1)/W` less the reserve, since the
//! window's requests then fit it wherever it starts. A process tells its fleet's use from
//! others' traffic by the fleet's schedule: each lease answers how many slots the fleet had
//! been granted on the limit before it (the `granted` count in the limit's state), so the
//! fleet's use between two of this process's answers is read off the schedule, and what the
//! server counted beyond it is others' ([`Headroom::in_fleet`]); the lease rate leaves their
//! rate, so when production rises the fleet's share falls within a window, and comes back
//! when it falls. A fleet does not hold on a spent window: a process hears a fraction of the
//! answers, late, and a hold on stale news would drop the slots it leased (measured: windows
//! 9% short); a 429 still pauses the fleet.
//!
//! On a budget, what the server last said is noted in Redis, at most once per [`NOTE_EVERY`]
//! per process, under `<tag>:server:<limit>` (a HASH: `remaining`, `limit`, `reset_at_ms`, `seen_ms`,
//! `others_rate`; Unix milliseconds), for the budget's status ([`read`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pacer_plan::Limit;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::notes::NOTE_EVERY;
use super::{Fleet, FleetError};
use crate::headroom::{Headroom, HeadroomState, ServerReport};

/// One fleet limit's view of the server.
struct View {
    headroom: Headroom,
    last_note: Option<Instant>,
}

/// Every fleet limit's view of the server, in the limiter's order.
pub(crate) struct ServerViews {
    epoch: Instant,
    views: Mutex<Vec<View>>,
}

/// What a process last heard from the server about one limit, as kept in Redis.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerState {
    /// Requests the server said may still be sent (everyone's use counted).
    pub remaining: u64,
    /// The limit the server states, if it does.
    pub limit: Option<u64>,
    /// When the server's window ends (Unix ms), if it said.
    pub reset_at_ms: Option<u64>,
    /// When this was heard (Unix ms).
    pub seen_ms: u64,
    /// Others' traffic on the limit as measured (requests per second; 0 when not measured).
    pub others_rate: f64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ServerViews {
    /// For the fleet limits and the rate each is paced at without headers.
    pub(crate) fn new<'a>(limits: impl Iterator<Item = (&'a Limit, f64)>) -> Self {
        Self {
            epoch: Instant::now(),
            views: Mutex::new(
                limits
                    .map(|(l, paced)| View {
                        headroom: Headroom::new(l, paced).in_fleet(),
                        last_note: None,
                    })
                    .collect(),
            ),
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// An answer about limit `i`; returns the state to note in Redis when one is due.
    pub(crate) fn observe(
        &self,
        i: usize,
        r: &ServerReport,
        sent_ago: Duration,
        now: Instant,
    ) -> Option<ServerState> {
        let now_ns = self.ns(now);
        let mut views = self.views.lock();
        let v = views.get_mut(i)?;
        v.headroom.observe(r, sent_ago, now_ns);
        if v.last_note
            .is_some_and(|t| now.saturating_duration_since(t) < NOTE_EVERY)
        {
            return None;
        }
        v.last_note = Some(now);
        let st = v.headroom.state();
        tracing::debug!(
            limit = i,
            remaining = r.remaining,
            others_rate = st.others_rate,
            "the server's headers (once a second)"
        );
        let wall = unix_ms();
        Some(ServerState {
            remaining: r.remaining,
            limit: r.limit,
            reset_at_ms: st
                .reset_at
                .map(|end| wall.saturating_add(end.saturating_sub(now_ns) / 1_000_000)),
            seen_ms: wall,
            others_rate: st.others_rate,
        })
    }

    /// A request of `limits` was sent now by this process.
    pub(crate) fn granted(&self, limits: &[usize], now: Instant) {
        let now_ns = self.ns(now);
        let mut views = self.views.lock();
        for &i in limits {
            if let Some(v) = views.get_mut(i) {
                v.headroom.granted(now_ns);
            }
        }
    }

    /// A lease granted this process `n` slots of limit `i` at `offsets` from `received`, after
    /// the fleet's `before` slots on it (`lease.lua`'s count).
    pub(crate) fn leased(&self, i: usize, before: u64, offsets: &[Duration], received: Instant) {
        let (Some(first), Some(last)) = (offsets.first(), offsets.last()) else {
            return;
        };
        let n = offsets.len() as u64;
        let at = |o: &Duration| {
            self.ns(received)
                .saturating_add(u64::try_from(o.as_nanos()).unwrap_or(u64::MAX))
        };
        let mut views = self.views.lock();
        if let Some(v) = views.get_mut(i) {
            v.headroom.fleet_slots(
                (at(first), before.saturating_add(1)),
                (at(last), before.saturating_add(n)),
            );
        }
    }

    /// The rate to lease limit `i` at: `paced` (the ceiling the lease would use) unless the
    /// server's headers steer the limit (an aligned fixed window may go above it; anything
    /// else only below).
    pub(crate) fn lease_rate(&self, i: usize, paced: f64, now: Instant) -> f64 {
        let now_ns = self.ns(now);
        let mut views = self.views.lock();
        match views.get_mut(i).filter(|v| v.headroom.steers()) {
            Some(v) => v.headroom.fleet_rate(now_ns),
            None => paced,
        }
    }

    /// What limit `i` last heard (for reports).
    pub(crate) fn state(&self, i: usize) -> Option<HeadroomState> {
        self.views.lock().get(i).map(|v| v.headroom.state())
    }
}

/// Note what the server said about `limit` in Redis (on its own task: never on a request's
/// path; a failed write is only logged). Only on a budget: the note is for the budget's status
/// (a fleet of one test has no reader, and its Redis calls per request stay as they were).
pub(crate) fn note(fleet: &Arc<Fleet>, limit: &str, st: ServerState, keep_ms: u64) {
    if fleet.keys().budget().is_none() {
        return;
    }
    let fleet = fleet.clone();
    let key = fleet.keys().server(limit);
    tokio::spawn(async move {
        // A process leaving deletes the test's keys: a note written after would outlive it.
        if fleet.is_leaving() {
            return;
        }
        // Every field, each time (an empty one: the server did not say), so nothing of an
        // older note lingers.
        let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
        let fields: [(&str, String); 5] = [
            ("remaining", st.remaining.to_string()),
            ("limit", opt(st.limit)),
            ("reset_at_ms", opt(st.reset_at_ms)),
            ("seen_ms", st.seen_ms.to_string()),
            ("others_rate", format!("{:.3}", st.others_rate)),
        ];
        let r = fleet
            .query::<()>("noting the server's headers", 2, |c| {
                Box::pin(async move {
                    redis::pipe()
                        .hset_multiple(&key, &fields)
                        .ignore()
                        .pexpire(&key, i64::try_from(keep_ms).unwrap_or(i64::MAX))
                        .ignore()
                        .query_async(c)
                        .await
                })
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "the server's headers were not noted");
        }
    });
}

/// The largest number a noted field may hold and still be read (a hostile or corrupt entry
/// cannot make a status hold absurd values).
const MAX_NOTED: u64 = 1 << 53;

/// What the fleet's processes last noted of what the server said about `limit` (`None`: nothing
/// noted, or expired). For a budget's status (the operator's `RateBudget`): fields that do not
/// parse, or absurd numbers, are left out.
pub async fn read(fleet: &Arc<Fleet>, limit: &str) -> Result<Option<ServerState>, FleetError> {
    let key = fleet.keys().server(limit);
    let map: HashMap<String, String> = fleet
        .query("reading the server's headers", 1, |c| {
            Box::pin(async move { redis::cmd("HGETALL").arg(&key).query_async(c).await })
        })
        .await?;
    Ok(parse(&map))
}

/// A noted HASH as a [`ServerState`]: `None` without its `remaining` and `seen_ms`.
pub(crate) fn parse(map: &HashMap<String, String>) -> Option<ServerState> {
    let num = |k: &str| {
        map.get(k)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n <= MAX_NOTED)
    };
    Some(ServerState {
        remaining: num("remaining")?,
        limit: num("limit"),
        reset_at_ms: num("reset_at_ms"),
        seen_ms: num("seen_ms")?,
        others_rate: map
            .get("others_rate")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|r| r.is_finite() && *r >= 0.0 && *r <= MAX_NOTED as f64)
            .unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Feedback, Limiter, PauseOrigin, RequestMeta};

    #[tokio::test]
    async fn what_the_server_said_is_noted_in_redis_and_read_back() {
        let r = super::super::redis_tests::RedisServer::start();
        let mut cfg = super::super::FleetConfig::new(r.url(), "t");
        cfg.budget = Some("acme".into());
        let fleet = Fleet::connect(cfg).await.unwrap();
        let rate: pacer_plan::Rate = "100/2s".parse().unwrap();
        let limit = Limit {
            name: "org".into(),
            limit: rate,
            shape: pacer_plan::LimitShape::FixedWindow,
            burst: 1,
            window: rate.per(),
            scope: pacer_plan::spec::LimitScope::Fleet,
            method_in: vec![],
            path_prefix: None,
            request_in: vec![],
            adaptive: false,
            spread: None,
            reserve: None,
        };
        let lim = super::super::FleetLimiter::new(
            fleet.clone(),
            std::slice::from_ref(&limit),
            super::super::FleetOptions::default(),
        );
        assert_eq!(read(&fleet, "org").await.unwrap(), None);
        let meta = RequestMeta {
            method: "GET",
            path: "/",
            request: "r",
        };
        let before = unix_ms();
        lim.feedback(
            &meta,
            &Feedback {
                status: 200,
                retry_after: None,
                pause_origin: PauseOrigin::Server,
                stated_rate: None,
                server: Some(ServerReport {
                    remaining: 57,
                    reset: Some(Duration::from_secs(2)),
                    limit: Some(100),
                }),
                sent_ago: Duration::from_millis(1),
            },
        );
        // Written on its own task: wait for it (bounded).
        let mut st = None;
        for _ in 0..100 {
            st = read(&fleet, "org").await.unwrap();
            if st.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let st = st.expect("noted within a second");
        assert_eq!((st.remaining, st.limit), (57, Some(100)));
        assert!(st.seen_ms >= before, "{st:?}");
        let reset = st.reset_at_ms.expect("a reset") - st.seen_ms;
        assert!((1900..=2000).contains(&reset), "{st:?}");
        // The lease's rate is the window's own, (100 - 1)/2 s, above the paced rate.
        let views = ServerViews::new(std::iter::once((&limit, 48.0)));
        assert_eq!(
            views.lease_rate(0, 48.0, Instant::now()),
            48.0,
            "nothing heard yet"
        );
        let rep = ServerReport {
            remaining: 57,
            reset: Some(Duration::from_secs(2)),
            limit: Some(100),
        };
        views.observe(0, &rep, Duration::ZERO, Instant::now());
        let rate = views.lease_rate(0, 48.0, Instant::now());
        assert!((rate - 49.5).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn a_noted_hash_parses_and_garbage_is_left_out() {
        let map: HashMap<String, String> = [
            ("remaining", "42"),
            ("seen_ms", "1700000000000"),
            ("limit", "x"),
            ("reset_at_ms", "99999999999999999999"),
            ("others_rate", "NaN"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let st = parse(&map).unwrap();
        assert_eq!(
            st,
            ServerState {
                remaining: 42,
                limit: None,
                reset_at_ms: None,
                seen_ms: 1_700_000_000_000,
                others_rate: 0.0
            }
        );
        assert_eq!(parse(&HashMap::new()), None);
    }
}
