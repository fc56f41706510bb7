//! Property tests of everything a plan's author controls (issue 15): the loader, the
//! reference resolver, the validator and the split never panic on arbitrary input; a plan
//! that validates can be sharded and timed without a panic; no resolved value ever appears
//! in an error. Case counts are modest so `cargo test` runs them in seconds in debug.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use pacer_plan::{Plan, PlanError, Refs, Shard, load_str, load_value};
use proptest::prelude::*;
use serde_json::{Value, json};

const CASES: u32 = 256;

fn no_env(_: &str) -> Option<String> {
    None
}

/// A LoadTest's policy with nothing provided: no file is ever read by these tests.
fn remote() -> Refs<'static> {
    Refs::Remote { provided: &no_env }
}

/// Any JSON value, a few levels deep, with keys a plan uses so the validator is reached.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec![
        "name",
        "target",
        "duration",
        "scenarios",
        "executor",
        "rate",
        "vus",
        "iterations",
        "requests",
        "path",
        "stages",
        "target",
        "startTime",
        "maxInFlight",
        "limits",
        "limit",
        "burst",
        "auth",
        "type",
        "token",
        "http",
        "timeout",
        "thresholds",
        "workers",
        "x",
    ])
    .prop_map(str::to_string);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,24}".prop_map(Value::from),
        prop::sample::select(vec![
            "constant-arrival-rate",
            "ramping-vus",
            "shared-iterations",
            "10/s",
            "1s",
            "http://127.0.0.1:9",
            "/x",
            "${env:X}",
            "$${file:a}",
            "{{isoNow +1h}}",
            "bearer",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// After a plan validates: what `pacer run`, the controller and the workers compute from it.
fn use_valid_plan(plan: &Plan) {
    let _ = plan.max_duration();
    let shards = Shard::all(&[1, 2, 3]).unwrap();
    for s in &plan.scenarios {
        let _ = s.executor.planned_iterations();
        let _ = s.executor.max_duration();
        for shard in &shards {
            let _ = shard.planned_iterations(&s.executor);
            let _ = shard.concurrency(&s.executor);
            if let pacer_plan::Executor::SharedIterations {
                iterations, vus, ..
            } = &s.executor
            {
                let _ = shard.shared_iterations(*iterations, *vus);
            }
        }
    }
}

fn valid_plan(scenario: &str) -> String {
    format!(
        "name: t\ntarget: http://127.0.0.1:9\nscenarios:\n  - name: s\n{scenario}    requests: [{{name: r, path: /x}}]\n"
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Arbitrary text: an error or a plan, never a panic.
    #[test]
    fn arbitrary_text_never_panics(text in "[ -~\n]{0,200}") {
        let _ = load_str(&text, "p.yaml", &remote());
    }

    /// Arbitrary documents shaped like plans (and LoadTest manifests).
    #[test]
    fn arbitrary_documents_never_panic(doc in any_json(), wrap in any::<bool>()) {
        let doc = if wrap {
            json!({"apiVersion": "pacer.dev/v1alpha1", "kind": "LoadTest", "spec": {"plan": doc}})
        } else {
            doc
        };
        if let Ok(plan) = load_value(doc, "p", &remote()) {
            use_valid_plan(&plan);
        }
    }

    /// Arbitrary numbers in an otherwise valid plan, for every executor: refused with a
    /// field or accepted; accepted plans shard and time without a panic.
    #[test]
    fn arbitrary_numbers_never_panic(
        n in prop_oneof![any::<u64>(), 0u64..100_000],
        m in prop_oneof![any::<u64>(), 0u64..100],
        unit in prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "y"]),
        per in prop::sample::select(vec!["s", "min", "h", "1ns", "10s", "36500d"]),
        which in 0usize..8,
    ) {
        let d = format!("{n}{unit}");
        let scenario = match which {
            0 => format!("    executor: constant-arrival-rate\n    rate: {n}/{per}\n    duration: {m}{unit}\n    maxInFlight: {}\n", m.min(u64::from(u32::MAX))),
            1 => format!("    executor: ramping-arrival-rate\n    startRate: {m}/{per}\n    stages: [{{target: \"{n}/{per}\", duration: {d}}}, {{target: \"{m}/s\", duration: {m}{unit}}}]\n"),
            2 => format!("    executor: constant-vus\n    vus: {}\n    duration: {d}\n", n.min(u64::from(u32::MAX))),
            3 => format!("    executor: ramping-vus\n    startVUs: {}\n    stages: [{{target: {n}, duration: {m}{unit}}}]\n    gracefulRampDown: {d}\n", m.min(u64::from(u32::MAX))),
            4 => format!("    executor: per-vu-iterations\n    vus: {}\n    iterations: {n}\n    maxDuration: {m}{unit}\n", m.min(u64::from(u32::MAX))),
            5 => format!("    executor: shared-iterations\n    vus: 1\n    iterations: {n}\n    startTime: {d}\n    gracefulStop: {m}{unit}\n"),
            6 => format!("    executor: constant-vus\n    vus: 1\n    duration: 1s\n    thinkTime: {d}\n"),
            _ => format!("    executor: constant-arrival-rate\n    rate: 1/s\n    duration: {d}\n    startTime: {m}{unit}\n"),
        };
        let text = valid_plan(&scenario);
        match load_str(&text, "p.yaml", &remote()) {
            Ok(plan) => use_valid_plan(&plan),
            Err(PlanError::Invalid { errors, .. }) => {
                prop_assert!(errors.iter().all(|e| !e.message.is_empty()));
            }
            Err(_) => {}
        }
    }

    /// Resolved values (secrets) never appear in any error, wherever the reference stands,
    /// whatever surrounds it; references to files are refused in a LoadTest in every form.
    #[test]
    fn no_resolved_value_appears_in_an_error(
        secret in "[A-Za-z0-9+/=_.-]{8,40}",
        field in prop::sample::select(vec![
            "name", "target", "duration", "rate", "vus", "path", "method", "header", "token",
            "limit", "threshold-free",
        ]),
        before in "[ -~]{0,6}",
        after in "[ -~]{0,6}",
    ) {
        let before = before.replace(['$', '\'', '"', '\\'], "");
        let after = after.replace(['$', '\'', '"', '\\'], "");
        let r = format!("'{before}${{env:SECRET}}{after}'");
        let base = "name: t\ntarget: http://127.0.0.1:9\nauth: [{name: a, type: bearer, token: tok}]\nlimits: [{name: l, limit: 10/s}]\nscenarios:\n  - name: s\n    executor: constant-arrival-rate\n    rate: 10/s\n    duration: 1s\n    requests: [{name: r, path: /x, method: GET, headers: {X-A: v}}]\n";
        let mut plan = base.to_string();
        plan = match field {
            "name" => plan.replacen("name: t", &format!("name: {r}"), 1),
            "target" => plan.replace("target: http://127.0.0.1:9", &format!("target: {r}")),
            "duration" => plan.replace("duration: 1s", &format!("duration: {r}")),
            "rate" => plan.replace("rate: 10/s", &format!("rate: {r}")),
            "vus" => plan.replace("rate: 10/s", &format!("rate: 10/s\n    vus: {r}")),
            "path" => plan.replace("path: /x", &format!("path: {r}")),
            "method" => plan.replace("method: GET", &format!("method: {r}")),
            "header" => plan.replace("X-A: v", &format!("{r}: v")),
            "token" => plan.replace("token: tok", &format!("token: {r}")),
            "limit" => plan.replace("limit: 10/s", &format!("limit: {r}")),
            _ => plan.replace("name: r", &format!("name: {r}")),
        };
        let env = |name: &str| (name == "SECRET").then(|| secret.clone());
        for refs in [
            Refs::Local { env: &env, base_dir: ".".into() },
            Refs::Remote { provided: &env },
        ] {
            if let Err(e) = load_str(&plan, "p.yaml", &refs) {
                let text = e.to_string();
                prop_assert!(!text.contains(&secret), "{secret} in {text}");
                let debug = format!("{secret:?}");
                prop_assert!(!text.contains(&debug[1..debug.len() - 1]), "{secret} in {text}");
            }
        }
        // A file reference, however escaped around it, is refused in a LoadTest.
        let file = base.replace("target: http://127.0.0.1:9", &format!("target: '{before}$${{file:a}}${{file:/etc/hostname}}{after}'"));
        let e = load_str(&file, "p.yaml", &Refs::Remote { provided: &env }).unwrap_err();
        prop_assert!(e.to_string().contains("cannot be used in a LoadTest"), "{e}");
    }
}
