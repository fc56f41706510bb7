//! What the controller assigned, read and checked here: the plan (validated again: the worker
//! trusts no input, and a pod worker resolves a LoadTest's references under its own policy),
//! the shard, and the limits this worker paces to. Pure functions of the `Assign` message, so
//! they are tested without a controller.

use pacer_plan::shard::largest_remainder;
use pacer_plan::spec::{LimitScope, PlanSpec};
use pacer_plan::{Limit, Plan, Rate, Shard};
use pacer_proto::Assign;

use crate::{WorkerConfig, WorkerError};

/// The plan and the shard a fresh worker runs: the plan read by the config's policy (a pod
/// worker resolves `${env:}` itself, [`pacer_plan::Refs::worker_pod`]), the shard from the
/// index and weights the controller gave.
pub(crate) fn plan_and_shard(cfg: &WorkerConfig, a: &Assign) -> Result<(Plan, Shard), WorkerError> {
    let mut plan = if cfg.resolve_plan_env {
        plan_from_assign_env(a, &pacer_plan::Refs::worker_pod())?
    } else {
        plan_from_assign(a)?
    };
    attach_data(&mut plan, a)?;
    let shard = Shard::new(a.worker_index, a.weights.clone())
        .map_err(|e| WorkerError::Protocol(format!("assign.{e}")))?;
    Ok((plan, shard))
}

/// workers), then validated. The plan is a LoadTest's: read with `refs`
/// ([`pacer_plan::Refs::worker_pod`] in a pod), so a `${file:}` is refused, never read.
pub fn plan_from_assign_env(a: &Assign, refs: &pacer_plan::Refs<'_>) -> Result<Plan, WorkerError> {
    let doc: serde_json::Value = serde_json::from_str(&a.plan_spec_json)
        .map_err(|e| WorkerError::Plan(format!("assign.plan_spec_json: {e}")))?;
    pacer_plan::load_value(doc, "the plan from the controller", &refs.for_manifest())
        .map_err(|e| WorkerError::Plan(e.to_string()))
}

