//! The fleet's budget and tokens served by the controller, for fleets without Redis
//! (docs/distributed.md, "Tokens and limits without Redis"): one GCRA per `scope: fleet` limit
//! ([`pacer_limiter::served::served_budget`], the one local GCRA) whose slots workers take in
//! leases, a fleet-wide pause when any worker sees a 429, and one token per served credential
//! fetched here and handed to every worker (at a refresh before expiry, and after a 401 once
//! for everybody). The worker's side is `pacer_limiter::served`.
//!
//! Every message is checked (limits that are not the plan's fleet limits, a lease larger than
//! [`pacer_proto::MAX_LEASE_WANT`], a pause over a day, a credential not served): a refusal
//! names the field. Tokens are never logged.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use pacer_limiter::fleet::LEASE_MAX_AHEAD;
use pacer_limiter::headroom::ServerReport;
use pacer_limiter::served::{Heard, ServedBudget, TokenFetcher};
use pacer_limiter::{Token, TokenError};
use pacer_plan::Plan;
use pacer_proto::{
    LeaseGrant, LeaseRequest, Pause, ServerHeard, Throttled, TokenGrant, controller_message,
};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;

use crate::Inner;

/// The shortest time between two fetches of a token, whatever its lifetime, `refreshBefore`
/// or the workers' 401 reports say: a token endpoint must not be hammered.
const MIN_REFRESH_AFTER: Duration = Duration::from_secs(1);

/// The tokens a controller serves: how it fetches them, and the recorder that counts the
/// fetches (laid out like the plan; its snapshot joins the fleet's merge, so the summary's token
/// fetches are the controller's).
pub struct TokenService {
    pub fetcher: Arc<dyn TokenFetcher>,
    pub recorder: Arc<pacer_stats::Recorder>,
}

/// What the controller serves its workers.
pub(crate) struct Served {
    /// The GCRA of the fleet limits, steered by what the workers heard of the server; `None`:
    /// no fleet limit.
    budget: Option<ServedBudget>,
    tokens: Option<TokenServer>,
    /// Counts the token fetches.
    recorder: Option<Arc<pacer_stats::Recorder>>,
}

impl Served {
    /// `serve_limits`: lease the plan's fleet limits (no Redis shares them);
    /// `fetcher`: the credentials whose tokens are served.
    pub(crate) fn new(
        plan: &Plan,
        serve_limits: bool,
        tokens: Option<TokenService>,
    ) -> Option<Self> {
        let budget = serve_limits
            .then(|| ServedBudget::new(&plan.limits))
            .flatten();
        let tokens = tokens.filter(|t| !t.fetcher.served().is_empty());
        let recorder = tokens.as_ref().map(|t| t.recorder.clone());
        let tokens = tokens.map(|t| TokenServer::new(t.fetcher));
        (budget.is_some() || tokens.is_some()).then_some(Self {
            budget,
            tokens,
            recorder,
        })
    }

    /// What the controller itself recorded (its token fetches), to merge with the workers'.
    pub(crate) fn snapshot(&self) -> Option<pacer_stats::Snapshot> {
        self.recorder.as_ref().map(|r| r.snapshot())
    }

    /// What the workers heard of the server about served limit `i`, and others' traffic as
    /// measured against the fleet's slots (`None`: not served, or no headers heard).
    pub(crate) fn server_said(&self, i: usize) -> Option<pacer_stats::ServerSaid> {
        let h = self.budget.as_ref()?.server_state(i)?;
        Some(pacer_stats::ServerSaid {
            remaining: h.remaining?,
            limit: h.limit,
            others_rate: h.others_rate,
        })
    }

    /// Whether the Assign says `served_limits`.
    pub(crate) fn serves_limits(&self) -> bool {
        self.budget.is_some()
    }

    /// The Assign's `served_credentials`.
    pub(crate) fn served_credentials(&self) -> Vec<u32> {
        self.tokens.as_ref().map_or_else(Vec::new, |t| {
            t.creds.iter().map(|(i, _)| *i as u32).collect()
        })
    }

    fn budget(&self, what: &str) -> Result<&ServedBudget, Status> {
        self.budget.as_ref().ok_or_else(|| {
            Status::failed_precondition(format!(
                "{what}: this controller serves no limits (the Assign did not say served_limits)"
            ))
        })
    }

