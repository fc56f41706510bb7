//! The sizes the API server imposes, and how the operator stays under them: a ConfigMap holds
//! at most 1 MiB of data, and any object at most about 1.5 MiB (etcd's request limit). A test
//! of 1000 workers, each with a long error, could pass both; an answer 413 or 422 "too large"
//! would then come back on every retry. So the per-worker detail of the status and of the
//! report is cut to a budget here, with a note saying how much was left out, and a report or a
//! status the API server still refuses is replaced by a smaller one once, never retried as is.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::controller::MANAGER;
use crate::crd::{LoadTest, LoadTestStatus, WorkerHealth};
use crate::resources;

/// What the report ConfigMap's two values may weigh together: 1 MiB (the API server's limit on
/// a ConfigMap's data) less room for the keys, metadata and the JSON encoding's escapes.
pub const REPORT_DATA_BUDGET: usize = 900 * 1024;
/// What the per-worker rows of a status may weigh: a fraction of the object's 1.5 MiB, so the
/// plan in the spec, the conditions and managedFields keep the room they need.
pub const WORKER_HEALTH_BUDGET: usize = 256 * 1024;
/// The longest per-worker reason kept in the status (a worker's error can be any length).
pub const REASON_MAX_CHARS: usize = 300;
/// The longest worker name kept (a pod name is at most 253).
pub const NAME_MAX_CHARS: usize = 253;

/// `s`, cut to `max` characters with `…` when longer.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn weight(row: &WorkerHealth) -> usize {
    serde_json::to_vec(row).map_or(usize::MAX, |v| v.len() + 1)
}

/// A status the API server refused as too large (the spec beside it is near the object limit),
/// as small as it can be and still say where the test is: no per-worker rows (counted in
/// `workerHealthOmitted`), messages clipped.
pub fn slim_status(status: &LoadTestStatus) -> LoadTestStatus {
    let mut slim = status.clone();
    let rows = u32::try_from(slim.worker_health.len()).unwrap_or(u32::MAX);
    slim.worker_health.clear();
    slim.worker_health_omitted =
        Some(slim.worker_health_omitted.unwrap_or(0).saturating_add(rows)).filter(|n| *n > 0);
    slim.message = slim.message.map(|m| clip(&m, REASON_MAX_CHARS));
    for c in &mut slim.conditions {
        c.message = clip(&c.message, REASON_MAX_CHARS);
    }
    for t in &mut slim.thresholds {
        t.metric = clip(&t.metric, REASON_MAX_CHARS);
        t.expression = clip(&t.expression, REASON_MAX_CHARS);
    }
    slim
}

/// Worker rows within [`WORKER_HEALTH_BUDGET`]: reasons and names clipped; when they still do
/// not fit, the workers in trouble (failed, lost, waiting) are kept first, then the others by
/// index. Returns the rows kept (in index order) and how many were left out.
pub fn fit_worker_health(mut rows: Vec<WorkerHealth>) -> (Vec<WorkerHealth>, u32) {
    for r in &mut rows {
        r.name = clip(&r.name, NAME_MAX_CHARS);
        r.reason = r.reason.as_deref().map(|s| clip(s, REASON_MAX_CHARS));
    }
    let total: usize = rows.iter().map(weight).fold(0, usize::saturating_add);
    if total <= WORKER_HEALTH_BUDGET {
        return (rows, 0);
    }
    let in_trouble = |r: &WorkerHealth| matches!(r.state.as_str(), "failed" | "lost" | "waiting");
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (!in_trouble(&rows[i]), rows[i].index));
    let mut kept = BTreeSet::new();
    let mut used = 0usize;
    for i in order {
        let w = weight(&rows[i]);
        if used.saturating_add(w) > WORKER_HEALTH_BUDGET {
            break;
        }
        used += w;
        kept.insert(i);
    }
    let omitted = u32::try_from(rows.len() - kept.len()).unwrap_or(u32::MAX);
    let rows = rows
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| kept.contains(&i).then_some(r))
        .collect();
    (rows, omitted)
}

/// The report's text and JSON within [`REPORT_DATA_BUDGET`] together: unchanged when they fit;
/// otherwise the JSON loses per-worker rows (`fleet.workers`, with `fleet.workersOmitted`) and
/// its indentation, and the text is cut at a line with a note saying so.
pub fn fit_report(text: &str, json: &str) -> (String, String) {
    if text.len().saturating_add(json.len()) <= REPORT_DATA_BUDGET {
        return (text.to_string(), json.to_string());
    }
    let text = cut_text(text, REPORT_DATA_BUDGET / 4);
    let json = fit_json(json, REPORT_DATA_BUDGET - text.len());
    (text, json)
}

fn cut_text(text: &str, budget: usize) -> String {
    if text.len() <= budget {
        return text.to_string();
    }
    let note = format!(
        "\n… the rest of this report ({} bytes in all) is left out: a ConfigMap holds at most 1 MiB; summary.json has the totals\n",
        text.len()
    );
    let mut end = budget.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let end = text[..end].rfind('\n').map_or(end, |n| n + 1);
    format!("{}{note}", &text[..end])
}

fn fit_json(json: &str, budget: usize) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(json) else {
        return too_large_json(json.len());
    };
    let compact = |d: &Value| serde_json::to_string(d).unwrap_or_default();
    if compact(&doc).len() <= budget {
        return compact(&doc);
    }
    if let Some(workers) = doc
        .pointer_mut("/fleet/workers")
        .and_then(Value::as_array_mut)
    {
        let all = std::mem::take(workers);
        let count = all.len();
        let mut room = budget.saturating_sub(256);
        let mut kept = Vec::new();
        for w in all {
            let size = compact(&w).len() + 1;
            if size > room {
                break;
            }
            room -= size;
            kept.push(w);
        }
        let omitted = count - kept.len();
        *workers = kept;
        if let Some(fleet) = doc.pointer_mut("/fleet").and_then(Value::as_object_mut) {
            fleet.insert("workersOmitted".into(), json!(omitted));
        }
    }
    let out = compact(&doc);
    if out.len() <= budget {
        out
    } else {
        too_large_json(json.len())
    }
}