/// The plan the controller resolved, validated here again (the worker trusts no input).
pub fn plan_from_assign(a: &Assign) -> Result<Plan, WorkerError> {
    let spec: PlanSpec = serde_json::from_str(&a.plan_spec_json)
        .map_err(|e| WorkerError::Plan(format!("assign.plan_spec_json: {e}")))?;
    let source: serde_json::Value = if a.plan_source_json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&a.plan_source_json)
            .map_err(|e| WorkerError::Plan(format!("assign.plan_source_json: {e}")))?
    };
    pacer_plan::validate::validate(spec, source).map_err(|errors| {
        WorkerError::Plan(
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// The plan's data files from the Assign, parsed and checked here as the controller did (the
/// same parser and bounds: the worker trusts no input). Each source must come: a worker never
/// reads a file of its own.
pub fn attach_data(plan: &mut Plan, a: &Assign) -> Result<(), WorkerError> {
    let texts = a
        .data
        .iter()
        .map(|f| (f.name.clone(), f.text.clone()))
        .collect();
    pacer_plan::data::attach(plan, texts).map_err(|errors| {
        WorkerError::Plan(format!(
            "assign.data: {}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    if let Some(d) = plan.data.iter().find(|d| d.table.is_none()) {
        return Err(WorkerError::Plan(format!(
            "assign.data: the plan's source `{}` came without its file",
            d.name
        )));
    }
    Ok(())
}

/// The limits this worker paces to: worker-scoped limits as declared (each process keeps
/// them), fleet-scoped ones split by the shard's weight (rate and burst), so the fleet
/// together stays within the declared limit without a shared store.
pub fn shard_limits(limits: &[Limit], shard: &Shard) -> Vec<Limit> {
    if shard.is_whole() {
        return limits.to_vec();
    }
    let w = u64::from(shard.weights()[shard.index() as usize]);
    let total: u64 = shard.weights().iter().map(|&x| u64::from(x)).sum();
    let weights: Vec<u64> = shard.weights().iter().map(|&x| u64::from(x)).collect();
    limits
        .iter()
        .map(|l| {
            let mut l = l.clone();
            if l.scope == LimitScope::Fleet {
                let per = l
                    .limit
                    .per()
                    .checked_mul(total as u32)
                    .unwrap_or(l.limit.per());
                if let Some(r) = Rate::new(l.limit.count().saturating_mul(w), per) {
                    l.limit = r;
                }
                let burst = largest_remainder(u64::from(l.burst), &weights)[shard.index() as usize];
                l.burst = (burst as u32).max(1);
            }
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use pacer_proto::PROTOCOL_VERSION;

    const PLAN: &str = r#"
name: roundtrip
target: http://127.0.0.1:9
duration: 2s
variables: { page: 3 }
limits:
  - { name: fleet-wide, limit: 300/min, burst: 5, scope: fleet }
  - { name: per-process, limit: 10/s }
scenarios:
  - { name: a, executor: constant-arrival-rate, rate: 40/s, requests: [{ name: r, path: "/x/{{vars.page}}", headers: { X-Id: "{{uuid}}" } }] }
  - { name: b, executor: ramping-arrival-rate, stages: [{ target: 20/s, duration: 1s }], requests: [{ name: r, path: /y }] }
  - { name: c, executor: per-vu-iterations, vus: 3, iterations: 4, requests: [{ name: r, method: POST, path: /z, json: { n: "{{randInt 1 9}}" } }] }
  - { name: d, executor: shared-iterations, vus: 2, iterations: 9, startTime: 1s, requests: [{ name: r, path: /w }] }
  - { name: e, executor: constant-vus, vus: 2, duration: 1s, requests: [{ name: r, path: /v }] }
  - { name: f, executor: ramping-vus, stages: [{ target: 3, duration: 1s }], requests: [{ name: r, path: /u }] }
thresholds:
  http_req_failed: [{ threshold: "rate<0.1", abortOnFail: true }]
onWorkerLoss: fail
"#;

    fn assign_for(plan: &Plan) -> Assign {
        Assign {
            protocol_version: PROTOCOL_VERSION,
            test_id: "t".into(),
            worker_index: 1,
            weights: vec![1, 2],
            plan_spec_json: serde_json::to_string(&plan.spec).unwrap(),
            plan_source_json: serde_json::to_string(&plan.source).unwrap(),
            ..Default::default()
        }
    }

    /// What the controller sends is the plan it validated: the same executors, limits,
    /// thresholds and policies come out on the worker.
    #[test]
    fn the_resolved_spec_round_trips_through_assign() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        let back = plan_from_assign(&assign_for(&plan)).unwrap();
        assert_eq!(back.spec, plan.spec);
        assert_eq!(back.source, plan.source);
        let executors = |p: &Plan| {
            p.scenarios
                .iter()
                .map(|s| s.executor.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(executors(&back), executors(&plan));
        assert_eq!(back.on_worker_loss, plan.on_worker_loss);
        assert_eq!(back.thresholds.len(), 1);
        assert!(back.thresholds[0].abort_on_fail);
    }

    #[test]
    fn a_bad_assign_is_an_error_naming_the_field() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        let mut a = assign_for(&plan);
        a.plan_spec_json = "{".into();
        let e = plan_from_assign(&a).unwrap_err().to_string();
        assert!(e.contains("assign.plan_spec_json"), "{e}");
        let mut a = assign_for(&plan);
        a.plan_spec_json = a.plan_spec_json.replace("40/s", "0/s");
        let e = plan_from_assign(&a).unwrap_err().to_string();
        assert!(e.contains("scenarios[0].rate"), "{e}");
    }

    /// A worker pod resolves a LoadTest's plan: never a file, never the operator's own
    /// variables; what the LoadTest provides, yes.
    #[test]
    fn a_pod_worker_reads_no_file_and_no_operator_variable() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        let with_target = |target: &str| {
            let mut a = assign_for(&plan);
            a.plan_spec_json = a
                .plan_spec_json
                .replace("http://127.0.0.1:9", &target.replace('"', "\\\""));
            a
        };
        let provided = |name: &str| match name {
            "PACER_SESSION_TOKEN" => Some("session-secret-0123456789".to_string()),
            "PACER_AUTH_A_TOKEN" | "TARGET" => Some("http://127.0.0.1:9".to_string()),
            _ => None,
        };
        // The pod's policy, with this test's environment in place of the process's.
        let pod = |name: &str| {
            (!pacer_plan::refs::is_reserved_env(name))
                .then(|| provided(name))
                .flatten()
        };
        let refs = pacer_plan::Refs::Remote { provided: &pod };
        for target in ["${file:/etc/hostname}", "$${file:a}${file:/etc/hostname}"] {
            let e = plan_from_assign_env(&with_target(target), &refs)
                .unwrap_err()
                .to_string();
            assert!(e.contains("cannot be used in a LoadTest"), "{e}");
        }
        let e = plan_from_assign_env(&with_target("${env:PACER_SESSION_TOKEN}"), &refs)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("session-secret"), "{e}");
        assert!(e.contains("PACER_SESSION_TOKEN is not set"), "{e}");
        assert!(plan_from_assign_env(&with_target("${env:TARGET}"), &refs).is_ok());
        assert!(plan_from_assign_env(&with_target("${env:PACER_AUTH_A_TOKEN}"), &refs).is_ok());
    }

    #[test]
    fn a_shard_the_weights_do_not_hold_is_a_protocol_error() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        let cfg = WorkerConfig::new("c:1", "t");
        let (_, shard) = plan_and_shard(&cfg, &assign_for(&plan)).unwrap();
        assert_eq!((shard.index(), shard.weights()), (1, &[1, 2][..]));
        let mut a = assign_for(&plan);
        a.worker_index = 2;
        match plan_and_shard(&cfg, &a) {
            Err(WorkerError::Protocol(m)) => assert!(m.starts_with("assign."), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn fleet_limits_are_split_by_weight_and_worker_limits_kept() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        let shards = Shard::all(&[1, 2]).unwrap();
        let per: Vec<Vec<Limit>> = shards
            .iter()
            .map(|s| shard_limits(&plan.limits, s))
            .collect();
        let fleet_rate: f64 = per.iter().map(|l| l[0].limit.as_per_sec()).sum();
        assert!((fleet_rate - 5.0).abs() < 1e-9, "{fleet_rate}");
        assert!((per[1][0].limit.as_per_sec() - 5.0 * 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(per[0][0].burst + per[1][0].burst, 5);
        for l in &per {
            assert_eq!(l[1].limit, plan.limits[1].limit);
            assert_eq!(l[1].burst, plan.limits[1].burst);
        }
        assert_eq!(
            shard_limits(&plan.limits, &Shard::whole())[0].limit,
            plan.limits[0].limit
        );
    }
}