    fn check_limits(&self, field: &str, limits: u64, fleet: u64) -> Result<(), Status> {
        if limits == 0 || limits & !fleet != 0 {
            return Err(Status::invalid_argument(format!(
                "{field}: {limits:#b} is not a non-empty set of the plan's scope: fleet limits ({fleet:#b})"
            )));
        }
        Ok(())
    }

    /// A lease: slots of the fleet's GCRA.
    pub(crate) fn lease(&self, r: &LeaseRequest) -> Result<LeaseGrant, Status> {
        let budget = self.budget("lease_request")?;
        let fleet = budget.fleet();
        self.check_limits("lease_request.limits", r.limits, fleet)?;
        if r.want == 0 || r.want > pacer_proto::MAX_LEASE_WANT {
            return Err(Status::invalid_argument(format!(
                "lease_request.want: {} is not in 1..={}",
                r.want,
                pacer_proto::MAX_LEASE_WANT
            )));
        }
        if r.heard.len() > pacer_proto::MAX_HEARD {
            return Err(Status::invalid_argument(format!(
                "lease_request.heard: {} entries, at most {}",
                r.heard.len(),
                pacer_proto::MAX_HEARD
            )));
        }
        let heard = r
            .heard
            .iter()
            .map(|h| check_heard(h, fleet))
            .collect::<Result<Vec<_>, _>>()?;
        for h in &heard {
            budget.heard(h);
        }
        let res = budget.reserve(r.limits, r.want, LEASE_MAX_AHEAD);
        let us = |d: &Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Ok(LeaseGrant {
            id: r.id,
            offsets_us: res.offsets.iter().map(us).collect(),
            wait_us: us(&res.wait),
            pauses_us: res.pauses.iter().map(us).collect(),
        })
    }

    /// A worker saw a 429: pause the limits for everyone. The Pause to broadcast.
    pub(crate) fn throttled(&self, t: &Throttled) -> Result<Pause, Status> {
        let budget = self.budget("throttled")?;
        self.check_limits("throttled.limits", t.limits, budget.fleet())?;
        if t.retry_after_us == 0 || t.retry_after_us > pacer_proto::MAX_PAUSE_US {
            return Err(Status::invalid_argument(format!(
                "throttled.retry_after_us: {} is not in 1..={}",
                t.retry_after_us,
                pacer_proto::MAX_PAUSE_US
            )));
        }
        let remaining = budget.pause(t.limits, Duration::from_micros(t.retry_after_us));
        tracing::info!(
            limits = format_args!("{:#b}", t.limits),
            pause_ms = remaining.as_millis() as u64,
            "a worker was refused: the limits are paused for the fleet"
        );
        Ok(Pause {
            limits: t.limits,
            remaining_us: u64::try_from(remaining.as_micros()).unwrap_or(u64::MAX),
        })
    }

    /// A worker asks for a token. `Some`: the answer for it alone (a current token); `None`:
    /// a fetch runs (or was started) and its token goes to every worker.
    pub(crate) fn token_request(
        &self,
        inner: &Arc<Inner>,
        credential: u32,
        failed_generation: u64,
    ) -> Result<Option<TokenGrant>, Status> {
        let Some(t) = &self.tokens else {
            return Err(Status::failed_precondition(
                "token_request: this controller serves no tokens",
            ));
        };
        t.request(inner, credential as usize, failed_generation)
    }

    /// Stop the credentials' tasks (the test is over).
    pub(crate) fn shutdown(&self) {
        if let Some(t) = &self.tokens {
            t.shutdown();
        }
    }
}

/// A worker's `ServerHeard`, checked: a served limit, every duration within its bound (a
/// refusal names the field).
fn check_heard(h: &ServerHeard, fleet: u64) -> Result<Heard, Status> {
    if h.limit >= 64 || fleet & (1 << h.limit) == 0 {
        return Err(Status::invalid_argument(format!(
            "lease_request.heard.limit: {} is not one of the plan's served limits ({fleet:#b})",
            h.limit
        )));
    }
    let bounded = |field: &str, v: u64, max: u64| {
        if v > max {
            return Err(Status::invalid_argument(format!(
                "lease_request.heard.{field}: {v} is over {max}"
            )));
        }
        Ok(Duration::from_micros(v))
    };
    let reset = bounded("reset_us", h.reset_us, pacer_proto::MAX_PAUSE_US)?;
    Ok(Heard {
        limit: h.limit,
        report: ServerReport {
            remaining: h.remaining,
            reset: (!reset.is_zero()).then_some(reset),
            limit: (h.stated_limit > 0).then_some(h.stated_limit),
        },
        sent_ago: bounded("sent_ago_us", h.sent_ago_us, pacer_proto::MAX_HEARD_AGE_US)?,
        age: bounded("age_us", h.age_us, pacer_proto::MAX_HEARD_AGE_US)?,
    })
}