fn too_large_json(bytes: usize) -> String {
    json!({
        "truncated": format!("the JSON summary ({bytes} bytes) does not fit in a ConfigMap (1 MiB); summary.txt has the text")
    })
    .to_string()
}

/// The report that replaces one the API server refused as too large.
pub fn refused_report(reason: &str) -> (String, String) {
    let note = format!(
        "the report was refused by the API server as too large ({}); the LoadTest's status has the totals",
        clip(reason, REASON_MAX_CHARS)
    );
    (
        format!("{note}\n"),
        json!({ "truncated": note }).to_string(),
    )
}

/// Store a test's report in its ConfigMap (server-side apply), cut to [`REPORT_DATA_BUDGET`].
/// If the API server still answers "too large", a short report saying so is stored instead;
/// if even that is refused, none is. `true` when a report ConfigMap was stored.
pub async fn apply_report(
    cms: &Api<ConfigMap>,
    lt: &LoadTest,
    test_id: &str,
    text: &str,
    json: &str,
) -> Result<bool, kube::Error> {
    let (text, json) = fit_report(text, json);
    let first = apply_config_map(cms, lt, test_id, &text, &json).await;
    let reason = match first {
        Ok(()) => return Ok(true),
        Err(e) if is_too_large(&e) => e.to_string(),
        Err(e) => return Err(e),
    };
    tracing::warn!(
        loadtest = %lt.metadata.name.as_deref().unwrap_or_default(),
        "the report ConfigMap was refused as too large ({reason}): storing a short one"
    );
    let (text, json) = refused_report(&reason);
    match apply_config_map(cms, lt, test_id, &text, &json).await {
        Ok(()) => Ok(true),
        Err(e) if is_too_large(&e) => {
            tracing::warn!("the short report was refused too ({e}): no report ConfigMap");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn apply_config_map(
    cms: &Api<ConfigMap>,
    lt: &LoadTest,
    test_id: &str,
    text: &str,
    json: &str,
) -> Result<(), kube::Error> {
    let cm = resources::report_config_map(lt, test_id, text, json);
    let mut body = serde_json::to_value(&cm).map_err(kube::Error::SerdeError)?;
    if let Some(o) = body.as_object_mut() {
        // Server-side apply needs the kind.
        o.insert("apiVersion".into(), json!("v1"));
        o.insert("kind".into(), json!("ConfigMap"));
    }
    cms.patch(
        &resources::names(lt).report,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// The API server's answer for an object over its size limits: 413 Request Entity Too Large,
/// or 422 with "Too long" / "too large" (a ConfigMap's data, etcd's request size).
pub fn is_too_large(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            let m = s.message.to_ascii_lowercase();
            s.code == 413
                || (s.code == 422 && (m.contains("too long") || m.contains("too large")))
                || m.contains("request entity too large")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(index: u32, state: &str, reason_len: usize) -> WorkerHealth {
        WorkerHealth {
            index,
            name: format!("run-workers-{index}-abcde"),
            state: state.into(),
            requests: 123_456,
            rps: 99.5,
            errors: 12,
            throttled: 3,
            reason: (reason_len > 0).then(|| "x".repeat(reason_len)),
        }
    }

    #[test]
    fn a_thousand_workers_with_long_reasons_fit_the_budget_troubled_ones_first() {
        let mut rows: Vec<WorkerHealth> = (0..1000).map(|i| row(i, "running", 10_000)).collect();
        rows[999].state = "lost".into();
        let (kept, omitted) = fit_worker_health(rows);
        let size: usize = kept.iter().map(weight).sum();
        assert!(size <= WORKER_HEALTH_BUDGET, "{size}");
        assert_eq!(kept.len() as u32 + omitted, 1000);
        assert!(
            kept.iter().any(|r| r.index == 999),
            "the lost worker is kept"
        );
        assert!(kept.iter().all(|r| {
            r.reason
                .as_ref()
                .is_none_or(|s| s.chars().count() <= REASON_MAX_CHARS)
        }));
        assert!(kept.windows(2).all(|w| w[0].index < w[1].index));
    }

    #[test]
    fn rows_that_fit_are_kept_whole() {
        let rows: Vec<WorkerHealth> = (0..1000).map(|i| row(i, "running", 0)).collect();
        let (kept, omitted) = fit_worker_health(rows.clone());
        assert_eq!((kept, omitted), (rows, 0));
    }

    #[test]
    fn an_oversized_report_is_cut_under_the_config_map_limit_with_a_note() {
        let text = "worker line\n".repeat(200_000);
        let workers: Vec<Value> = (0..1000)
            .map(|i| json!({"index": i, "reason": "y".repeat(2000)}))
            .collect();
        let json =
            serde_json::to_string_pretty(&json!({"passed": true, "fleet": {"workers": workers}}))
                .expect("json");
        let (t, j) = fit_report(&text, &json);
        assert!(t.len() + j.len() <= REPORT_DATA_BUDGET);
        assert!(t.contains("is left out"));
        let doc: Value = serde_json::from_str(&j).expect("still JSON");
        assert_eq!(doc["passed"], true);
        assert!(doc["fleet"]["workersOmitted"].as_u64().expect("a count") > 0);
    }

    #[test]
    fn a_report_that_fits_is_unchanged() {
        assert_eq!(
            fit_report("a\n", "{}"),
            ("a\n".to_string(), "{}".to_string())
        );
    }
}
