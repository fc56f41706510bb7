//! Leader election over a `coordination.k8s.io/v1` Lease, so the chart can run two operator
//! replicas: one leads (reconciles LoadTests and serves the workers' gRPC listener), the other
//! waits and takes over within seconds when the leader dies.
//!
//! Each replica labels its own pod with its role ([`ROLE_LABEL`]) and the chart's Service
//! selects `leader`, so workers reach the leader only. Both replicas are Ready: a standby that
//! were not Ready would stall every rolling update (a new pod, a standby, never becomes
//! available, so the Deployment never takes the old leader down), make `helm --wait` time out
//! and leave a PodDisruptionBudget no disruption to allow, blocking every node drain.
//!
//! kube-rs has no elector. The maintained crate that fits this kube (kube-lease-manager 0.13)
//! renews by patching without a `resourceVersion`, and a leader whose renewals fail keeps
//! telling its caller it leads while its Lease expires under it: a standby could lead beside
//! it. This module is client-go's algorithm, small: every write is a `replace` carrying the
//! `resourceVersion` read just before (the API server refuses it with 409 if anyone wrote in
//! between), a Lease's expiry is judged on this process's monotonic clock from when it last
//! saw the Lease change (never by comparing wall clocks across nodes), and a leader that has
//! not renewed within [`RENEW_DEADLINE`] steps down by itself, [`LEASE_DURATION`] minus
//! [`RENEW_DEADLINE`] before any standby may take the Lease. Its RBAC, in the release's
//! namespace: `get`, `create` and `update` on leases, `patch` on pods (its own pod's label).

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a Lease holds after its last renewal. A standby takes over at most this (plus
/// one [`RETRY_EVERY`]) after the leader's last renewal: short, so workers reconnect long
/// before their `lostAfter` (30 s) stops their load; long enough for three renewals to be
/// tried on a slow API server before anyone else may lead. client-go's default.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// How often the leader renews: a third of the lease, so one or two failed renewals (an API
/// server restarting) cost nothing.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// A leader that has not renewed for this long stops leading (the operator exits and comes
/// back as a standby): 5 s before [`LEASE_DURATION`] lets a standby take the Lease, so two
/// replicas never lead at once even if their clocks run a little apart. client-go's default.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// How often a standby looks at the Lease (and a leader retries a failed renewal).
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

/// The longest `leaseDurationSeconds` believed from a Lease: a Lease written by something else
/// with a huge duration must not keep every replica a standby forever.
const MAX_BELIEVED_LEASE: Duration = Duration::from_secs(300);

/// The label each replica puts on its own pod: the chart's Service selects
/// `pacer.dev/role: leader`, so workers dial the leader only.
pub const ROLE_LABEL: &str = "pacer.dev/role";

/// What a replica is, as its pod's [`ROLE_LABEL`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Standby,
}

impl Role {
    /// The label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

/// Which Lease, who this replica is, and the timings.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in the Lease (its pod's name): unique among the replicas, and
    /// the same after a restart in place, which then renews at once instead of waiting.
    pub identity: String,
    /// This replica's pod, in the Lease's namespace, labelled with its role ([`ROLE_LABEL`]);
    /// `None` outside a pod (no label, no Service to route).
    pub pod: Option<String>,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    pub renew_deadline: Duration,
    pub retry_every: Duration,
}

impl LeaseSettings {
    /// The Lease `namespace/name` held as `identity`, with the default timings.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            pod: None,
            lease_duration: LEASE_DURATION,
            renew_every: RENEW_EVERY,
            renew_deadline: RENEW_DEADLINE,
            retry_every: RETRY_EVERY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("the Lease {lease}: {what}")]
    Api {
        lease: String,
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    /// Another replica holds the Lease now: this one must stop leading.
    #[error("the Lease {lease} is held by {holder:?} now: this replica stops leading")]
    Taken { lease: String, holder: String },
    /// No renewal succeeded for [`LeaseSettings::renew_deadline`].
    #[error("the Lease {lease} was not renewed for {waited:?}: this replica stops leading")]
    NotRenewed {
        lease: String,
        waited: Duration,
        #[source]
        last: Option<Box<LeaderError>>,
    },
}

/// Where this replica stands after one look at the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// This replica holds the Lease (just taken or renewed).
    Leading,
    /// Another replica holds it (`None`: it was just taken by someone this look did not see).
    Following(Option<String>),
}