/// One served credential's token.
#[derive(Default)]
struct CredState {
    current: Option<Current>,
    /// A fetch is asked for or running: further requests wait for its hand-out.
    fetching: bool,
    /// Wakes the credential's task for a fetch now.
    wake: Arc<tokio::sync::Notify>,
    /// The credential's task (fetch, hand out, refresh before expiry), started by the first
    /// request.
    task: Option<JoinHandle<()>>,
}

struct Current {
    token: Token,
    generation: u64,
    expires_at: Instant,
}

struct TokenServer {
    fetcher: Arc<dyn TokenFetcher>,
    /// Served credentials and their `refreshBefore`.
    creds: Vec<(usize, Duration)>,
    state: Mutex<HashMap<usize, CredState>>,
}

impl TokenServer {
    fn new(fetcher: Arc<dyn TokenFetcher>) -> Self {
        let creds = fetcher.served();
        Self {
            state: Mutex::new(
                creds
                    .iter()
                    .map(|(i, _)| (*i, CredState::default()))
                    .collect(),
            ),
            creds,
            fetcher,
        }
    }

    fn request(
        &self,
        inner: &Arc<Inner>,
        credential: usize,
        failed_generation: u64,
    ) -> Result<Option<TokenGrant>, Status> {
        let mut state = self.state.lock();
        let Some(c) = state.get_mut(&credential) else {
            return Err(Status::invalid_argument(format!(
                "token_request.credential: {credential} is not a credential this controller serves"
            )));
        };
        let now = Instant::now();
        if let Some(cur) = &c.current
            && cur.generation > failed_generation
            && cur.expires_at > now
        {
            return Ok(Some(grant(credential, cur, now)));
        }
        if !c.fetching {
            c.fetching = true;
            if failed_generation > 0 {
                tracing::info!(
                    credential,
                    generation = failed_generation,
                    "a worker's request was refused with 401: fetching a new token for the fleet"
                );
            }
            c.wake.notify_one();
        }
        if c.task.is_none() {
            let refresh_before = self
                .creds
                .iter()
                .find(|(i, _)| *i == credential)
                .map_or(Duration::ZERO, |(_, r)| *r);
            c.task = Some(tokio::spawn(serve_credential(
                Arc::downgrade(inner),
                self.fetcher.clone(),
                c.wake.clone(),
                credential,
                refresh_before,
            )));
        }
        Ok(None)
    }

    fn shutdown(&self) {
        for c in self.state.lock().values_mut() {
            if let Some(h) = c.task.take() {
                h.abort();
            }
        }
    }
}

/// The generation of a new token: above the previous one and, so that a restarted controller
/// hands out tokens its workers take as newer than what they hold, at least the wall clock in
/// microseconds.
fn next_generation(previous: Option<u64>) -> u64 {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    previous.map_or(1, |p| p.saturating_add(1)).max(now_us)
}

fn grant(credential: usize, cur: &Current, now: Instant) -> TokenGrant {
    TokenGrant {
        credential: credential as u32,
        token: cur.token.expose().to_string(),
        generation: cur.generation,
        expires_in_ms: u64::try_from(cur.expires_at.saturating_duration_since(now).as_millis())
            .unwrap_or(u64::MAX),
        error: String::new(),
    }
}

