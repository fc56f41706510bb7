//! Property tests of `prepare` (issue 15): whatever a LoadTest's author writes, checking it
//! never panics the operator, and a file's content never reaches an error (the operator
//! would put it in the status and an Event).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use pacer_operator::crd::LoadTest;
use pacer_operator::prepare::{Defaults, prepare};
use proptest::prelude::*;
use serde_json::{Value, json};

const CANARY: &str = "CANARY-prepare-3e1f";

fn canary_file() -> String {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("pacer-prepare-props-{}", std::process::id()));
        std::fs::write(&p, CANARY).unwrap();
        p.display().to_string()
    })
    .clone()
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,16}",
        Just("${env:PACER_AUTH_A_TOKEN}".to_string()),
        Just("${env:PACER_SESSION_TOKEN}".to_string()),
        Just("${env:GIVEN}".to_string()),
        Just(format!("$${{file:a}}${{file:{}}}", canary_file())),
        Just(format!("${{file:{}}}", canary_file())),
        (0u64..u64::MAX).prop_map(|n| format!("{n}s")),
        (0u64..u64::MAX).prop_map(|n| format!("{n}/s")),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u64..10).prop_map(Value::from)
    ]
}

fn plan() -> impl Strategy<Value = Value> {
    (text(), text(), text(), number(), number(), text()).prop_map(
        |(target, rate, duration, vus, workers, header)| {
            json!({
                "name": "t",
                "target": target,
                "workers": workers,
                "auth": [{"name": "a", "type": "bearer", "token": "${env:PACER_AUTH_A_TOKEN}"}],
                "scenarios": [{
                    "name": "s",
                    "executor": "constant-arrival-rate",
                    "rate": rate,
                    "duration": duration,
                    "maxInFlight": vus,
                    "requests": [{"name": "r", "path": "/x", "headers": {"X-A": header}}],
                }],
            })
        },
    )
}

fn loadtest() -> impl Strategy<Value = Value> {
    (plan(), any::<u32>(), text(), "[A-Z_]{1,12}", text(), any::<bool>()).prop_map(
        |(plan, workers, start_timeout, env_name, env_value, with_credentials)| {
            let mut spec = json!({
                "plan": plan,
                "workers": workers,
                "startTimeout": start_timeout,
                "workerTemplate": {"env": [
                    {"name": env_name, "value": env_value},
                    {"name": "GIVEN", "value": "http://127.0.0.1:9"},
                ]},
            });
            if with_credentials {
                spec["credentials"] = json!([{"name": "a", "secretRef": {"name": "s", "tokenKey": "token"}}]);
            }
            json!({"apiVersion": "pacer.dev/v1alpha1", "kind": "LoadTest", "metadata": {"name": "x", "namespace": "n"}, "spec": spec})
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary specs: a Prepared or errors, never a panic, never the canary.
    #[test]
    fn prepare_never_panics_and_never_echoes_a_file(doc in loadtest()) {
        let lt: LoadTest = serde_json::from_value(doc).unwrap();
        match prepare(&lt, &Defaults::default()) {
            Ok(p) => {
                let spec = format!("{:?}", p.plan.spec);
                prop_assert!(!spec.contains(CANARY), "the canary reached the plan");
                let _ = p.plan.max_duration();
            }
            Err(errors) => {
                for e in errors {
                    prop_assert!(!e.to_string().contains(CANARY), "{e}");
                }
            }
        }
    }
}
