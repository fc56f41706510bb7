//! `scenarios`: at least one, each with a unique name, its executor (`executor.rs`), its
//! credential, and its requests (`requests.rs`, each name unique in the scenario).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::Checker;
use super::executor::executor;
use super::requests::{self, Context};
use crate::HumanDuration;
use crate::model::{HttpOptions, Scenario, defaults};
use crate::spec::{PlanSpec, ScenarioSpec};

/// The names of each scenario's requests, by scenario name (for thresholds that name them).
pub(super) type RequestNames = BTreeMap<String, BTreeSet<String>>;

/// The plan's scenarios, and their requests' names.
pub(super) fn scenarios(
    c: &mut Checker,
    spec: &PlanSpec,
    target: Option<&url::Url>,
    http: &HttpOptions,
    auth_names: &BTreeMap<String, usize>,
) -> (Vec<Scenario>, RequestNames) {
    if spec.scenarios.is_empty() {
        c.err("scenarios", "at least one scenario is required");
    }
    let mut scenarios = Vec::new();
    let mut request_names = RequestNames::new();
    for (i, s) in spec.scenarios.iter().enumerate() {
        let p = format!("scenarios[{i}]");
        c.name(&format!("{p}.name"), &s.name);
        if request_names.contains_key(&s.name) {
            c.err(
                format!("{p}.name"),
                format!("duplicate scenario name {:?}", s.name),
            );
        }
        let executor = executor(c, &p, s, spec.duration);
        let auth = match s.auth.as_deref() {
            None => None,
            Some(name) => match auth_names.get(name) {
                Some(i) => Some(*i),
                None => {
                    c.err(
                        format!("{p}.auth"),
                        format!("no credential named {name:?} in `auth`"),
                    );
                    None
                }
            },
        };
        if s.weight == Some(0) {
            c.err(format!("{p}.weight"), "must be at least 1");
        }
        if s.requests.is_empty() {
            c.err(format!("{p}.requests"), "at least one request is required");
        }
        let names = request_names.entry(s.name.clone()).or_default();
        let cx = Context {
            auth_names,
            target,
            http,
            variables: &spec.variables,
            extracted: &extracted(s),
        };
        let mut requests = Vec::new();
        for (j, r) in s.requests.iter().enumerate() {
            let rp = format!("{p}.requests[{j}]");
            c.name(&format!("{rp}.name"), &r.name);
            if !names.insert(r.name.clone()) {
                c.err(
                    format!("{rp}.name"),
                    format!("duplicate request name {:?} in this scenario", r.name),
                );
            }
            requests.push(requests::request(c, &rp, r, &cx));
        }
        scenarios.push(Scenario {
            name: s.name.clone(),
            executor,
            start_time: s.start_time.map_or(Duration::ZERO, HumanDuration::get),
            graceful_stop: s
                .graceful_stop
                .map_or(defaults::GRACEFUL_STOP, HumanDuration::get),
            auth,
            think_time: s.think_time.map_or(Duration::ZERO, HumanDuration::get),
            weight: s.weight.unwrap_or(1),
            requests,
        });
    }
    (scenarios, request_names)
}

/// The variables some request of scenario `s` extracts (a later request, or the next
/// iteration's, may use them).
fn extracted(s: &ScenarioSpec) -> BTreeSet<&str> {
    s.requests
        .iter()
        .flat_map(|r| r.extract.keys().map(String::as_str))
        .collect()
}