/// One served credential's task: fetch when woken (a worker has none, or a 401) or when the
/// refresh is due (`refreshBefore` ahead of expiry), and hand each token to every connected
/// worker. Ends with the test.
async fn serve_credential(
    inner: Weak<Inner>,
    fetcher: Arc<dyn TokenFetcher>,
    wake: Arc<tokio::sync::Notify>,
    credential: usize,
    refresh_before: Duration,
) {
    let mut refresh_at: Option<Instant> = None;
    let mut fetched_at: Option<Instant> = None;
    loop {
        match refresh_at {
            Some(at) => {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep_until(at) => {
                        tracing::info!(credential, "refreshing the fleet's token before it expires");
                    }
                }
            }
            None => wake.notified().await,
        }
        // Workers' 401 reports (or a broken worker's) never fetch more often than this.
        if let Some(at) = fetched_at {
            tokio::time::sleep_until(at + MIN_REFRESH_AFTER).await;
        }
        let requested = Instant::now();
        fetched_at = Some(requested);
        let fetched = fetcher.fetch(credential).await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(t) = inner.served.as_ref().and_then(|s| s.tokens.as_ref()) else {
            return;
        };
        let now = Instant::now();
        let body = {
            let mut state = t.state.lock();
            let Some(c) = state.get_mut(&credential) else {
                return;
            };
            c.fetching = false;
            match fetched {
                Ok(f) => {
                    let generation = next_generation(c.current.as_ref().map(|cur| cur.generation));
                    let cur = Current {
                        token: f.token,
                        generation,
                        expires_at: requested + f.lifetime,
                    };
                    refresh_at = Some(
                        requested
                            + f.lifetime
                                .saturating_sub(refresh_before)
                                .max(MIN_REFRESH_AFTER),
                    );
                    let body = grant(credential, &cur, now);
                    c.current = Some(cur);
                    tracing::info!(
                        credential,
                        generation,
                        lifetime_s = f.lifetime.as_secs(),
                        "fetched the fleet's token: handing it to every worker"
                    );
                    body
                }
                Err(e) => {
                    tracing::warn!(credential, error = %e, "fetching the fleet's token failed");
                    // Tried again when a worker asks (each request waits for its own answer).
                    refresh_at = None;
                    TokenGrant {
                        credential: credential as u32,
                        token: String::new(),
                        generation: 0,
                        expires_in_ms: 0,
                        error: match e {
                            TokenError::Fetch { reason, .. } => reason,
                            other => other.to_string(),
                        },
                    }
                }
            }
        };
        inner
            .fleet
            .lock()
            .broadcast(controller_message::Body::TokenGrant(body));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn plan() -> Plan {
        let text = "name: p\ntarget: http://127.0.0.1:9\nlimits:\n  - {name: f, limit: 10/s, scope: fleet}\n  - {name: w, limit: 5/s}\nscenarios:\n  - {name: s, executor: constant-vus, vus: 1, duration: 1s, requests: [{name: a, path: /a}]}\n";
        pacer_plan::load_str(text, "plan.yaml", &Default::default()).unwrap()
    }

    #[test]
    fn leases_and_pauses_are_checked_and_served_from_one_gcra() {
        let s = Served::new(&plan(), true, None).unwrap();
        assert!(s.serves_limits());
        let ok = |want| LeaseRequest {
            id: 7,
            limits: 0b01,
            want,
            heard: vec![],
        };
        let g = tokio_test_block(|| s.lease(&ok(3)).unwrap());
        assert_eq!(g.id, 7);
        assert_eq!(g.offsets_us.len(), 3);
        assert!(g.offsets_us.windows(2).all(|w| w[0] < w[1]));
        for (bad, field) in [
            (
                LeaseRequest {
                    id: 1,
                    limits: 0b10,
                    want: 1,
                    heard: vec![],
                },
                "lease_request.limits",
            ),
            (
                LeaseRequest {
                    id: 1,
                    limits: 0,
                    want: 1,
                    heard: vec![],
                },
                "lease_request.limits",
            ),
            (
                LeaseRequest {
                    id: 1,
                    limits: 1 << 40,
                    want: 1,
                    heard: vec![],
                },
                "lease_request.limits",
            ),
            (ok(0), "lease_request.want"),
            (ok(pacer_proto::MAX_LEASE_WANT + 1), "lease_request.want"),
        ] {
            let e = tokio_test_block(|| s.lease(&bad).unwrap_err());
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        }
        let p = tokio_test_block(|| {
            s.throttled(&Throttled {
                limits: 1,
                retry_after_us: 2_000_000,
            })
            .unwrap()
        });
        assert_eq!(p.limits, 1);
        assert!(p.remaining_us > 1_900_000);
        let g = tokio_test_block(|| s.lease(&ok(1)).unwrap());
        assert!(
            g.offsets_us.is_empty() && g.pauses_us[0] > 1_900_000,
            "{g:?}"
        );
        let e = tokio_test_block(|| {
            s.throttled(&Throttled {
                limits: 1,
                retry_after_us: pacer_proto::MAX_PAUSE_US + 1,
            })
            .unwrap_err()
        });
        assert!(
            e.message().starts_with("throttled.retry_after_us"),
            "{}",
            e.message()
        );
    }

    /// What the workers heard of the server steers the served lease rate (an aligned fixed
    /// window at its own rate less the reserve), and every field of it is checked.
    #[test]
    fn the_servers_headers_steer_the_lease_rate_and_are_checked() {
        let text = "name: p\ntarget: http://127.0.0.1:9\nlimits:\n  - {name: f, limit: 100/10s, shape: fixed-window, scope: fleet, reserve: 10%}\n  - {name: w, limit: 5/s}\nscenarios:\n  - {name: s, executor: constant-vus, vus: 1, duration: 1s, requests: [{name: a, path: /a}]}\n";
        let plan = pacer_plan::load_str(text, "plan.yaml", &Default::default()).unwrap();
        let s = Served::new(&plan, true, None).unwrap();
        let heard = ServerHeard {
            limit: 0,
            remaining: 90,
            reset_us: 9_000_000,
            stated_limit: 100,
            sent_ago_us: 1_000,
            age_us: 2_000,
        };
        let req = |heard: Vec<ServerHeard>| LeaseRequest {
            id: 1,
            limits: 0b01,
            want: 1,
            heard,
        };
        let budget = s.budget.as_ref().unwrap();
        tokio_test_block(|| {
            let paced = budget.rate(0).unwrap();
            s.lease(&req(vec![])).unwrap();
            // No headers yet: paced less the reserve (10% of 10/s).
            let r = budget.rate(0).unwrap();
            assert!((r - (paced - 1.0)).abs() < 1e-6, "{r} {paced}");
            s.lease(&req(vec![heard])).unwrap();
            s.lease(&req(vec![])).unwrap();
            // (100 - 1)/10 - 1 (the reserve) = 8.9/s.
            let r = budget.rate(0).unwrap();
            assert!((r - 8.9).abs() < 1e-6, "{r}");
            let said = s.server_said(0).unwrap();
            assert_eq!((said.remaining, said.limit), (90, Some(100)));
            assert!(s.server_said(1).is_none());
        });
        for (bad, field) in [
            (
                ServerHeard { limit: 1, ..heard },
                "lease_request.heard.limit",
            ),
            (
                ServerHeard { limit: 64, ..heard },
                "lease_request.heard.limit",
            ),
            (
                ServerHeard {
                    reset_us: pacer_proto::MAX_PAUSE_US + 1,
                    ..heard
                },
                "lease_request.heard.reset_us",
            ),
            (
                ServerHeard {
                    sent_ago_us: u64::MAX,
                    ..heard
                },
                "lease_request.heard.sent_ago_us",
            ),
            (
                ServerHeard {
                    age_us: pacer_proto::MAX_HEARD_AGE_US + 1,
                    ..heard
                },
                "lease_request.heard.age_us",
            ),
        ] {
            let e = tokio_test_block(|| s.lease(&req(vec![bad])).unwrap_err());
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        }
        let e = tokio_test_block(|| {
            s.lease(&req(vec![heard; pacer_proto::MAX_HEARD + 1]))
                .unwrap_err()
        });
        assert!(
            e.message().starts_with("lease_request.heard:"),
            "{}",
            e.message()
        );
        // Whatever a server says (a hostile one: every number at its extreme) is no panic.
        let wild = ServerHeard {
            limit: 0,
            remaining: u64::MAX,
            reset_us: pacer_proto::MAX_PAUSE_US,
            stated_limit: u64::MAX,
            sent_ago_us: pacer_proto::MAX_HEARD_AGE_US,
            age_us: pacer_proto::MAX_HEARD_AGE_US,
        };
        tokio_test_block(|| {
            s.lease(&req(vec![wild])).unwrap();
            s.lease(&req(vec![])).unwrap();
        });
    }

    #[test]
    fn nothing_is_served_when_not_asked() {
        assert!(Served::new(&plan(), false, None).is_none());
    }

    /// An adaptive limit learns from every response, in each worker: it is not served.
    #[test]
    fn an_adaptive_fleet_limit_is_not_served() {
        let text = "name: p\ntarget: http://127.0.0.1:9\nlimits:\n  - {name: f, limit: 10/s, scope: fleet, adaptive: true}\nscenarios:\n  - {name: s, executor: constant-vus, vus: 1, duration: 1s, requests: [{name: a, path: /a}]}\n";
        let plan = pacer_plan::load_str(text, "plan.yaml", &Default::default()).unwrap();
        assert!(Served::new(&plan, true, None).is_none());
    }

    /// The GCRA's clock is tokio's: run the checks inside a runtime.
    fn tokio_test_block<T>(f: impl FnOnce() -> T) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _g = rt.enter();
        f()
    }
}
