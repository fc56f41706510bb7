//! Why workers are missing, from their pods' statuses: not scheduled (and the scheduler's
//! words), an image that cannot be pulled, a container that crashes (with its exit code and the
//! end of its log, which `terminationMessagePolicy: FallbackToLogsOnError` puts in the status),
//! a Secret key that does not exist, or a pod that runs but never reached the controller.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// The annotation (and label) the Job controller puts on each pod of an Indexed Job.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// The longest message written into a condition or an event.
const MAX_MESSAGE: usize = 1000;

/// The worker index of a pod of the Job.
pub fn pod_index(pod: &Pod) -> Option<u32> {
    let m = &pod.metadata;
    m.annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .or_else(|| m.labels.as_ref().and_then(|l| l.get(COMPLETION_INDEX)))
        .and_then(|v| v.parse().ok())
}

/// One pod in a few words.
pub fn pod_problem(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "no status yet".into();
    };
    let phase = status.phase.as_deref().unwrap_or("Unknown");
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        return format!(
            "Pending: {}: {}",
            c.reason.as_deref().unwrap_or("not scheduled"),
            c.message.as_deref().unwrap_or("")
        )
        .trim_end_matches([' ', ':'])
        .to_string();
    }
    let containers: Vec<&ContainerStatus> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    for c in &containers {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("Waiting");
            if reason == "ContainerCreating" || reason == "PodInitializing" {
                continue;
            }
            let mut s = format!("{reason}: {}", w.message.as_deref().unwrap_or(""));
            if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                s.push_str(&format!(
                    " (restarted {} times; last exit code {}{})",
                    c.restart_count,
                    t.exit_code,
                    t.message
                        .as_deref()
                        .map(|m| format!(": {}", last_line(m)))
                        .unwrap_or_default()
                ));
            }
            return s.trim_end_matches([' ', ':']).to_string();
        }
        if let Some(t) = c.state.as_ref().and_then(|s| s.terminated.as_ref())
            && t.exit_code != 0
        {
            return format!(
                "exited with code {}{}",
                t.exit_code,
                t.message
                    .as_deref()
                    .or(t.reason.as_deref())
                    .map(|m| format!(": {}", last_line(m)))
                    .unwrap_or_default()
            );
        }
    }
    match phase {
        "Pending" => "Pending: starting".into(),
        "Running" => {
            "running, but not connected to the controller (can it reach the controller's address?)"
                .into()
        }
        "Failed" => format!(
            "Failed: {}",
            status
                .message
                .as_deref()
                .or(status.reason.as_deref())
                .unwrap_or("no reason given")
        ),
        "Succeeded" => "exited (code 0) without joining the test".into(),
        other => other.to_string(),
    }
}

/// A pod that says nothing yet: no status, or Pending with nothing wrong.
fn just_starting(pod: &Pod) -> bool {
    matches!(
        pod_problem(pod).as_str(),
        "no status yet" | "Pending: starting"
    )
}

fn last_line(m: &str) -> &str {
    m.trim().lines().last().unwrap_or("").trim()
}

/// Why the workers at `missing` indices are not there: one clause per worker.
pub fn explain_missing(pods: &[Pod], missing: &[u32], job: &str) -> String {
    let mut parts = Vec::new();
    for &i in missing {
        // The newest pod of that index says most, unless it is a replacement that is only
        // starting: then the newest one that says why (the Job replaces a failed pod).
        let mut of_index: Vec<&Pod> = pods.iter().filter(|p| pod_index(p) == Some(i)).collect();
        of_index
            .sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)));
        let pod = of_index
            .iter()
            .find(|p| !just_starting(p))
            .or(of_index.first())
            .copied();
        parts.push(match pod {
            Some(p) => format!(
                "worker {i} (pod {}): {}",
                p.metadata.name.as_deref().unwrap_or("?"),
                pod_problem(p)
            ),
            None => format!("worker {i}: no pod (see `kubectl describe job {job}`)"),
        });
    }
    let mut out = parts.join("; ");
    if out.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn names_the_reasons() {
        let pods = vec![
            pod(json!({
                "metadata": {"name": "w-0", "annotations": {COMPLETION_INDEX: "0"}},
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu."}]}
            })),
            pod(json!({
                "metadata": {"name": "w-1", "annotations": {COMPLETION_INDEX: "1"}},
                "status": {"phase": "Pending", "containerStatuses": [{"name": "worker", "image": "x", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"pacer:nope\""}}}]}
            })),
            pod(json!({
                "metadata": {"name": "w-2", "annotations": {COMPLETION_INDEX: "2"}},
                "status": {"phase": "Running", "containerStatuses": [{"name": "worker", "image": "x", "imageID": "",
                    "ready": false, "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "starting\nworker: error: the controller refused this worker"}}}]}
            })),
        ];
        let m = explain_missing(&pods, &[0, 1, 2, 3], "w");
        assert!(
            m.contains("worker 0 (pod w-0): Pending: Unschedulable: 0/3 nodes"),
            "{m}"
        );
        assert!(
            m.contains("worker 1 (pod w-1): ImagePullBackOff: Back-off pulling image"),
            "{m}"
        );
        assert!(m.contains("CrashLoopBackOff: back-off 40s (restarted 4 times; last exit code 1: worker: error: the controller refused this worker)"), "{m}");
        assert!(m.contains("worker 3: no pod"), "{m}");
    }

    #[test]
    fn a_replacement_that_is_only_starting_does_not_hide_why_its_predecessor_failed() {
        let pods = vec![
            pod(json!({
                "metadata": {"name": "w-0-old", "creationTimestamp": "2026-01-01T00:00:00Z",
                    "annotations": {COMPLETION_INDEX: "0"}},
                "status": {"phase": "Failed", "containerStatuses": [{"name": "worker", "image": "x",
                    "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 128, "reason": "StartError",
                        "message": "exec: \"pacer\": not found"}}}]}
            })),
            pod(json!({
                "metadata": {"name": "w-0-new", "creationTimestamp": "2026-01-01T00:00:10Z",
                    "annotations": {COMPLETION_INDEX: "0"}},
                "status": {"phase": "Pending"}
            })),
        ];
        let m = explain_missing(&pods, &[0], "w");
        assert_eq!(
            m,
            "worker 0 (pod w-0-old): exited with code 128: exec: \"pacer\": not found"
        );
        // the newest pod when it says something itself
        let mut pods = pods;
        pods[1] = pod(json!({
            "metadata": {"name": "w-0-new", "creationTimestamp": "2026-01-01T00:00:10Z",
                "annotations": {COMPLETION_INDEX: "0"}},
            "status": {"phase": "Running"}
        }));
        let m = explain_missing(&pods, &[0], "w");
        assert!(
            m.starts_with("worker 0 (pod w-0-new): running, but not connected"),
            "{m}"
        );
    }
}