/// What the elector last saw of the Lease, and when (on this process's clock).
#[derive(Clone, Debug)]
struct Observed {
    /// The Lease's `resourceVersion`: any write changes it.
    version: Option<String>,
    at: Instant,
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    pods: Api<Pod>,
    settings: LeaseSettings,
    observed: Option<Observed>,
    /// The role this replica's pod is labelled with, once the label is written.
    marked: Option<Role>,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client.clone(), &settings.namespace),
            pods: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            marked: None,
        }
    }

    /// Label this replica's pod with `role`, unless it is already. A failure is logged and
    /// tried again at the next call: until then the Service may route as before.
    async fn mark(&mut self, role: Role) {
        let Some(pod) = self.settings.pod.clone() else {
            return;
        };
        if self.marked == Some(role) {
            return;
        }
        let patch = serde_json::json!({"metadata": {"labels": {ROLE_LABEL: role.as_str()}}});
        match self
            .pods
            .patch(&pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.marked = Some(role),
            Err(e) => tracing::warn!(
                "cannot label the pod {pod} {ROLE_LABEL}={} (workers may be routed to the wrong replica until it is): {}",
                role.as_str(),
                crate::controller::causes(&e)
            ),
        }
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.name)
    }

    fn api_error(&self, what: &'static str) -> impl FnOnce(kube::Error) -> LeaderError + '_ {
        move |source| LeaderError::Api {
            lease: self.lease(),
            what,
            source,
        }
    }

    /// Note what this look saw; a Lease that changed (any write) is new from now on.
    fn observe(&mut self, version: Option<String>) {
        if self.observed.as_ref().map(|o| &o.version) != Some(&version) {
            self.observed = Some(Observed {
                version,
                at: Instant::now(),
            });
        }
    }

    /// Whether the Lease seen has gone unrenewed for its duration, on this process's clock.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.lease_duration, Duration::from_secs)
            .min(MAX_BELIEVED_LEASE);
        self.observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= duration)
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One look at the Lease: create it, renew it, take it (free or expired), or see who
    /// holds it. Every write carries the version just read: a race is lost, never shared.
    pub async fn try_once(&mut self) -> Result<Standing, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let me = self.settings.identity.clone();
        let Some(mut lease) = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(self.api_error("cannot read it"))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.metadata.resource_version);
                    Ok(Standing::Leading)
                }
                // Another replica created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Standing::Following(None)),
                Err(e) => Err(self.api_error("cannot create it")(e)),
            };
        };
        self.observe(lease.metadata.resource_version.clone());
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(me.as_str());
        if !mine && holder.is_some() && !self.expired(&spec) {
            return Ok(Standing::Following(holder));
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(me),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_duration_seconds: Some(self.duration_seconds()),
            lease_transitions: Some(if mine {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(written.metadata.resource_version);
                Ok(Standing::Leading)
            }
            // Someone wrote since our read (a renewal, or another standby's take).
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Standing::Following(holder)),
            Err(e) => Err(self.api_error("cannot update it")(e)),
        }
    }

    /// Wait until this replica leads, looking every `retry_every`; `false` on `shutdown`. Its
    /// pod is labelled standby meanwhile and leader once it leads; `ready` (the `/readyz`
    /// flag) is set once the Lease answered as a standby, and cleared when it leads (the
    /// controller sets it again once the LoadTest API answered).
    pub async fn acquire(&mut self, shutdown: &CancellationToken, ready: &AtomicBool) -> bool {
        let mut said: Option<Option<String>> = None;
        loop {
            match self.try_once().await {
                Ok(Standing::Leading) => {
                    ready.store(false, Ordering::Release);
                    self.mark(Role::Leader).await;
                    tracing::info!(
                        "leader: this replica ({}) holds the Lease {}",
                        self.settings.identity,
                        self.lease()
                    );
                    return true;
                }
                Ok(Standing::Following(holder)) => {
                    self.mark(Role::Standby).await;
                    ready.store(true, Ordering::Release);
                    if said.as_ref() != Some(&holder) {
                        tracing::info!(
                            "standby: the Lease {} is held by {}",
                            self.lease(),
                            holder.as_deref().unwrap_or("another replica")
                        );
                        said = Some(holder);
                    }
                }
                Err(e) => tracing::warn!("standby: {}", crate::controller::causes(&e)),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.retry_every) => {}
                _ = shutdown.cancelled() => return false,
            }
        }
    }

    /// Lead: renew every `renew_every` (retrying every `retry_every` after a failure) until
    /// `shutdown`, then give the Lease up so a standby takes it at once. An error when the
    /// Lease is taken or not renewed within `renew_deadline`: the caller must stop leading.
    pub async fn hold(mut self, shutdown: CancellationToken) -> Result<(), LeaderError> {
        let mut renewed = Instant::now();
        let mut last_error: Option<LeaderError> = None;
        loop {
            let wait = if last_error.is_some() {
                self.settings.retry_every
            } else {
                self.settings.renew_every
            };
            // Never sleep past the deadline: a leader that cannot renew must find out in time.
            let deadline = renewed + self.settings.renew_deadline;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.min(Instant::now() + wait)) => {}
                _ = shutdown.cancelled() => {
                    self.release().await;
                    return Ok(());
                }
            }
            if renewed.elapsed() >= self.settings.renew_deadline {
                return Err(LeaderError::NotRenewed {
                    lease: self.lease(),
                    waited: renewed.elapsed(),
                    last: last_error.map(Box::new),
                });
            }
            match self.try_once().await {
                Ok(Standing::Leading) => {
                    renewed = Instant::now();
                    last_error = None;
                    // A label that failed when this replica took the Lease is written now.
                    self.mark(Role::Leader).await;
                }
                Ok(Standing::Following(holder)) => {
                    return Err(LeaderError::Taken {
                        lease: self.lease(),
                        holder: holder.unwrap_or_default(),
                    });
                }
                Err(e) => {
                    tracing::warn!("leader: renewing: {}", crate::controller::causes(&e));
                    last_error = Some(e);
                }
            }
        }
    }

    /// Give the Lease up (holder cleared, with its version: never someone else's), so a
    /// standby takes it at its next look instead of after [`LEASE_DURATION`]. Best effort: a
    /// failure only means the standby waits for the expiry.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            ..spec
        });
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("leader: gave up the Lease {}", self.lease()),
            Err(e) => tracing::warn!(
                "leader: could not give up the Lease {} (a standby takes it when it expires): {}",
                self.lease(),
                crate::controller::causes(&e)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use std::sync::Arc;

    use http::{Method, Request, Response};
    use kube::client::Body;
    use parking_lot::Mutex;
    use serde_json::{Value, json};

    use super::*;

    /// An API server holding one Lease, with the semantics the elector relies on: 404 before
    /// it exists, 409 on a second create, 409 on a replace whose `resourceVersion` is not the
    /// stored one. `down` answers every request 503.
    #[derive(Default)]
    struct FakeApi {
        lease: Option<Value>,
        version: u64,
        down: bool,
        /// (method, path) of every request, for the RBAC the elector needs.
        seen: Vec<(Method, String)>,
        /// Each pod's role label, as patched.
        roles: std::collections::BTreeMap<String, String>,
    }

    const PODS: &str = "/api/v1/namespaces/pacer-system/pods/";

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/pacer-system/leases";

    fn status(code: u16, reason: &str) -> (u16, Value) {
        (
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": reason, "reason": reason, "code": code}),
        )
    }

    impl FakeApi {
        fn answer(&mut self, method: &Method, path: &str, body: &[u8]) -> (u16, Value) {
            self.seen.push((method.clone(), path.to_string()));
            if self.down {
                return status(503, "ServiceUnavailable");
            }
            let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            match (method, path) {
                (&Method::GET, p) if p == format!("{PATH}/operator") => match &self.lease {
                    Some(l) => (200, l.clone()),
                    None => status(404, "NotFound"),
                },
                (&Method::POST, PATH) if self.lease.is_some() => status(409, "AlreadyExists"),
                (&Method::POST, PATH) => self.store(body),
                (&Method::PATCH, p) if p.starts_with(PODS) => {
                    let pod = p.trim_start_matches(PODS).to_string();
                    let role = body["metadata"]["labels"][ROLE_LABEL]
                        .as_str()
                        .unwrap_or("");
                    self.roles.insert(pod, role.to_string());
                    (200, json!({"metadata": {"name": "pod"}}))
                }
                (&Method::PUT, p) if p == format!("{PATH}/operator") => {
                    let sent = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
                    if sent != self.version.to_string() {
                        return status(409, "Conflict");
                    }
                    self.store(body)
                }
                _ => status(405, "MethodNotAllowed"),
            }
        }

        fn store(&mut self, mut body: Value) -> (u16, Value) {
            self.version += 1;
            body["metadata"]["resourceVersion"] = json!(self.version.to_string());
            self.lease = Some(body.clone());
            (200, body)
        }

        fn holder(&self) -> Option<String> {
            self.lease.as_ref()?["spec"]["holderIdentity"]
                .as_str()
                .map(str::to_string)
        }
    }

    /// A client whose requests the shared fake answers.
    fn client(api: &Arc<Mutex<FakeApi>>) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = api.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = http_body_util::BodyExt::collect(body)
                    .await
                    .unwrap()
                    .to_bytes();
                let (code, reply) = api.lock().answer(&parts.method, parts.uri.path(), &bytes);
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap(),
                );
            }
        });
        Client::new(service, "default")
    }

    fn elector(api: &Arc<Mutex<FakeApi>>, identity: &str) -> Elector {
        let mut settings = LeaseSettings::new("pacer-system", "operator", identity);
        settings.pod = Some(identity.to_string());
        Elector::new(client(api), settings)
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_replica_creates_the_lease_and_the_second_follows() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let (mut a, mut b) = (elector(&api, "pod-a"), elector(&api, "pod-b"));
        assert_eq!(a.try_once().await.unwrap(), Standing::Leading);
        assert_eq!(
            b.try_once().await.unwrap(),
            Standing::Following(Some("pod-a".into()))
        );
        // Renewing keeps the Lease; the standby still follows.
        tokio::time::sleep(RENEW_EVERY).await;
        assert_eq!(a.try_once().await.unwrap(), Standing::Leading);
        tokio::time::sleep(LEASE_DURATION - RENEW_EVERY).await;
        assert_eq!(
            b.try_once().await.unwrap(),
            Standing::Following(Some("pod-a".into())),
            "renewed 10 s ago: not expired"
        );
        let lease = api.lock().lease.clone().unwrap();
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(lease["spec"]["leaseTransitions"], 0);
        // The elector's verbs on leases: get, create, update; on pods: patch (its own, from
        // acquire and hold, not here). The chart's Role grants these only.
        let verbs = |on: &str| -> std::collections::BTreeSet<Method> {
            let seen = &api.lock().seen;
            seen.iter()
                .filter(|(_, p)| p.contains(on))
                .map(|(m, _)| m.clone())
                .collect()
        };
        assert_eq!(
            verbs("/leases"),
            [Method::GET, Method::POST, Method::PUT]
                .into_iter()
                .collect()
        );
        assert!(verbs("/pods").is_empty(), "try_once labels nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_takes_a_lease_left_unrenewed_for_its_duration() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let (mut a, mut b) = (elector(&api, "pod-a"), elector(&api, "pod-b"));
        assert_eq!(a.try_once().await.unwrap(), Standing::Leading);
        // The leader dies: nothing renews. The standby looks every 2 s.
        let died = Instant::now();
        let shutdown = CancellationToken::new();
        let ready = AtomicBool::new(false);
        assert!(b.acquire(&shutdown, &ready).await);
        let took = died.elapsed();
        // Labelled leader, and not Ready until the controller says the LoadTest API answered.
        assert_eq!(api.lock().roles["pod-b"], "leader");
        assert!(!ready.load(Ordering::Acquire));
        assert!(
            took >= LEASE_DURATION && took <= LEASE_DURATION + RETRY_EVERY,
            "took over after {took:?}"
        );
        assert_eq!(api.lock().holder().as_deref(), Some("pod-b"));
        assert_eq!(
            api.lock().lease.as_ref().unwrap()["spec"]["leaseTransitions"],
            1
        );
        // The old leader, back, finds the Lease taken.
        assert_eq!(
            a.try_once().await.unwrap(),
            Standing::Following(Some("pod-b".into()))
        );
    }

    /// Two standbys race for an expired Lease: the replace carries the version each read, so
    /// exactly one wins.
    #[tokio::test(start_paused = true)]
    async fn of_two_standbys_racing_for_a_free_lease_one_wins() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let mut a = elector(&api, "pod-a");
        assert_eq!(a.try_once().await.unwrap(), Standing::Leading);
        let (mut b, mut c) = (elector(&api, "pod-b"), elector(&api, "pod-c"));
        b.try_once().await.unwrap();
        c.try_once().await.unwrap();
        tokio::time::sleep(LEASE_DURATION).await;
        // Both read the same expired version; the first replace wins, the second is refused.
        let (rb, rc) = tokio::join!(b.try_once(), c.try_once());
        let standings = [rb.unwrap(), rc.unwrap()];
        let leading = standings
            .iter()
            .filter(|s| **s == Standing::Leading)
            .count();
        assert_eq!(leading, 1, "{standings:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_steps_down_before_a_standby_may_take_over() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let mut a = elector(&api, "pod-a");
        assert_eq!(a.try_once().await.unwrap(), Standing::Leading);
        api.lock().down = true;
        let started = Instant::now();
        let err = a.hold(CancellationToken::new()).await.unwrap_err();
        let after = started.elapsed();
        assert!(matches!(err, LeaderError::NotRenewed { .. }), "{err}");
        assert!(
            after >= RENEW_DEADLINE && after < LEASE_DURATION,
            "stepped down after {after:?}"
        );
        let text = crate::controller::causes(&err);
        assert!(text.contains("pacer-system/operator"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_lease_was_taken_stops_leading() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let mut a = elector(&api, "pod-a");
        assert_eq!(a.try_once().await.unwrap(), Standing::Leading);
        // Someone else writes the Lease as its holder (as after a long pause of this one).
        {
            let mut f = api.lock();
            let mut lease = f.lease.clone().unwrap();
            lease["spec"]["holderIdentity"] = json!("pod-b");
            f.store(lease);
        }
        let err = a.hold(CancellationToken::new()).await.unwrap_err();
        assert!(
            matches!(&err, LeaderError::Taken { holder, .. } if holder == "pod-b"),
            "{err}"
        );
    }

    /// A leader shutting down gives the Lease up: the standby leads at its next look, not
    /// after the Lease's 15 s.
    #[tokio::test(start_paused = true)]
    async fn a_leader_shutting_down_hands_over_at_the_next_look() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let (mut a, mut b) = (elector(&api, "pod-a"), elector(&api, "pod-b"));
        assert_eq!(a.try_once().await.unwrap(), Standing::Leading);
        let shutdown = CancellationToken::new();
        let held = tokio::spawn(a.hold(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(
            b.try_once().await.unwrap(),
            Standing::Following(Some("pod-a".into()))
        );
        shutdown.cancel();
        held.await.unwrap().unwrap();
        assert_eq!(api.lock().holder(), None);
        let released = Instant::now();
        assert!(
            b.acquire(&CancellationToken::new(), &AtomicBool::new(false))
                .await
        );
        assert!(
            released.elapsed() <= RETRY_EVERY,
            "{:?}",
            released.elapsed()
        );
    }

    /// A standby labels its pod `standby` and is Ready (so rollouts and drains proceed); the
    /// Service's selector (`leader`) keeps workers off it.
    #[tokio::test(start_paused = true)]
    async fn a_standby_is_labelled_standby_and_ready() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let mut a = elector(&api, "pod-a");
        assert!(
            a.acquire(&CancellationToken::new(), &AtomicBool::new(false))
                .await
        );
        let mut b = elector(&api, "pod-b");
        let (shutdown, ready) = (CancellationToken::new(), Arc::new(AtomicBool::new(false)));
        let waiting = tokio::spawn({
            let (shutdown, ready) = (shutdown.clone(), ready.clone());
            async move { b.acquire(&shutdown, &ready).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(ready.load(Ordering::Acquire));
        assert_eq!(api.lock().roles["pod-a"], "leader");
        assert_eq!(api.lock().roles["pod-b"], "standby");
        shutdown.cancel();
        assert!(!waiting.await.unwrap(), "shut down before leading");
        let patches = api
            .lock()
            .seen
            .iter()
            .filter(|(m, p)| *m == Method::PATCH && p.ends_with("/pods/pod-b"))
            .count();
        assert_eq!(patches, 1, "the label is written once");
    }

    /// A Lease claiming a day keeps nobody waiting past [`MAX_BELIEVED_LEASE`].
    #[tokio::test(start_paused = true)]
    async fn a_huge_lease_duration_is_not_believed() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let mut a = elector(&api, "pod-a");
        assert_eq!(a.try_once().await.unwrap(), Standing::Leading);
        {
            let mut f = api.lock();
            let mut lease = f.lease.clone().unwrap();
            lease["spec"]["leaseDurationSeconds"] = json!(86_400);
            f.store(lease);
        }
        let mut b = elector(&api, "pod-b");
        let started = Instant::now();
        assert!(
            b.acquire(&CancellationToken::new(), &AtomicBool::new(false))
                .await
        );
        assert!(started.elapsed() <= MAX_BELIEVED_LEASE + RETRY_EVERY);
    }
}
